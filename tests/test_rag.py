"""The retrievers RAG frameworks expect, against the real langchain-core and llama-index-core: in process over a
Searcher and over the service on loopback, the same passages either way, the score a threshold can use (the cosine,
checked against the model's own vectors, in dense and hybrid mode), clear errors; the README's rag.py from another
folder; and /docs with no network."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipeline.params import InputError
from tests.conftest import ROOT, SERVED_TOPICS, served_project

TOPICS = SERVED_TOPICS
QUESTION = "my pony walks stiffly and has laminitis"


@pytest.fixture(scope="module")
def index(tmp_path_factory, tiny_model) -> Path:
    """An index of 12 passages built by the index stage with the tiny model (`python -m pipeline.stages.index base`)."""
    return served_project(tmp_path_factory.mktemp("rag") / "project", tiny_model) / "models/index_base"


@pytest.fixture(scope="module")
def searcher(index):
    from pipeline.serving.search import Searcher

    return Searcher(index)


@pytest.fixture(scope="module")
def cosine(index, searcher):
    """id -> the query's cosine with each passage, from the model and the stored vectors, not through the Searcher."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(searcher.model_dir), device="cpu")
    model.max_seq_length = 32
    query = model.encode([QUESTION], normalize_embeddings=True)[0]
    vectors = searcher.index.reconstruct_n(0, searcher.index.ntotal)
    return {p["id"]: float(v @ query) for p, v in zip(searcher.passages, vectors)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready(url: str) -> bool:
    for path in ("/ready", "/health"):  # a service without /ready is ready when it answers /health
        try:
            with urllib.request.urlopen(url + path, timeout=5) as response:
                return response.status == 200
        except urllib.error.HTTPError as e:
            if e.code != 404:
                return False
        except (urllib.error.URLError, ConnectionError):
            return False
    return False


@pytest.fixture(scope="module")
def service(index, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("service") / "log.txt"  # a file, not a pipe nobody reads: one line per request
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.serving.serve", "--index", str(index),
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline and not ready(url):  # /ready once the index is loaded (/health: only alive)
        if proc.poll() is not None:
            raise AssertionError(log.read_text())
        time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_langchain_retriever_in_process_scores_by_cosine(searcher, cosine, mode):
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    from pipeline.serving.rag.langchain import IndexRetriever

    retriever = IndexRetriever(source=searcher, k=4, mode=mode)
    docs = retriever.invoke(QUESTION)
    hits = searcher.search(QUESTION, k=4, mode=mode)["hits"]
    assert isinstance(retriever, BaseRetriever) and all(isinstance(d, Document) for d in docs)
    assert [d.id for d in docs] == [d.metadata["id"] for d in docs] == [h["id"] for h in hits]
    assert [d.id for d in asyncio.run(retriever.ainvoke(QUESTION))] == [h["id"] for h in hits]
    assert [d.page_content for d in docs] == [h["text"] for h in hits]
    assert [d.metadata["source"] for d in docs] == [h["source"] for h in hits]
    assert [d.metadata["score"] for d in docs] == pytest.approx([cosine[d.id] for d in docs], abs=1e-3)
    if mode == "hybrid":  # ranked by fusion: its rank and score beside the cosine, never instead of it
        assert [d.metadata["fusion_rank"] for d in docs] == [1, 2, 3, 4]
        assert [d.metadata["fusion_score"] for d in docs] == [h["score"] for h in hits]
    else:
        assert "fusion_score" not in docs[0].metadata
        assert [d.metadata["score"] for d in docs] == sorted((d.metadata["score"] for d in docs), reverse=True)


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_llamaindex_retriever_in_process_scores_by_cosine(searcher, cosine, mode):
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode

    from pipeline.serving.rag.llamaindex import IndexRetriever

    retriever = IndexRetriever(searcher, k=3, mode=mode)
    found = retriever.retrieve(QUESTION)
    hits = searcher.search(QUESTION, k=3, mode=mode)["hits"]
    assert isinstance(retriever, BaseRetriever)
    assert all(isinstance(n, NodeWithScore) and isinstance(n.node, TextNode) for n in found)
    assert [n.node.node_id for n in found] == [h["id"] for h in hits]
    assert [n.node.node_id for n in asyncio.run(retriever.aretrieve(QUESTION))] == [h["id"] for h in hits]
    assert [n.score for n in found] == pytest.approx([cosine[h["id"]] for h in hits], abs=1e-3)
    prompt_text = found[0].node.get_content(metadata_mode=MetadataMode.LLM)
    assert hits[0]["text"] in prompt_text and f"source: {hits[0]['source']}" in prompt_text
    assert "fusion" not in prompt_text and "rank" not in prompt_text  # bookkeeping stays out of the LLM's text
    if mode == "hybrid":
        assert [n.node.metadata["fusion_score"] for n in found] == [h["score"] for h in hits]


def test_over_the_service_the_retrievers_give_what_the_library_gives(service, searcher):
    from pipeline.serving.rag import langchain, llamaindex

    for mode in ("dense", "hybrid"):
        local = [(d.id, d.metadata["score"]) for d in langchain.IndexRetriever(source=searcher, k=5, mode=mode)
                 .invoke(QUESTION)]
        remote = langchain.IndexRetriever.from_url(service, k=5, mode=mode)
        assert [(d.id, d.metadata["score"]) for d in remote.invoke(QUESTION)] == local
        assert [(d.id, d.metadata["score"]) for d in asyncio.run(remote.ainvoke(QUESTION))] == local
        remote = llamaindex.IndexRetriever.from_url(service + "/", k=5, mode=mode)
        assert [(n.node.node_id, n.score) for n in remote.retrieve(QUESTION)] == local
        assert [(n.node.node_id, n.score) for n in asyncio.run(remote.aretrieve(QUESTION))] == local


def test_the_service_client_names_what_is_wrong(service):
    from pipeline.serving.rag.client import SearchClient, ServiceError
    from pipeline.serving.rag.langchain import IndexRetriever

    with pytest.raises(InputError, match=r"/search: HTTP 4\d\d: .*\bk\b"):
        IndexRetriever.from_url(service, k=0).invoke(QUESTION)
    with pytest.raises(InputError, match="mode"):
        SearchClient(service).search(QUESTION, 2, "sparse")
    with pytest.raises(InputError, match="give it as http://host:port"):
        SearchClient("127.0.0.1:8000")
    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServiceError, match=re.escape(nobody) + "/search: ConnectError"):
        SearchClient(nobody, timeout=5).search(QUESTION)
    with pytest.raises(InputError, match="needs .search"):
        IndexRetriever(source="http://127.0.0.1:8000")


def test_the_service_retrievers_load_no_model():
    code = ("import sys; from pipeline.serving.rag import langchain, llamaindex\n"
            "langchain.IndexRetriever.from_url('http://127.0.0.1:1')\n"
            "llamaindex.IndexRetriever.from_url('http://127.0.0.1:1')\n"
            "heavy = ('torch', 'faiss', 'sentence_transformers', 'pipeline.serving.search')\n"
            "print(sorted(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_readme_rag_example_runs_from_another_folder(index, tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(# rag\.py.*?)```", readme, re.S).group(1)
    (tmp_path / "rag.py").write_text(code)
    env = dict(os.environ, RAG_INDEX=str(index))
    out = subprocess.run([sys.executable, "rag.py"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"^  1 -?0\.\d+ kb/\d#\d \| ", out.stdout, re.M), out.stdout


def test_docs_pages_load_nothing_from_the_network():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from pipeline.serving.docs import offline_docs

    app = FastAPI(title="search", docs_url=None, redoc_url=None)
    app.get("/health")(lambda: {"status": "ok"})
    client = TestClient(offline_docs(app))
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert "http://" not in html and "https://" not in html, page
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets and all(a.startswith("/") for a in assets), assets
        for asset in assets:
            response = client.get(asset)
            assert response.status_code == 200 and len(response.content) > 1000, asset
    assert "/health" in client.get("/openapi.json").json()["paths"]
    with pytest.raises(ValueError, match="docs_url=None"):
        offline_docs(FastAPI())
