"""A client of the search service (python -m pipeline.serving.serve) with the Searcher's interface, so that a
retriever works the same over the service as over the library in process:

    client = SearchClient("http://127.0.0.1:8000")
    client.search("my cat is drinking a lot", k=5, mode="dense")   # the service's answer: {"query", "hits", ...}
    await client.asearch(...)                                      # the same, without blocking an event loop

httpx, not urllib: one connection pool kept alive across requests (and an async client), which a RAG application
calling once per question needs; both frameworks' extras install it anyway. Loads no model: an application using only
the service needs neither PyTorch nor the index.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httpx

from pipeline.params import InputError


class ServiceError(RuntimeError):
    """The service could not be reached or answered with a server error: not the caller's input."""


class SearchClient:
    def __init__(self, base_url: str, timeout: float = 30.0):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InputError(f"service URL {base_url!r}: give it as http://host:port (the search service's address)")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout)
        self._async: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient] | None = None  # per event loop: see asearch

    def search(self, query: str, k: int = 5, mode: str = "dense") -> dict:
        try:
            response = self._client.get("/search", params={"q": query, "k": k, "mode": mode})
        except httpx.HTTPError as e:
            raise ServiceError(f"{self.base_url}/search: {type(e).__name__}: {e}") from None
        return self._answer(response)

    def search_batch(self, queries: list[str], k: int = 5, mode: str = "dense") -> list[dict]:
        try:
            response = self._client.post("/search", json={"queries": list(queries), "k": k, "mode": mode})
        except httpx.HTTPError as e:
            raise ServiceError(f"{self.base_url}/search: {type(e).__name__}: {e}") from None
        return self._answer(response, "results")

    async def asearch(self, query: str, k: int = 5, mode: str = "dense") -> dict:
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:  # an async client's connections belong to one loop
            self._async = (loop, httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout))
        try:
            response = await self._async[1].get("/search", params={"q": query, "k": k, "mode": mode})
        except httpx.HTTPError as e:
            raise ServiceError(f"{self.base_url}/search: {type(e).__name__}: {e}") from None
        return self._answer(response)

    def _answer(self, response: httpx.Response, key: str = "hits"):
        where = f"{self.base_url}{response.request.url.path}"
        if 400 <= response.status_code < 500:  # the service names the field and its limit: the caller's to fix
            raise InputError(f"{where}: HTTP {response.status_code}: {detail(response)}")
        if response.status_code != 200:
            raise ServiceError(f"{where}: HTTP {response.status_code}: {detail(response)}")
        try:
            body = response.json()
        except ValueError:
            raise ServiceError(f"{where}: the answer is not JSON; is this the search service?") from None
        if not isinstance(body, dict) or key not in body:
            raise ServiceError(f"{where}: the answer has no {key!r}; is this the search service?")
        return body if key == "hits" else body[key]

    def close(self) -> None:
        self._client.close()

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async[1].aclose()
            self._async = None

    def __enter__(self) -> "SearchClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def detail(response: httpx.Response) -> str:
    """The service's message: {"detail": "..."} or a list of field errors, else the start of the body."""
    try:
        found = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        return response.text[:300]
    if isinstance(found, list):  # validation errors: [{"field": "k", "error": "..."}] or pydantic's {"loc", "msg"}
        return "; ".join(f"{e.get('field') or '.'.join(str(p) for p in e.get('loc', []))}: "
                         f"{e.get('error') or e.get('msg')}" for e in found if isinstance(e, dict)) or str(found)
    return str(found)
