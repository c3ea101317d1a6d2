"""One kind of the simulator's versioned EVI REST resources, and the errors its operations answer with
(evi-protocol.md §12.1–§12.3, §12.5).

Owns :class:`VersionedResources`: every prompt, tool or config with its versions, and the spec's nine operations
on them (create, list, list versions, get, new version, rename, describe, delete, delete a version), pure and
taking ``now_s``; :class:`RestError`, what a failed one returns instead of raising; and the JSON-compatible state
of one kind (:class:`EntryState`) that :class:`~gateway.simulator.evi_rest_store.RestStore` exports and restores.
A new resource is version 0, each new version takes the next number, never reused; lists are newest first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from gateway.wire.evi_rest import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    EviRestBody,
    HttpValidationError,
    ValidationErrorItem,
    parse_body,
    validation_message,
)

__all__ = ["Entry", "EntryState", "Problem", "RestError", "StoreCounter", "VersionedResources", "unprocessable"]


@dataclass(frozen=True, slots=True)
class RestError:
    """A failed operation: the HTTP status and the body's ``detail`` (a text, or the 422 list, §12.3)."""

    status: int
    detail: str | tuple[ValidationErrorItem, ...]

    def to_dict(self) -> dict[str, Any]:
        """The response body: ``{"detail": …}``."""
        if isinstance(self.detail, str):
            return {"detail": self.detail}
        return {"detail": [item.to_dict() for item in self.detail]}

    @property
    def message(self) -> str:
        """Readable text: the detail itself, or one line per validation problem."""
        if isinstance(self.detail, str):
            return self.detail
        return validation_message(HttpValidationError(detail=list(self.detail)))


Problem = tuple[list[str | int], str, str]
"""One reason for a 422: where (``["body", "prompt"]``), what, and its type (§12.3)."""


def unprocessable(problems: Sequence[Problem] | HttpValidationError) -> RestError:
    """The 422 for ``problems``."""
    if isinstance(problems, HttpValidationError):
        return RestError(422, tuple(problems.detail or ()))
    return RestError(422, tuple(ValidationErrorItem(loc=loc, msg=msg, type=kind) for loc, msg, kind in problems))


def _paging_problems(page_number: int, page_size: int) -> list[Problem]:
    problems: list[Problem] = []
    if page_number < 0:
        problems.append((["query", "page_number"], "Input should be greater than or equal to 0", "greater_than_equal"))
    if page_size < 1:
        problems.append((["query", "page_size"], "Input should be greater than or equal to 1", "greater_than_equal"))
    elif page_size > MAX_PAGE_SIZE:
        problems.append(
            (["query", "page_size"], f"Input should be less than or equal to {MAX_PAGE_SIZE}", "less_than_equal")
        )
    return problems


def _stamp(now_s: float) -> int:
    return int(now_s)


# ---------------------------------------------------------------------------------------------------
# One kind of versioned resource
# ---------------------------------------------------------------------------------------------------

ContentT = TypeVar("ContentT", bound=EviRestBody)
ReturnT = TypeVar("ReturnT")
PagedT = TypeVar("PagedT")


@dataclass(slots=True)
class _Version(Generic[ContentT]):
    content: ContentT
    """The posted version body (the name aside) as stored; ``version_description`` lives in it."""
    seq: int
    """Store-wide creation order, for newest-first lists."""
    modified_on: int


@dataclass(slots=True)
class Entry(Generic[ContentT]):
    """One resource: its id, its name (shared by all its versions), and its versions by number."""

    id: str
    name: str
    created_on: int
    next_version: int
    versions: dict[int, _Version[ContentT]]

    @property
    def latest(self) -> int:
        return max(self.versions)


class _VersionState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int
    seq: int
    modified_on: int
    content: dict[str, Any]


class EntryState(BaseModel):
    """An :class:`Entry` as JSON-compatible data, in the store's exported state."""

    model_config = ConfigDict(extra="forbid")
    id: str
    name: str
    created_on: int
    next_version: int
    versions: list[_VersionState]


class StoreCounter:
    """What every kind of a store shares: the creation order and the id factory."""

    def __init__(self, new_id: Callable[[], str]) -> None:
        self.new_id = new_id
        self.seq = 0


