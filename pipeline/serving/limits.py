"""What the search service accepts: the limits of params.yaml's `serve:` section, the request models that enforce
them (pydantic), and the ASGI layer in front of the app that caps the body before it is read and logs each request.

A request over a limit is answered 413 or 422 at once, naming the field and the limit, and is logged at INFO like
any other request: a client's mistake is not the service's error. The defaults below are used when the project's
params.yaml has no `serve:` section (an index copied elsewhere); params.yaml says why each is what it is.
"""

import json
import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from pipeline.params import InputError

log = logging.getLogger("pipeline.serve")


@dataclass(frozen=True)
class Limits:
    max_k: int = 100
    max_queries: int = 64
    max_query_chars: int = 2000
    max_body_bytes: int = 262144
    batch_wait_ms: float = 2.0
    max_batch_queries: int = 128
    watch_seconds: float = 2.0

    @classmethod
    def from_params(cls, path: Path) -> "Limits":
        """The `serve:` section of a params.yaml; the defaults for a key it lacks, or without the file."""
        if not path.is_file():
            return cls()
        section = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("serve") or {}
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise InputError(f"{path}: serve.{unknown[0]} is not a setting (known: {', '.join(known)})")
        values = {}
        for key, value in section.items():
            kind = known[key]
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value <= 0:
                raise InputError(f"{path}: serve.{key} {value!r} must be a positive {kind.__name__}")
            values[key] = kind(value)
        return cls(**values)


def utf8(text: str) -> str:
    """A lone UTF-16 surrogate ("\\ud800", valid in JSON) is no text: the tokenizer would fail on it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"not valid Unicode: a lone surrogate at character {e.start}") from None
    return text


def request_models(limits: Limits) -> tuple[type[BaseModel], type[BaseModel]]:
    """(the POST body, the GET query string), both refusing a field they do not know (422 naming it)."""
    Text = Annotated[str, Field(min_length=1, max_length=limits.max_query_chars), AfterValidator(utf8)]
    K = Annotated[int, Field(ge=1, le=limits.max_k, description="passages per query")]
    Mode = Annotated[Literal["dense", "hybrid"], Field(description="dense: cosine; hybrid: BM25 and dense by RRF")]

    class SearchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        queries: list[Text] = Field(min_length=1, max_length=limits.max_queries, description="the questions")
        k: K = 5
        mode: Mode = "dense"

    class SearchQuery(BaseModel):
        model_config = ConfigDict(extra="forbid")
        q: Text = Field(description="the question")
        k: K = 5
        mode: Mode = "dense"

    return SearchRequest, SearchQuery


def validation_detail(errors) -> list[dict]:
    """pydantic's errors without the input they echo (a 1 MB query sent back) and without internals: where, what,
    and the limit (pydantic's ctx: max_length, le, ...)."""
    out = []
    for e in errors:
        item = {"field": ".".join(str(x) for x in e["loc"]), "error": e["msg"]}
        ctx = {k: v for k, v in (e.get("ctx") or {}).items() if isinstance(v, (int, float, str))}
        if ctx:
            item["limit"] = ctx
        out.append(item)
    return out


DRAIN_FACTOR = 16  # a body up to 16 x serve.max_body_bytes (4 MiB at the default) is read to its end to answer 413


class Guard:
    """ASGI middleware: refuse a body over the limit before reading it (Content-Length), stop reading one that
    grows past it (chunked), and log one line per request: method, path, status, latency in ms."""

    def __init__(self, app, max_body_bytes: int):
        self.app, self.max = app, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max):
                if length.isdigit() and int(length) <= DRAIN_FACTOR * self.max:
                    await self._drain(receive, {"more_body": True}, 0)
                return await self._too_large(sending, length.decode("latin-1"))
            seen = [0]

            async def receiving():
                message = await receive()
                seen[0] += len(message.get("body", b""))
                if seen[0] > self.max:
                    await self._drain(receive, message, seen[0])
                    raise BodyTooLarge
                return message

            try:
                await self.app(scope, receiving, sending)
            except BodyTooLarge:
                await self._too_large(sending, f"over {self.max}")
        finally:
            log.info("request method=%s path=%s status=%d ms=%.1f", scope["method"], scope["path"], status[0],
                     (time.perf_counter() - start) * 1000)

    async def _drain(self, receive, message: dict, seen: int) -> None:
        """Read and drop what the client is still sending, up to DRAIN_FACTOR x the limit, before answering: a
        413 sent while the client is mid-upload, and the connection closed, reaches it as a broken pipe instead of
        the answer (and a proxy in front answers 502). Past that bound the connection is closed as it stands."""
        while message.get("more_body") and seen <= DRAIN_FACTOR * self.max:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            seen += len(message.get("body", b""))

    async def _too_large(self, send, length: str) -> None:
        body = json.dumps({"detail": [{"field": "body", "error": f"{length} bytes: the body is limited to "
                                       f"serve.max_body_bytes = {self.max}", "limit": {"max_body_bytes": self.max}}]})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body.encode()})


class BodyTooLarge(Exception):
    pass
