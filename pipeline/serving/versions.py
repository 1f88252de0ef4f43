"""One consistent index version at a time: load a version whole, and swap the served one only once it is loaded.

The index stage swaps a new version of the folder in by renames (pipeline.files.atomic_dir); info.json names the
version ({"id", "built", "passages"}). A load reads the id before and after loading everything (model, vectors,
BM25, passages) and starts again when it changed meanwhile, so a Searcher never mixes two builds. The service holds
one Searcher; a reload (POST /reload, SIGHUP, or the watcher seeing info.json's version change) loads the new one in
the background while the old one answers, then swaps the reference. A failed load keeps the old version served,
logs a warning and is tried again when the files change again: with an ONNX backend, an index newer than the export
in models/onnx is refused until the export of its model arrives (its export.json changes, and the watcher retries).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable

from pipeline.params import InputError
from pipeline.serving.search import Searcher, version_of

log = logging.getLogger("pipeline.serve")


def read_version(index_dir: Path) -> str | None:
    """The version id in the folder now; None while there is no info.json (between the two renames of a swap)."""
    try:
        text = (index_dir / "info.json").read_text(encoding="utf-8")
        return version_of(json.loads(text), text)["id"]
    except (OSError, ValueError):
        return None


def load_consistent(index_dir: Path, attempts: int = 5, **searcher_args) -> Searcher:
    """A Searcher whose files all come from one version of `index_dir`. An error that the version explains (the
    same id before and after: a model mismatch, a missing file) is raised at once; one met while the folder
    changed is retried."""
    for _ in range(attempts):
        before = read_version(index_dir)
        try:
            searcher = Searcher(index_dir, **searcher_args)
        except (InputError, OSError, ValueError, RuntimeError):  # RuntimeError: faiss reading a file being replaced
            if read_version(index_dir) == before:
                raise
            time.sleep(0.2)
            continue
        if read_version(index_dir) == before == searcher.version["id"]:
            # one query in each mode before serving: PyTorch's and BM25's first call costs hundreds of ms, which a
            # client would otherwise wait on after each reload
            for mode in ("dense", "hybrid") if searcher.bm25 is not None else ("dense",):
                searcher.search("warm-up", k=1, mode=mode)
            return searcher
        time.sleep(0.2)
    raise InputError(f"{index_dir}: the index changed during each of {attempts} loads; try again when `dvc repro` "
                     "is done")


class Served:
    """The Searcher being served (None until the first load), swapped whole by reload()."""

    def __init__(self, load: Callable[[], Searcher], signature: Callable[[], tuple]):
        self._load, self._signature = load, signature
        self.current: Searcher | None = None
        self._lock = threading.Lock()  # one load at a time: two would hold three versions in memory
        self._tried: tuple | None = None  # the files' signature at the last load, whether it succeeded or not

    def reload(self) -> Searcher:
        """Load the folder as it is now and serve it; on failure keep serving the old version and raise."""
        with self._lock:
            signature = self._signature()
            old = self.current
            try:
                searcher = self._load()
            except Exception as error:
                self._tried = signature
                if old is not None:
                    log.warning("kept serving version %s: loading the index failed: %s", old.version["id"], error)
                raise
            self._tried = signature
            self.current = searcher  # one reference swapped: a request holds the old one until it is answered
            if old is None or old.version["id"] != searcher.version["id"]:
                log.info("serving version %s (%s passages, built %s)%s", searcher.version["id"],
                         searcher.version["passages"], searcher.version["built"],
                         f", replacing {old.version['id']}" if old is not None else "")
            else:
                log.info("reloaded: version %s, unchanged", searcher.version["id"])
            return searcher

    def reload_in_background(self) -> None:
        threading.Thread(target=self._quietly, name="reload", daemon=True).start()

    def _quietly(self) -> None:
        try:
            self.reload()
        except Exception:  # noqa: BLE001 - logged by reload() as a warning; the old version goes on serving
            pass

    def watch(self, seconds: float) -> None:
        """Reload in the background whenever the files' signature differs from the last one loaded or tried."""
        def loop() -> None:
            while True:
                time.sleep(seconds)
                if not self._lock.locked() and self._signature() != self._tried:
                    self._quietly()

        threading.Thread(target=loop, name="index-watcher", daemon=True).start()
