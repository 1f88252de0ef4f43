"""A LangChain retriever over the index (`pip install .[langchain]`):

    from pipeline.serving.rag.langchain import IndexRetriever
    retriever = IndexRetriever.from_index("/path/to/models/index", k=4)          # in process: a Searcher
    retriever = IndexRetriever.from_url("http://127.0.0.1:8000", k=4, mode="hybrid")   # over the search service
    docs = retriever.invoke("my cat is drinking a lot")   # [Document(page_content=passage text, metadata=...), ...]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, field_validator

from pipeline.serving.rag.hits import check_source, hit_parts, open_source


class IndexRetriever(BaseRetriever):
    """The top k passages for a query, best first, as LangChain Documents.

    page_content is the passage text. metadata: "id" (the passage id), "section", "title", "heading", "source" (file
    and line or section), "question" (FAQ answers), "rank", "mode", "no_good_match" (the best cosine is under the
    threshold calibrated on validation), "index_version", and "score": the query-passage cosine under the served
    model, in -1..1, higher is closer, in every mode, so a score threshold means the same in dense and hybrid mode.
    In hybrid mode the order is the reciprocal-rank fusion of BM25 and dense, so scores need not decrease; the fusion
    rank and score are in "fusion_rank" and "fusion_score" (the latter about 0.03 at best: not a similarity).

    source: a Searcher (pipeline.serving.search) or a SearchClient (pipeline.serving.rag.client); k: 1 .. the
    index size (and the service's max_k); mode: "dense" or "hybrid". Bad values raise InputError naming them.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    source: Any
    k: int = 5
    mode: str = "dense"

    @field_validator("source")
    @classmethod
    def _searchable(cls, source: Any) -> Any:
        return check_source(source)

    @classmethod
    def from_index(cls, index: str | Path | None = None, k: int = 5, mode: str = "dense", backend: str = "auto",
                   onnx_dir: str | Path | None = None, **kwargs: Any) -> "IndexRetriever":
        """Over an index folder in process (None: the project's models/index); loads the model once."""
        return cls(source=open_source(index, backend=backend, onnx_dir=onnx_dir), k=k, mode=mode, **kwargs)

    @classmethod
    def from_url(cls, url: str, k: int = 5, mode: str = "dense", timeout: float = 30.0,
                 **kwargs: Any) -> "IndexRetriever":
        """Over a running search service (python -m pipeline.serving.serve), e.g. http://127.0.0.1:8000."""
        return cls(source=open_source(url=url, timeout=timeout), k=k, mode=mode, **kwargs)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return documents(self.source.search(query, self.k, self.mode))

    async def _aget_relevant_documents(self, query: str, *,
                                       run_manager: AsyncCallbackManagerForRetrieverRun) -> list[Document]:
        if hasattr(self.source, "asearch"):  # the service's client: no thread held while waiting
            return documents(await self.source.asearch(query, self.k, self.mode))
        return await super()._aget_relevant_documents(query, run_manager=run_manager)  # a Searcher: in a thread


def documents(result: dict) -> list[Document]:
    found = []
    for hit in result["hits"]:
        text, _, metadata = hit_parts(hit, result)
        found.append(Document(id=metadata["id"], page_content=text, metadata=metadata))
    return found
