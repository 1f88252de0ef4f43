"""A search service over an index: the model loads once, each request only encodes the query and searches.

    python -m pipeline.serving.serve [--index models/index] [--host 127.0.0.1] [--port 8000] [--backend auto]
                                     [--params path/to/params.yaml]

    GET  /health    liveness: 200 while the process runs, with the version served (null while loading)
    GET  /ready     readiness: 503 until an index is loaded, then 200 with the version served
    GET  /search?q=my+cat+is+drinking+a+lot&k=5&mode=dense                   -> one result
    POST /search   {"queries": ["...", "..."], "k": 5, "mode": "hybrid"}     -> {"results": [...], "version": id}
    POST /reload    load the index folder as it is now and serve it once loaded (also SIGHUP, and the watcher)

Each result is Searcher.search's: {"query", "mode", "top_cosine", "truncated", "no_good_match", "version",
"hits": [{"rank", "score", "cosine", ...}]}: "score" ranks (cosine in dense mode, the RRF fusion score in hybrid),
"cosine" is the query-passage cosine in every mode, the one to threshold on.

Limits (params.yaml `serve:`, read from the project holding the index or --params; pipeline/serving/limits.py):
a body over serve.max_body_bytes is refused 413 before it is read; an unknown field or query-string key, k outside
1..serve.max_k, more than serve.max_queries queries, an empty query or one over serve.max_query_chars characters,
malformed JSON, invalid UTF-8 or a lone surrogate get 422 naming the field and the limit; k over the index size or
a blank query 400. None is logged above INFO: one line per request (method, path, status, ms).

Versions (pipeline/serving/versions.py): the service answers from one index version at a time and swaps to a new
one only once it is loaded whole; every answer names its version. CPU (pipeline/serving/batcher.py): threads are
sized once from the cores the process may use, and concurrent requests are searched together in micro-batches.
Backend (pipeline/serving/backend_choice.py): `auto` serves the fastest encoder whose scores equal PyTorch's, by the
export stage's measurements on the host that built the index; /health's "backend_choice" gives the figures.
"""

import argparse
import asyncio
import json
import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from pipeline.params import InputError, run_main
from pipeline.serving.batcher import Batcher, use_cores
from pipeline.serving.docs import offline_docs
from pipeline.serving.limits import Guard, Limits, request_models, validation_detail
from pipeline.serving.search import CHOICES, MODES, Searcher, default_index
from pipeline.serving.versions import Served, load_consistent, read_version

log = logging.getLogger("pipeline.serve")


