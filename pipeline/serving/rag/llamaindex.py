"""A LlamaIndex retriever over the index (`pip install .[llamaindex]`):

    from pipeline.serving.rag.llamaindex import IndexRetriever
    retriever = IndexRetriever.from_index("/path/to/models/index", k=4)          # in process: a Searcher
    retriever = IndexRetriever.from_url("http://127.0.0.1:8000", k=4, mode="hybrid")   # over the search service
    nodes = retriever.retrieve("my cat is drinking a lot")   # [NodeWithScore(node=TextNode(...), score=cosine), ...]
    RetrieverQueryEngine.from_args(retriever, llm=...)       # as any LlamaIndex retriever
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from pipeline.serving.rag.hits import PASSAGE_FIELDS, check_source, hit_parts, open_source


class IndexRetriever(BaseRetriever):
    """The top k passages for a query, best first, as NodeWithScore(TextNode).

    The node's id_ is the passage id and its text the passage text. NodeWithScore.score is the query-passage cosine
    under the served model, in -1..1, higher is closer, in every mode, so a SimilarityPostprocessor cut-off means
    the same in dense and hybrid mode. In hybrid mode the order is the reciprocal-rank fusion of BM25 and dense, so
    scores need not decrease; metadata holds "fusion_rank" and "fusion_score" (about 0.03 at best: not a similarity).
    metadata also holds "id", "section", "title", "heading", "source", "question" (FAQ answers), "rank", "mode",
    "score" (the cosine again), "no_good_match" and "index_version"; only title, heading, source and question go
    into the text an LLM is given.

    source: a Searcher (pipeline.serving.search) or a SearchClient (pipeline.serving.rag.client); k: 1 .. the
    index size (and the service's max_k); mode: "dense" or "hybrid". Bad values raise InputError naming them.
    """

    def __init__(self, source: Any, k: int = 5, mode: str = "dense", **kwargs: Any):
        self.source = check_source(source)
        self.k = k
        self.mode = mode
        super().__init__(**kwargs)

    @classmethod
    def from_index(cls, index: str | Path | None = None, k: int = 5, mode: str = "dense", backend: str = "auto",
                   onnx_dir: str | Path | None = None, **kwargs: Any) -> "IndexRetriever":
        """Over an index folder in process (None: the project's models/index); loads the model once."""
        return cls(open_source(index, backend=backend, onnx_dir=onnx_dir), k, mode, **kwargs)

    @classmethod
    def from_url(cls, url: str, k: int = 5, mode: str = "dense", timeout: float = 30.0,
                 **kwargs: Any) -> "IndexRetriever":
        """Over a running search service (python -m pipeline.serving.serve), e.g. http://127.0.0.1:8000."""
        return cls(open_source(url=url, timeout=timeout), k, mode, **kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return nodes(self.source.search(query_bundle.query_str, self.k, self.mode))

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if hasattr(self.source, "asearch"):  # the service's client: the event loop goes on while it waits
            return nodes(await self.source.asearch(query_bundle.query_str, self.k, self.mode))
        return self._retrieve(query_bundle)  # a Searcher: LlamaIndex's own default for a sync retriever


def nodes(result: dict) -> list[NodeWithScore]:
    found = []
    for hit in result["hits"]:
        text, score, metadata = hit_parts(hit, result)
        hidden = [key for key in metadata if key not in PASSAGE_FIELDS]  # bookkeeping, not for the prompt
        node = TextNode(id_=metadata["id"], text=text, metadata=metadata, excluded_llm_metadata_keys=hidden,
                        excluded_embed_metadata_keys=hidden)
        found.append(NodeWithScore(node=node, score=score))
    return found
