# The search service as an image: python -m pipeline.serving.serve over the project's models/ folder, mounted
# read-only at /models (the index at /models/index, the model it names beside it, models/onnx for --backend onnx).
#
#   docker build -t domain-retrieval .
#   docker run -d --name search -p 8000:8000 --cpuset-cpus 0,1 -v "$PWD/models:/models:ro" domain-retrieval
#   docker run ... domain-retrieval --backend onnx        # arguments after the image are added to the command
#
# Mount models/, not models/index: the index stage swaps a new version in by renaming folders, and a bind mount of
# the folder itself would go on showing the old one. README.md "Deploy" has the rest (cores, permissions, proxy).
# Everything comes from PyPI (requirements.txt, pinned) and the base image; nothing is downloaded at run time.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

WORKDIR /app
# the pinned dependencies in a layer of their own: a code change does not reinstall them
COPY requirements.txt ./
RUN pip install -r requirements.txt
COPY pyproject.toml README.md params.yaml ./
COPY pipeline ./pipeline
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin search

# not root: the service only reads the index; its home takes whatever cache a library insists on writing
USER search
EXPOSE 8000

# /ready, not /health: /health answers while the index is still loading, /ready only once it serves (and it stays
# 200 while a new version loads in the background). No curl in the slim image: python's urllib.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4)"]

# serve.limits from the image's params.yaml (the mounted index has none beside it)
ENTRYPOINT ["python", "-m", "pipeline.serving.serve", "--host", "0.0.0.0", "--port", "8000", \
            "--index", "/models/index", "--params", "/app/params.yaml"]
CMD []
