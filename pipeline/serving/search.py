"""Search an index built by the index stage: a library for a RAG application, and a command.

    python -m pipeline.serving.search "my puppy keeps vomiting and has bloody diarrhea" -k 3 [--mode hybrid] [--json]

    from pipeline.serving.search import Searcher           # after `pip install -e .`, from any folder
    searcher = Searcher("/path/to/project/models/index")    # loads once; checks the model is the one that encoded it
    result = searcher.search("my cat is drinking a lot", k=5)
    result["hits"]            # [{"rank", "score", "cosine", "id", "section", "title", "heading", "text", "source"}, ...]
    result["no_good_match"]   # True when the best cosine is under the threshold calibrated on validation
    result["truncated"]       # True when the query was longer than the model reads (info.json max_seq_length): cut
    result["version"]         # the index version that answered (info.json "version": id, build time, passages)
    searcher.search_batch(["question one", "question two"], k=5, mode="hybrid")
    Searcher(index_dir, backend="onnx")                    # the ONNX export (dvc repro export): no PyTorch, faster
    Searcher(index_dir, backend="auto")                    # the fastest that scored as PyTorch (backend_choice.py)

Modes: dense (the fine-tuned model, cosine) and hybrid (BM25 and dense fused by reciprocal rank, as evaluated).
Scores: "score" ranks within a mode: the cosine in dense mode, the reciprocal-rank-fusion score in hybrid mode
(sum of 1 / (rrf_k + rank) over BM25 and dense: about 0.03 at best, comparable only within one answer). "cosine" is
the query-passage cosine under the served model in every mode, the score to threshold on (a RAG framework's
similarity cut-off); "no_good_match" applies the threshold calibrated on validation to the best dense cosine.
Everything is loaded when the Searcher is made (model, vectors, BM25, passages), from one version of the folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import textwrap
import threading
from pathlib import Path

import faiss
import numpy as np

from pipeline.models import load_model, model_fingerprint, resolve_model
from pipeline.params import InputError, run_main
from pipeline.paths import INDEX_DIRS, ROOT
from pipeline.retrieval import bm25_tokens, encode, ranked, rrf
from pipeline.serving.backend_choice import choose_backend
from pipeline.serving.batcher import torch_threads

log = logging.getLogger("pipeline.serve")

MODES = ("dense", "hybrid")
BACKENDS = {"torch": None, "onnx": "model.onnx", "onnx-int8": "model_int8.onnx"}  # onnx: pipeline/stages/export.py
CHOICES = [*BACKENDS, "auto"]  # auto: pipeline/serving/backend_choice.py
ENCODE_CHUNK = 8  # queries per forward pass within a batch: chunks of similar length waste little on padding



def default_index(model: str = "finetuned") -> Path:
    """The project's index: under the current folder when it is the project, else under the installed project."""
    here = Path.cwd() / INDEX_DIRS[model]
    return here if here.is_dir() else ROOT / INDEX_DIRS[model]


