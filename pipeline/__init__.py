import os

# No network at run time: weights come from a path, a weights package or the local hub cache, never a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