class VersionedResources(Generic[ContentT, ReturnT, PagedT]):
    """Every resource of one kind with its versions, and the spec's nine operations on them (§12.1).

    ``store.prompts``, ``store.tools`` and ``store.configs`` are the three kinds; each method names the path
    it serves for prompts, the others being alike under ``/v0/evi/tools`` and ``/v0/evi/configs``.
    """

    def __init__(
        self,
        counter: StoreCounter,
        kind: str,
        bodies: tuple[type[EviRestBody], type[ContentT], type[EviRestBody], type[EviRestBody]],
        render: Callable[[Entry[ContentT], int], ReturnT],
        paged: Callable[[int, int, int, list[ReturnT]], PagedT],
        prepare: Callable[[ContentT, str, ContentT | None, float], ContentT | RestError] | None = None,
    ) -> None:
        self.kind = kind
        """``Prompt``, ``Tool`` or ``Config``, as errors name it."""
        self._counter = counter
        self._create_body, self._version_body, self._name_body, self._description_body = bodies
        self._render = render
        self._paged = paged
        self._prepare = prepare
        self.entries: dict[str, Entry[ContentT]] = {}

    # -- the operations ------------------------------------------------------------------------------

    def create(self, body: object, *, now_s: float) -> ReturnT | RestError:
        """``POST /v0/evi/prompts``: a new resource at version 0 (201)."""
        posted = parse_body(self._create_body, body)
        if isinstance(posted, HttpValidationError):
            return unprocessable(posted)
        fields = posted.model_dump(exclude_none=True)
        name = str(fields.pop("name"))
        content = self._settle(self._version_body.model_validate(fields), name, None, now_s)
        if isinstance(content, RestError):
            return content
        entry: Entry[ContentT] = Entry(self._counter.new_id(), name, _stamp(now_s), 0, {})
        self._add_version(entry, content, now_s)
        self.entries[entry.id] = entry
        return self._render(entry, 0)

    def list_page(
        self,
        *,
        page_number: int = 0,
        page_size: int = DEFAULT_PAGE_SIZE,
        restrict_to_most_recent: bool = True,
        name: str | None = None,
    ) -> PagedT | RestError:
        """``GET /v0/evi/prompts``: one page, newest first; ``name`` keeps only resources of that name."""
        return self._page(page_number, page_size, self._rows(restrict=restrict_to_most_recent, name=name))

    def list_versions(
        self,
        id_: str,
        *,
        page_number: int = 0,
        page_size: int = DEFAULT_PAGE_SIZE,
        restrict_to_most_recent: bool = True,
    ) -> PagedT | RestError:
        """``GET /v0/evi/prompts/{id}``: that resource's versions, newest first (only the latest by default)."""
        problems = _paging_problems(page_number, page_size)
        if not problems and id_ not in self.entries:
            return RestError(404, f"{self.kind} {id_} not found")
        return self._page(page_number, page_size, self._rows(restrict=restrict_to_most_recent, id_=id_))

    def get_version(self, id_: str, version: int) -> ReturnT | RestError:
        """``GET /v0/evi/prompts/{id}/version/{version}``."""
        found = self.find(id_, version)
        return found if isinstance(found, RestError) else self._render(*found)

    def create_version(self, id_: str, body: object, *, now_s: float) -> ReturnT | RestError:
        """``POST /v0/evi/prompts/{id}``: the next version (201), under the same name."""
        posted = parse_body(self._version_body, body)
        if isinstance(posted, HttpValidationError):
            return unprocessable(posted)
        found = self.find(id_)
        if isinstance(found, RestError):
            return found
        entry, latest = found
        content = self._settle(posted, entry.name, entry.versions[latest].content, now_s)
        if isinstance(content, RestError):
            return content
        return self._render(entry, self._add_version(entry, content, now_s))

    def update_name(self, id_: str, body: object, *, now_s: float) -> None | RestError:
        """``PATCH /v0/evi/prompts/{id}``: renames every version; the spec's answer is an empty body."""
        posted = parse_body(self._name_body, body)
        if isinstance(posted, HttpValidationError):
            return unprocessable(posted)
        found = self.find(id_)
        if isinstance(found, RestError):
            return found
        found[0].name = str(posted.model_dump()["name"])
        for version in found[0].versions.values():
            version.modified_on = _stamp(now_s)
        return None

    def update_description(self, id_: str, version: int, body: object, *, now_s: float) -> ReturnT | RestError:
        """``PATCH /v0/evi/prompts/{id}/version/{version}``: sets (or, with null, clears) its description."""
        posted = parse_body(self._description_body, body)
        if isinstance(posted, HttpValidationError):
            return unprocessable(posted)
        found = self.find(id_, version)
        if isinstance(found, RestError):
            return found
        stored = found[0].versions[version]
        description = posted.model_dump()["version_description"]
        stored.content = stored.content.model_copy(update={"version_description": description})
        stored.modified_on = _stamp(now_s)
        return self._render(*found)

    def delete(self, id_: str) -> None | RestError:
        """``DELETE /v0/evi/prompts/{id}``: every version."""
        found = self.find(id_)
        if isinstance(found, RestError):
            return found
        del self.entries[id_]
        return None

    def delete_version(self, id_: str, version: int) -> None | RestError:
        """``DELETE /v0/evi/prompts/{id}/version/{version}``: that version; the last one takes the resource."""
        found = self.find(id_, version)
        if isinstance(found, RestError):
            return found
        if len(found[0].versions) == 1:
            del self.entries[id_]
        else:
            del found[0].versions[version]
        return None

    # -- for the store -------------------------------------------------------------------------------

    def find(self, id_: str, version: int | None = None) -> tuple[Entry[ContentT], int] | RestError:
        """The entry and version number (the latest when ``version`` is None), or a 404."""
        entry = self.entries.get(id_)
        if entry is None:
            return RestError(404, f"{self.kind} {id_} not found")
        if version is None:
            return entry, entry.latest
        if version not in entry.versions:
            return RestError(404, f"{self.kind} {id_} has no version {version}")
        return entry, version

    def reference_problems(self, id_: str, version: int | None, loc: list[str | int]) -> list[Problem]:
        """Why a config's reference to ``id_``/``version`` does not resolve, if it does not."""
        entry = self.entries.get(id_)
        if entry is None:
            return [([*loc, "id"], f"{self.kind} {id_} does not exist", "value_error")]
        if version is not None and version not in entry.versions:
            return [([*loc, "version"], f"{self.kind} {id_} has no version {version}", "value_error")]
        return []

    def export(self) -> list[dict[str, Any]]:
        """Every entry as JSON-compatible data."""
        return [
            EntryState(
                id=entry.id,
                name=entry.name,
                created_on=entry.created_on,
                next_version=entry.next_version,
                versions=[
                    _VersionState(version=number, seq=v.seq, modified_on=v.modified_on, content=v.content.to_dict())
                    for number, v in entry.versions.items()
                ],
            ).model_dump()
            for entry in self.entries.values()
        ]

    def restored(self, states: list[EntryState]) -> dict[str, Entry[ContentT]]:
        """The entries ``states`` describe, not yet installed; raises ValueError if they are inconsistent."""
        entries: dict[str, Entry[ContentT]] = {}
        for state in states:
            versions = {
                v.version: _Version(self._version_body.model_validate(v.content), v.seq, v.modified_on)
                for v in state.versions
            }
            if not versions or state.id in entries or state.next_version <= max(versions):
                raise ValueError(f"{self.kind} {state.id}: no versions, a repeated id, or a stale next_version")
            entries[state.id] = Entry(state.id, state.name, state.created_on, state.next_version, versions)
        return entries

    # -- mechanics -----------------------------------------------------------------------------------

    def _settle(self, content: ContentT, name: str, previous: ContentT | None, now_s: float) -> ContentT | RestError:
        return content if self._prepare is None else self._prepare(content, name, previous, now_s)

    def _add_version(self, entry: Entry[ContentT], content: ContentT, now_s: float) -> int:
        self._counter.seq += 1
        number = entry.next_version
        entry.versions[number] = _Version(content, self._counter.seq, _stamp(now_s))
        entry.next_version += 1
        return number

    def _rows(
        self, *, restrict: bool, name: str | None = None, id_: str | None = None
    ) -> list[tuple[Entry[ContentT], int]]:
        found: list[tuple[int, Entry[ContentT], int]] = []
        for entry in self.entries.values():
            if (name is not None and entry.name != name) or (id_ is not None and entry.id != id_):
                continue
            numbers = [entry.latest] if restrict else list(entry.versions)
            found.extend((entry.versions[number].seq, entry, number) for number in numbers)
        found.sort(key=lambda row: row[0], reverse=True)
        return [(entry, number) for _, entry, number in found]

    def _page(self, number: int, size: int, rows: list[tuple[Entry[ContentT], int]]) -> PagedT | RestError:
        problems = _paging_problems(number, size)
        if problems:
            return unprocessable(problems)
        shown = rows[number * size : (number + 1) * size]
        return self._paged(number, size, -(-len(rows) // size), [self._render(entry, v) for entry, v in shown])