class Searcher:
    """The index, its passages, BM25 beside it and the model that encoded it, loaded once.

    Refuses an index whose vectors another model made: info.json records the sha256 of the encoding model's files,
    and the model found now must match it (after `dvc repro train` alone, run `dvc repro` to re-index)."""

    def __init__(self, index_dir: str | Path | None = None, backend: str = "auto", onnx_dir: str | Path | None = None,
                 threads: int | None = None, max_ndcg_loss: float = 0.0):
        if backend not in CHOICES:
            raise InputError(f"backend {backend!r}: one of {', '.join(CHOICES)}")
        self.index_dir = Path(index_dir) if index_dir else default_index()
        info_file = self.index_dir / "info.json"
        if not info_file.is_file():
            raise InputError(f"{info_file}: no index here; run `dvc repro` in the project (or give the index folder)")
        text = info_file.read_text(encoding="utf-8")
        self.info = info = json.loads(text)
        self.version = version_of(info, text)
        self.model_dir = model_dir = self._model_dir(info["model"])
        found = model_fingerprint(model_dir)
        if found != info["model"]["sha256"]:
            raise InputError(f"{self.index_dir}: its vectors were made by model {info['model']['name']} with sha256 "
                             f"{info['model']['sha256'][:12]}, but {model_dir} now has {found[:12]}: the model changed "
                             "after indexing; run `dvc repro` to re-encode the index")
        # line by line, not through pandas: a key one passage lacks (an FAQ answer's `question`) would become NaN,
        # which is not JSON
        with open(self.index_dir / "passages.jsonl", encoding="utf-8") as f:
            self.passages = [json.loads(line) for line in f if line.strip()]
        self.index = faiss.read_index(str(self.index_dir / "dense.faiss"))
        if hasattr(self.index, "make_direct_map"):  # IVF: a hit's vector (its cosine) is looked up by id
            self.index.make_direct_map()
        self.bm25 = self._load_bm25()
        onnx_dir = Path(onnx_dir) if onnx_dir else self.index_dir.parent / "onnx"
        self.backend_choice = None  # with backend auto: what was chosen and the figures that chose it
        if backend == "auto":
            backend, self.backend_choice = choose_backend(onnx_dir, info["model"]["sha256"], max_ndcg_loss)
            log.info("backend auto: %s (%s)", backend, self.backend_choice["why"])
        self.backend = backend
        if backend == "torch":
            if threads:
                torch_threads(threads)
            self.model = load_model(str(model_dir), max_seq_length=info["max_seq_length"])
            tokenizer = self.model.tokenizer.backend_tokenizer
        else:  # the export of this very model (pipeline/stages/export.py): ONNX Runtime, no PyTorch
            self.model = self._onnx_encoder(onnx_dir, backend, threads)
            tokenizer = self.model.tokenizer
        self._counter = counting_tokenizer(tokenizer)
        self.threshold = info.get("no_match_threshold")
        self._lock = threading.Lock()  # one encode at a time: threads share the model (the service batches instead)

    def _load_bm25(self):
        import bm25s

        # now, with the rest: loaded on the first hybrid request, it could come from a newer version of the folder
        return bm25s.BM25.load(str(self.index_dir / "bm25")) if (self.index_dir / "bm25").is_dir() else None

    def _model_dir(self, model: dict) -> Path:
        if model.get("path") and (self.index_dir / model["path"]).is_dir():
            return (self.index_dir / model["path"]).resolve()
        return Path(resolve_model(model["name"]))  # a weights package or the hub cache, from anywhere

    def _onnx_encoder(self, folder: Path, backend: str, threads: int | None):
        from pipeline.serving.onnx_encoder import OnnxEncoder

        export = folder / "export.json"
        if not export.is_file():
            raise InputError(f"{export}: no ONNX export here; run `dvc repro export` (or give --onnx-dir)")
        made_from = json.loads(export.read_text(encoding="utf-8"))["sha256"]
        if made_from != self.info["model"]["sha256"]:
            raise InputError(f"{folder}: exported from a model with sha256 {made_from[:12]}, but the index was encoded "
                             f"by {self.info['model']['sha256'][:12]}; run `dvc repro` to bring both up to date")
        return OnnxEncoder(folder / BACKENDS[backend], self.info["max_seq_length"], threads)

    def check(self, queries: list[str], k: int, mode: str) -> None:
        """Raise InputError naming what is wrong with a request, before any work is done for it."""
        if mode not in MODES:
            raise InputError(f"mode {mode!r}: one of {', '.join(MODES)}")
        if not isinstance(k, int) or not 1 <= k <= self.index.ntotal:
            raise InputError(f"k {k!r}: must be between 1 and the index size, {self.index.ntotal}")
        if not queries:
            raise InputError("no queries given")
        for i, q in enumerate(queries):
            if not isinstance(q, str) or not q.strip():
                raise InputError(f"query {i}: empty; give the question as text")
        if mode == "hybrid" and self.bm25 is None:
            raise InputError(f"mode 'hybrid': {self.index_dir} has no bm25/ index; run `dvc repro`")

    def _encode(self, queries: list[str]) -> np.ndarray:
        # shortest first, ENCODE_CHUNK at a time: each chunk is padded to its own longest query, so that one long
        # query in a micro-batch does not make every other one cost max_seq_length tokens (sentence-transformers
        # sorts by length itself; ONNX Runtime is given them sorted)
        with self._lock:
            if self.backend == "torch":  # as the index encoded
                return encode(self.model, queries, ENCODE_CHUNK, self.info["precision"]).cpu().numpy()
            order = np.argsort([len(q) for q in queries], kind="stable")
            vectors = np.empty((len(queries), self.index.d), dtype="float32")
            vectors[order] = self.model.encode([queries[i] for i in order], batch_size=ENCODE_CHUNK)
            return vectors

    def truncated(self, queries: list[str]) -> list[bool]:
        """Which queries have more tokens than the model reads: the encoder cuts them there."""
        limit = int(self.info["max_seq_length"])
        return [len(e.ids) > limit for e in self._counter.encode_batch(list(queries))]

    def _bm25_run(self, queries: list[str], depth: int) -> dict:
        docs, scores = self.bm25.retrieve(bm25_tokens(queries), k=depth, show_progress=False)
        # a passage sharing no word with the query scores 0: not a hit, kept out of the fusion (as in evaluation)
        return {str(q): {str(d): float(s) for d, s in zip(ds, ss) if s > 0}
                for q, ds, ss in zip(range(len(queries)), docs, scores)}

    def _cosines(self, vector: np.ndarray, ids: list[int], known: dict[str, float]) -> list[float]:
        """The query-passage cosine of each hit: from the dense search where it found the passage, else from the
        passage's vector (a hybrid hit that only BM25 found)."""
        missing = [i for i in ids if str(i) not in known]
        if missing:
            vectors = self.index.reconstruct_batch(np.asarray(missing, dtype="int64"))
            known = {**known, **{str(i): float(v @ vector) for i, v in zip(missing, vectors)}}
        return [known[str(i)] for i in ids]

    def search_batch(self, queries: list[str], k: int = 5, mode: str = "dense") -> list[dict]:
        self.check(queries, k, mode)
        queries = [q.strip() for q in queries]
        vectors = self._encode(queries)
        truncated = self.truncated(queries)
        hybrid = self.info["hybrid"]  # fused as evaluate fused them: the same depth and k
        depth = k if mode == "dense" else min(self.index.ntotal, max(hybrid["depth"], k))
        scores, ids = self.index.search(vectors, depth)
        results = []
        dense = {str(q): {str(i): float(s) for s, i in zip(ss, ii) if i >= 0} for q, (ss, ii) in enumerate(zip(scores, ids))}
        fused = rrf([self._bm25_run(queries, depth), dense], hybrid["rrf_k"], depth) if mode == "hybrid" else dense
        for q, query in enumerate(queries):
            order = ranked(fused[str(q)])[:k]
            cosines = self._cosines(vectors[q], [int(d) for d in order], dense[str(q)])
            top = finite(scores[q][0])
            hits = [{"rank": rank, "score": finite(fused[str(q)][d]), "cosine": finite(cosine), **self.passages[int(d)]}
                    for rank, (d, cosine) in enumerate(zip(order, cosines), start=1)]
            results.append({"query": query, "mode": mode, "top_cosine": top, "truncated": truncated[q],
                            "no_good_match": self.threshold is not None and (top is None or top < self.threshold),
                            "version": self.version["id"], "hits": hits})
        return results

    def search(self, query: str, k: int = 5, mode: str = "dense") -> dict:
        return self.search_batch([query], k, mode)[0]


