"""EVI's REST API from the gateway's side (docs/evi-protocol.md §12): configs, prompts, tools, and the control plane.

One :class:`EviRestClient` per command or process: requests carry ``X-Hume-Api-Key``, are spaced to stay
under EVI's 100 requests per second (§8), and a 429 or 503 is retried after its ``Retry-After`` (or a growing
pause), a bounded number of times. Every other failure raises :class:`~gateway.errors.EviRestError` with the
status and a readable message — a 422's validation ``detail`` one problem per line.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

import aiohttp
from pydantic import ValidationError

from gateway.errors import EviRestError
from gateway.wire.evi_messages import API_KEY_HEADER, EviModel
from gateway.wire.evi_rest import (
    HttpValidationError,
    ReturnPagedPrompts,
    ReturnPagedUserDefinedTools,
    ReturnPrompt,
    ReturnUserDefinedTool,
    validation_message,
)
from gateway.wire.evi_rest_configs import ReturnConfig, ReturnPagedConfigs

log = logging.getLogger("gateway.evi.rest")

Kind = Literal["configs", "prompts", "tools"]
MAX_REQUESTS_PER_S = 100.0
MAX_ATTEMPTS = 4
MAX_RETRY_WAIT_S = 30.0
REQUEST_TIMEOUT_S = 30.0

ReturnT = TypeVar("ReturnT", bound=EviModel)
PagedT = TypeVar("PagedT", bound=EviModel)


@dataclass(frozen=True, slots=True)
class KindModels(Generic[ReturnT, PagedT]):
    """How one resource kind comes back: one version, and a page of them (under ``page_key``)."""

    one: type[ReturnT]
    page: type[PagedT]
    page_key: str


KINDS: dict[Kind, KindModels[Any, Any]] = {
    "configs": KindModels(ReturnConfig, ReturnPagedConfigs, "configs_page"),
    "prompts": KindModels(ReturnPrompt, ReturnPagedPrompts, "prompts_page"),
    "tools": KindModels(ReturnUserDefinedTool, ReturnPagedUserDefinedTools, "tools_page"),
}


class EviRestClient:
    """``async with EviRestClient(base_url, api_key) as evi: await evi.list_page("configs")``."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        max_requests_per_s: float = MAX_REQUESTS_PER_S,
        max_attempts: int = MAX_ATTEMPTS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._interval_s = 1.0 / max_requests_per_s
        self._max_attempts = max_attempts
        self._sleep = sleep
        self._next_s = 0.0
        self._session: aiohttp.ClientSession | None = None
        self.retries = 0

    async def __aenter__(self) -> EviRestClient:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------------ resources (§12.1, §12.2)

    async def list_page(
        self,
        kind: Kind,
        *,
        page_number: int = 0,
        page_size: int = 10,
        all_versions: bool = False,
        name: str | None = None,
    ) -> Any:
        """One page of a kind (newest version of each unless ``all_versions``), optionally by exact name."""
        params: dict[str, str] = {"page_number": str(page_number), "page_size": str(page_size)}
        params["restrict_to_most_recent"] = "false" if all_versions else "true"
        if name is not None:
            params["name"] = name
        return _parse(KINDS[kind].page, await self.request("GET", f"/v0/evi/{kind}", params=params))

    async def list_all(
        self, kind: Kind, *, name: str | None = None, all_versions: bool = False, page_size: int = 100
    ) -> list[Any]:
        """Every item of a kind, following the pages (``page_size`` a request, 1–100)."""
        items: list[Any] = []
        page_number = 0
        while True:
            page = await self.list_page(
                kind, page_number=page_number, page_size=page_size, all_versions=all_versions, name=name
            )
            items += getattr(page, KINDS[kind].page_key) or []
            if page_number + 1 >= page.total_pages:
                return items
            page_number += 1

    async def versions(self, kind: Kind, id_: str) -> list[Any]:
        """Every version of one resource."""
        params = {"restrict_to_most_recent": "false", "page_size": "100"}
        page = _parse(KINDS[kind].page, await self.request("GET", f"/v0/evi/{kind}/{id_}", params=params))
        return list(getattr(page, KINDS[kind].page_key) or [])

    async def get(self, kind: Kind, id_: str, version: int | None = None) -> Any:
        """One version (the newest when ``version`` is None)."""
        if version is None:
            found = await self.versions(kind, id_)
            if not found:
                raise EviRestError(404, f"{kind[:-1]} {id_} has no versions")
            return max(found, key=lambda item: item.version)
        body = await self.request("GET", f"/v0/evi/{kind}/{id_}/version/{version}")
        return _parse(KINDS[kind].one, body)

    async def create(self, kind: Kind, body: Mapping[str, Any]) -> Any:
        """A new resource (version 0)."""
        return _parse(KINDS[kind].one, await self.request("POST", f"/v0/evi/{kind}", json_body=body))

    async def new_version(self, kind: Kind, id_: str, body: Mapping[str, Any]) -> Any:
        """The next version of a resource."""
        return _parse(KINDS[kind].one, await self.request("POST", f"/v0/evi/{kind}/{id_}", json_body=body))

    async def rename(self, kind: Kind, id_: str, name: str) -> None:
        """A new name for every version."""
        await self.request("PATCH", f"/v0/evi/{kind}/{id_}", json_body={"name": name})

    async def describe(self, kind: Kind, id_: str, version: int, description: str | None) -> Any:
        """Set one version's description."""
        body = await self.request(
            "PATCH", f"/v0/evi/{kind}/{id_}/version/{version}", json_body={"version_description": description}
        )
        return _parse(KINDS[kind].one, body)

    async def delete(self, kind: Kind, id_: str, version: int | None = None) -> None:
        """Delete one version, or (``version`` None) the resource with all its versions."""
        path = f"/v0/evi/{kind}/{id_}" + (f"/version/{version}" if version is not None else "")
        await self.request("DELETE", path)

    # ------------------------------------------------------------------ control plane (§7)

    async def send(self, chat_id: str, message: Mapping[str, Any]) -> None:
        """Deliver a client message (anything but ``audio_input``) into a live chat."""
        if message.get("type") == "audio_input":
            raise EviRestError(422, "the control plane does not take audio_input")
        await self.request("POST", f"/v0/evi/chat/{chat_id}/send", json_body=message)

    # ------------------------------------------------------------------ the wire

    async def request(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None, json_body: object = None
    ) -> Any:
        """One call, paced and retried; the decoded JSON answer (None for an empty one)."""
        assert self._session is not None, "use EviRestClient inside 'async with'"
        headers = {API_KEY_HEADER: self._api_key} if self._api_key else {}
        data = None if json_body is None else json.dumps(json_body, separators=(",", ":"))
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in range(1, self._max_attempts + 1):
            await self._pace()
            try:
                async with self._session.request(
                    method, self.base_url + path, params=params, data=data, headers=headers
                ) as resp:
                    text = await resp.text()
                    retry_after = resp.headers.get("Retry-After")
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise EviRestError(0, f"cannot reach EVI's REST API at {self.base_url}: {type(exc).__name__}") from None
            if status in (429, 503) and attempt < self._max_attempts:
                wait_s = _retry_wait_s(retry_after, attempt)
                self.retries += 1
                log.info("EVI REST %s %s: HTTP %d, retrying in %.1f s", method, path, status, wait_s)
                await self._sleep(wait_s)
                continue
            if 200 <= status < 300:
                return json.loads(text) if text.strip() else None
            raise EviRestError(status, _error_message(status, text))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now < self._next_s:
            await self._sleep(self._next_s - now)
            now = self._next_s
        self._next_s = now + self._interval_s