def create_app(served: Served | Searcher, limits: Limits | None = None) -> FastAPI:
    """The app over `served` (a Searcher is served as it is, without reloads)."""
    if isinstance(served, Searcher):
        searcher, served = served, Served(lambda: searcher, lambda: ())
        served.reload()
    limits = limits or Limits()
    SearchRequest, SearchQuery = request_models(limits)
    batcher = Batcher(lambda: served.current, limits.batch_wait_ms, limits.max_batch_queries)
    app = FastAPI(title="Domain retrieval search", description="Search the knowledge base with the served model.",
                  docs_url=None, redoc_url=None)
    offline_docs(app)  # /docs and /redoc from a pinned package's assets, not a CDN: they work offline
    app.add_middleware(Guard, max_body_bytes=limits.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_detail(error.errors())}, status_code=422)

    async def answer(queries: list[str], k: int, mode: str) -> list[dict]:
        searcher = served.current
        if searcher is None:
            raise HTTPException(status_code=503, detail="the index is still loading; see /ready")
        try:
            searcher.check(queries, k, mode)  # before queueing: a bad request never fails a batch
            return await asyncio.wrap_future(batcher.submit(queries, k, mode))
        except InputError as e:
            raise HTTPException(status_code=400, detail=str(e)) from None

    def status() -> dict:
        searcher = served.current
        if searcher is None:
            return {"status": "loading", "version": None}
        info = searcher.info
        return {"status": "ok", "version": searcher.version, "passages": searcher.index.ntotal,
                "model": info["model"]["name"], "model_sha256": info["model"]["sha256"], "served": info["served"],
                "backend": searcher.backend, "backend_choice": searcher.backend_choice, "modes": list(MODES),
                "no_match_threshold": searcher.threshold,
                "limits": {k: v for k, v in vars(limits).items() if k.startswith("max_")}}

    @app.get("/health")
    def health() -> dict:
        return status()

    @app.get("/ready")
    def ready() -> JSONResponse:
        now = status()
        return JSONResponse(now, status_code=200 if now["version"] else 503)

    @app.get("/search")
    async def search(params: Annotated[SearchQuery, Query()]) -> JSONResponse:
        return JSONResponse((await answer([params.q], params.k, params.mode))[0])

    @app.post("/search", openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": SearchRequest.model_json_schema()}}}})
    async def search_batch(request: Request) -> JSONResponse:
        body = bytearray()
        async for chunk in request.stream():  # a body without Content-Length stops being read at the limit
            body += chunk
            if len(body) > limits.max_body_bytes:
                raise HTTPException(status_code=413, detail=f"body: over serve.max_body_bytes = {limits.max_body_bytes}")
        try:
            parsed = SearchRequest.model_validate(json.loads(body.decode("utf-8")))
        except UnicodeDecodeError as e:
            raise HTTPException(status_code=422, detail=[{"field": "body", "error": f"not valid UTF-8 at byte {e.start}"}])
        except json.JSONDecodeError as e:
            raise HTTPException(status_code=422, detail=[{"field": "body", "error": f"malformed JSON: {e}"}])
        except ValidationError as e:
            detail = validation_detail(e.errors())
            raise HTTPException(status_code=422, detail=[{**d, "field": f"body.{d['field']}"} for d in detail])
        results = await answer(parsed.queries, parsed.k, parsed.mode)
        return JSONResponse({"results": results, "version": results[0]["version"]})

    @app.post("/reload")
    def reload() -> JSONResponse:
        before = served.current.version if served.current else None
        try:
            now = served.reload().version
        except Exception as e:  # noqa: BLE001 - the old version goes on serving; the client learns why
            return JSONResponse({"error": str(e), "version": before}, status_code=409)
        return JSONResponse({"version": now, "changed": before is None or before["id"] != now["id"]})

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve search over an index (FastAPI + uvicorn).")
    parser.add_argument("--index", default=None, help="index folder (default: the project's models/index)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--backend", default="auto", choices=CHOICES,
                        help="auto (default: the fastest backend that scored as PyTorch where the export measured "
                             "them; /health says which and why), torch, onnx or onnx-int8")
    parser.add_argument("--max-ndcg-loss", type=float, default=0.0,
                        help="with --backend auto: the NDCG@10 a backend may lose against PyTorch on any held-out "
                             "set of reports/export.json and still be chosen (default 0: none; 0.01 admits int8)")
    parser.add_argument("--onnx-dir", default=None, help="the ONNX export (default: models/onnx beside the index)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for PyTorch, ONNX Runtime and FAISS (default: the cores this process may use)")
    parser.add_argument("--params", default=None,
                        help="params.yaml with the `serve:` limits (default: the project's that holds the index)")
    args = parser.parse_args(argv)
    index_dir = Path(args.index or default_index()).resolve()
    onnx_dir = Path(args.onnx_dir) if args.onnx_dir else index_dir.parent / "onnx"
    limits = Limits.from_params(Path(args.params) if args.params else index_dir.parent.parent / "params.yaml")
    threads = use_cores(args.threads)

    def signature() -> tuple:  # what a reload depends on: the index's version, and the export it is served with
        export = onnx_dir / "export.json"
        return read_version(index_dir), export.read_bytes() if args.backend != "torch" and export.is_file() else None

    served = Served(lambda: load_consistent(index_dir, backend=args.backend, onnx_dir=onnx_dir, threads=threads,
                                               max_ndcg_loss=args.max_ndcg_loss),
                    signature)
    server = uvicorn.Server(uvicorn.Config(create_app(served, limits), host=args.host, port=args.port,
                                           log_level="warning"))
    failed: list[Exception] = []

    def first_load() -> None:  # listening meanwhile: /health answers, /ready says 503
        try:
            searcher = served.reload()
        except Exception as e:  # noqa: BLE001 - a missing or mismatched index: the process exits 1 with it
            failed.append(e)
            server.should_exit = True
            return
        log.info("serving %s (%d passages, model %s) on http://%s:%d", index_dir, searcher.index.ntotal,
                 searcher.info["model"]["name"], args.host, args.port)
        served.watch(limits.watch_seconds)

    signal.signal(signal.SIGHUP, lambda *_: served.reload_in_background())
    threading.Thread(target=first_load, name="first-load", daemon=True).start()
    server.run()
    if failed:
        raise failed[0] if isinstance(failed[0], InputError) else InputError(f"{index_dir}: {failed[0]}")


if __name__ == "__main__":
    run_main(main)
