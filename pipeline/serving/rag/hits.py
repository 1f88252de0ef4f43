"""What a retriever needs from the index, framework aside: where the answers come from (a Searcher in process or the
search service) and, for each hit, its text, the score a framework thresholds on, and the metadata it carries.

The score is the query-passage cosine under the served model, in every mode: a framework's similarity cut-off
(LangChain's score_threshold, LlamaIndex's SimilarityPostprocessor) means the same thing in dense and hybrid mode,
and the calibrated no-match threshold (info.json, "no_good_match") is on the same scale. Hybrid ranks by reciprocal
rank fusion, whose score (about 0.03 at best) only orders one answer's hits: it travels in the metadata as
fusion_score beside fusion_rank, never as the score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.params import InputError

# passage fields worth a prompt's attention; the rest (ids, ranks, scores) is bookkeeping, kept out of the LLM's text
PASSAGE_FIELDS = ("title", "heading", "source", "question")


def open_source(index: str | Path | None = None, url: str | None = None, backend: str = "auto",
                onnx_dir: str | Path | None = None, timeout: float = 30.0):
    """A Searcher over an index folder (None: the project's models/index), or a SearchClient of a service URL."""
    if url is not None:
        if index is not None:
            raise InputError("give an index folder or a service URL, not both")
        from pipeline.serving.rag.client import SearchClient

        return SearchClient(url, timeout)
    from pipeline.serving.search import Searcher  # only here: a service's client needs no model, FAISS or PyTorch

    return Searcher(index, backend, onnx_dir)


def check_source(source: Any) -> Any:
    if not callable(getattr(source, "search", None)):
        raise InputError(f"source {type(source).__name__}: needs .search(query, k, mode) "
                         "(a Searcher or a SearchClient)")
    return source


def cosine_of(hit: dict, mode: str) -> float | None:
    """The hit's cosine: the service and the library give it as "cosine"; an older one gave only "score", which is
    the cosine in dense mode and a fusion score in hybrid mode (then there is no cosine to give)."""
    if hit.get("cosine") is not None:
        return float(hit["cosine"])
    return float(hit["score"]) if mode == "dense" and hit.get("score") is not None else None


def hit_parts(hit: dict, result: dict) -> tuple[str, float | None, dict]:
    """(text, score, metadata) of one hit of a search result: the score is the cosine (module docstring)."""
    mode = result.get("mode", "dense")
    cosine = cosine_of(hit, mode)
    metadata = {"id": hit["id"], **{f: hit[f] for f in PASSAGE_FIELDS if hit.get(f) not in (None, "")},
                "section": hit.get("section", hit["id"]), "rank": hit["rank"], "mode": mode, "score": cosine,
                "no_good_match": result.get("no_good_match")}
    if mode != "dense":
        metadata.update(fusion_rank=hit["rank"], fusion_score=hit.get("score"))
    version = result.get("version")
    if version is not None:  # flat metadata: vector stores and LlamaIndex's metadata text take scalars
        metadata["index_version"] = version.get("id") if isinstance(version, dict) else version
    return hit["text"], cosine, metadata