def version_of(info: dict, text: str) -> dict:
    """The version an index folder holds (info.json's record); an index built before versions were recorded is
    named by a hash of its info.json."""
    return info.get("version") or {"id": hashlib.sha256(text.encode()).hexdigest()[:12], "built": None,
                                   "passages": info.get("passages")}


def counting_tokenizer(tokenizer):
    """A copy of the model's tokenizer that neither cuts nor pads: how many tokens a query really has."""
    from tokenizers import Tokenizer

    counter = Tokenizer.from_str(tokenizer.to_str())
    counter.no_truncation()
    counter.no_padding()
    return counter


def finite(x: float) -> float | None:
    """A score as JSON can carry it: rounded, and None for a NaN or an infinity (json.dumps would write NaN)."""
    return round(float(x), 4) if math.isfinite(x) else None


def hit_label(hit: dict) -> str:
    return f"{hit['title']} > {hit['heading']}" if hit.get("heading") and hit["heading"] != hit["title"] else \
        hit.get("title") or hit.get("question") or hit["id"]


def format_result(result: dict, width: int = 100) -> str:
    lines = []
    if result["no_good_match"]:
        lines.append(f"(no good match: the best cosine, {result['top_cosine']}, is under the calibrated threshold)")
    if result.get("truncated"):
        lines.append("(the query is longer than the model reads: only its beginning was searched)")
    for hit in result["hits"]:
        body = textwrap.shorten(hit["text"], width=300, placeholder=" …")
        lines.append(f"{hit['rank']}. [{hit['score']:.3f}] {hit_label(hit)}  ({hit['source']})\n"
                     + textwrap.indent(textwrap.fill(body, width), "   "))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Search the knowledge base with the served model.")
    parser.add_argument("query")
    parser.add_argument("-k", type=int, default=5, help="passages to return (default 5)")
    parser.add_argument("--mode", default="dense", choices=MODES, help="dense (default) or hybrid (BM25 + dense, RRF)")
    parser.add_argument("--model", default="finetuned", choices=sorted(INDEX_DIRS),
                        help="which of the project's indexes (default finetuned: the served model)")
    parser.add_argument("--index", default=None, help="an index folder (default: the project's models/index)")
    parser.add_argument("--backend", default="auto", choices=CHOICES,
                        help="auto (default: the fastest that scored as PyTorch, by the export's measurements), torch, "
                             "or the ONNX export: onnx (same scores) or onnx-int8 (reports/export.json)")
    parser.add_argument("--onnx-dir", default=None, help="the ONNX export (default: models/onnx beside the index)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    searcher = Searcher(args.index or default_index(args.model), args.backend, args.onnx_dir)
    result = searcher.search(args.query, args.k, args.mode)
    print(json.dumps(result, indent=2, ensure_ascii=False, allow_nan=False) if args.json else format_result(result))


if __name__ == "__main__":
    run_main(main)