def _retry_wait_s(retry_after: str | None, attempt: int) -> float:
    """``Retry-After`` in seconds if given (capped), else 0.5 s, 1 s, 2 s …"""
    if retry_after is not None:
        try:
            return min(MAX_RETRY_WAIT_S, max(0.0, float(retry_after)))
        except ValueError:
            pass
    return min(MAX_RETRY_WAIT_S, 0.5 * 2.0 ** (attempt - 1))


def _error_message(status: int, text: str) -> str:
    """What went wrong, readably: a 422's problems one per line, else the body's detail or message."""
    try:
        body = json.loads(text)
    except ValueError:
        return f"HTTP {status}: {text.strip()[:300] or '(empty body)'}"
    if status == 422 and isinstance(body, dict) and isinstance(body.get("detail"), list):
        try:
            problems = validation_message(HttpValidationError.model_validate(body))
            return f"EVI refused the request as invalid (HTTP 422):\n{problems}"
        except ValidationError:
            pass
    if status == 401:
        return "EVI refused the API key (HTTP 401): check HUME_API_KEY"
    if isinstance(body, dict):
        for key in ("detail", "message", "error"):
            if isinstance(body.get(key), str):
                return f"HTTP {status}: {body[key]}"
    return f"HTTP {status}: {text.strip()[:300]}"


def _parse(model: type[ReturnT], body: object) -> ReturnT:
    """An answer as its model; an answer of the wrong shape is an EviRestError, not a crash."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        raise EviRestError(200, f"EVI answered something that is not a {model.__name__}: {problems}") from None
