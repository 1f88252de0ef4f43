"""A search service over an index: the model loads once, each request only encodes the query and searches.

    python -m pipeline.serving.serve [--index models/index] [--host 127.0.0.1] [--port 8000] [--backend onnx]

    GET  /health                                  {"status": "ok", "passages", "model", "served", ...}
    GET  /search?q=my+cat+is+drinking+a+lot&k=5&mode=dense
    POST /search   {"queries": ["...", "..."], "k": 5, "mode": "hybrid"}     -> {"results": [...]}

Each result is Searcher.search's: {"query", "mode", "top_cosine", "no_good_match", "hits": [...]}. Bad input (an
empty query, k outside 1..index size, an unknown mode, a malformed body) is answered 400 or 422 with a message;
the service goes on. FastAPI runs the handlers in its thread pool; the Searcher encodes one request at a time.
"""

from __future__ import annotations

import argparse
import logging

from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, Field

from pipeline.params import InputError, run_main
from pipeline.serving.search import BACKENDS, MODES, Searcher, default_index

log = logging.getLogger("pipeline.serve")


class SearchRequest(BaseModel):
    queries: list[str] = Field(min_length=1, max_length=1024)
    k: int = 5
    mode: str = "dense"


def create_app(searcher: Searcher) -> FastAPI:
    app = FastAPI(title="Domain retrieval search", description="Search the knowledge base with the served model.")

    def answer(queries: list[str], k: int, mode: str) -> list[dict]:
        try:
            return searcher.search_batch(queries, k, mode)
        except InputError as e:
            raise HTTPException(status_code=400, detail=str(e)) from None

    @app.get("/health")
    def health() -> dict:
        info = searcher.info
        return {"status": "ok", "passages": searcher.index.ntotal, "model": info["model"]["name"],
                "model_sha256": info["model"]["sha256"], "served": info["served"], "modes": list(MODES),
                "no_match_threshold": searcher.threshold}

    @app.get("/search")
    def search(q: str = Query(..., description="the question"), k: int = 5, mode: str = "dense") -> dict:
        return answer([q], k, mode)[0]

    @app.post("/search")
    def search_batch(request: SearchRequest) -> dict:
        return {"results": answer(request.queries, request.k, request.mode)}

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve search over an index (FastAPI + uvicorn).")
    parser.add_argument("--index", default=None, help="index folder (default: the project's models/index)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--backend", default="torch", choices=list(BACKENDS), help="torch, onnx or onnx-int8")
    parser.add_argument("--onnx-dir", default=None, help="the ONNX export (default: models/onnx beside the index)")
    args = parser.parse_args(argv)
    searcher = Searcher(args.index or default_index(), args.backend, args.onnx_dir)  # a missing or mismatched index: exit 1 before listening
    log.info("serving %s (%d passages, model %s) on http://%s:%d", searcher.index_dir, searcher.index.ntotal,
             searcher.info["model"]["name"], args.host, args.port)
    uvicorn.run(create_app(searcher), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    run_main(main)
