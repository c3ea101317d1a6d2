"""The simulator's EVI REST API state: configs, prompts and tools, each versioned (evi-protocol.md §12.5).

Pure: no I/O, no clock (every change takes ``now_s``, seconds since the epoch), ids from a factory that
can be swapped for a deterministic one. ``RestStore`` holds three kinds, ``prompts``, ``tools`` and
``configs``, each offering the spec's nine operations of ``/v0/evi/<kind>s`` as methods that return the
returned model (or ``None`` where the spec's answer is an empty body) or a :class:`RestError` value;
nothing raises for a client's mistake. An HTTP layer answers a successful ``create``/``create_version``
with 201 and any other success with 200. ``RestStore.config`` is the lookup a chat uses, and
``export``/``restore`` carry the whole state as JSON-compatible data.

Behaviour (§12.1–§12.5): a new resource is version 0 and each new version takes the next number, never
reused after a delete; a name belongs to every version; lists are newest first; ``restrict_to_most_recent``
(default true) keeps only the latest version of each resource; unknown ids and versions are 404; a bad body
or query is 422 with the spec's ``detail`` list. Names need not be unique, as the spec sets no such rule.
A config refers to prompts and tools by id and optional version (none: the newest, ``LATEST``), and those
are expanded when it is read; a reference to something deleted since is left out of the expansion.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from gateway.wire.evi_rest import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    EviRestBody,
    HttpValidationError,
    PatchedPromptVersionDescription,
    PostedPrompt,
    PostedPromptName,
    PostedPromptVersion,
    PostedUserDefinedTool,
    PostedUserDefinedToolName,
    PostedUserDefinedToolVersion,
    PostedUserDefinedToolVersionDescription,
    PromptExpansionSpec,
    ReturnPagedPrompts,
    ReturnPagedUserDefinedTools,
    ReturnPrompt,
    ReturnUserDefinedTool,
    ValidationErrorItem,
    parse_body,
    validation_message,
)
from gateway.wire.evi_rest_configs import (
    SUPPORTED_EVI_VERSIONS,
    PostedConfig,
    PostedConfigName,
    PostedConfigPrompt,
    PostedConfigVersion,
    PostedConfigVersionDescription,
    PostedEllmModel,
    PostedTimeoutSpec,
    PostedVoice,
    ReturnBuiltinTool,
    ReturnConfig,
    ReturnEllmModel,
    ReturnEventMessageSpecs,
    ReturnInterruptionSpec,
    ReturnLanguageModel,
    ReturnNudgeSpec,
    ReturnPagedConfigs,
    ReturnTimeoutSpec,
    ReturnTimeoutSpecs,
    ReturnTurnDetectionSpec,
    ReturnVoice,
    ReturnWebhookSpec,
    VoiceId,
)

__all__ = ["DEFAULT_INACTIVITY_S", "DEFAULT_MAX_DURATION_S", "RestError", "RestStore", "VersionedResources"]

# §12.5: what a config returns for a timeout it did not set (Hume's documented defaults, evi-protocol.md §8).
DEFAULT_INACTIVITY_S = 120
DEFAULT_MAX_DURATION_S = 1800
# Voices posted by name get a stable made-up id (§12.5).
_VOICE_NAMESPACE = uuid.UUID("6f1c7a52-3c1e-4d59-9a43-7d3f0e2b8c11")


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


_Problem = tuple[list[str | int], str, str]


def _unprocessable(problems: Sequence[_Problem] | HttpValidationError) -> RestError:
    if isinstance(problems, HttpValidationError):
        return RestError(422, tuple(problems.detail or ()))
    return RestError(422, tuple(ValidationErrorItem(loc=loc, msg=msg, type=kind) for loc, msg, kind in problems))


def _paging_problems(page_number: int, page_size: int) -> list[_Problem]:
    problems: list[_Problem] = []
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
ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(slots=True)
class _Version(Generic[ContentT]):
    content: ContentT
    """The posted version body (the name aside) as stored; ``version_description`` lives in it."""
    seq: int
    """Store-wide creation order, for newest-first lists."""
    modified_on: int


@dataclass(slots=True)
class _Entry(Generic[ContentT]):
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


class _EntryState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    name: str
    created_on: int
    next_version: int
    versions: list[_VersionState]


class _StoreState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal[1]
    seq: int
    prompts: list[_EntryState]
    tools: list[_EntryState]
    configs: list[_EntryState]


class _Counter:
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
        counter: _Counter,
        kind: str,
        bodies: tuple[type[EviRestBody], type[ContentT], type[EviRestBody], type[EviRestBody]],
        render: Callable[[_Entry[ContentT], int], ReturnT],
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
        self.entries: dict[str, _Entry[ContentT]] = {}

    # -- the operations ------------------------------------------------------------------------------

    def create(self, body: object, *, now_s: float) -> ReturnT | RestError:
        """``POST /v0/evi/prompts``: a new resource at version 0 (201)."""
        posted = parse_body(self._create_body, body)
        if isinstance(posted, HttpValidationError):
            return _unprocessable(posted)
        fields = posted.model_dump(exclude_none=True)
        name = str(fields.pop("name"))
        content = self._settle(self._version_body.model_validate(fields), name, None, now_s)
        if isinstance(content, RestError):
            return content
        entry: _Entry[ContentT] = _Entry(self._counter.new_id(), name, _stamp(now_s), 0, {})
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
            return _unprocessable(posted)
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
            return _unprocessable(posted)
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
            return _unprocessable(posted)
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

    def find(self, id_: str, version: int | None = None) -> tuple[_Entry[ContentT], int] | RestError:
        """The entry and version number (the latest when ``version`` is None), or a 404."""
        entry = self.entries.get(id_)
        if entry is None:
            return RestError(404, f"{self.kind} {id_} not found")
        if version is None:
            return entry, entry.latest
        if version not in entry.versions:
            return RestError(404, f"{self.kind} {id_} has no version {version}")
        return entry, version

    def reference_problems(self, id_: str, version: int | None, loc: list[str | int]) -> list[_Problem]:
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
            _EntryState(
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

    def restored(self, states: list[_EntryState]) -> dict[str, _Entry[ContentT]]:
        """The entries ``states`` describe, not yet installed; raises ValueError if they are inconsistent."""
        entries: dict[str, _Entry[ContentT]] = {}
        for state in states:
            versions = {
                v.version: _Version(self._version_body.model_validate(v.content), v.seq, v.modified_on)
                for v in state.versions
            }
            if not versions or state.id in entries or state.next_version <= max(versions):
                raise ValueError(f"{self.kind} {state.id}: no versions, a repeated id, or a stale next_version")
            entries[state.id] = _Entry(state.id, state.name, state.created_on, state.next_version, versions)
        return entries

    # -- mechanics -----------------------------------------------------------------------------------

    def _settle(self, content: ContentT, name: str, previous: ContentT | None, now_s: float) -> ContentT | RestError:
        return content if self._prepare is None else self._prepare(content, name, previous, now_s)

    def _add_version(self, entry: _Entry[ContentT], content: ContentT, now_s: float) -> int:
        self._counter.seq += 1
        number = entry.next_version
        entry.versions[number] = _Version(content, self._counter.seq, _stamp(now_s))
        entry.next_version += 1
        return number

    def _rows(
        self, *, restrict: bool, name: str | None = None, id_: str | None = None
    ) -> list[tuple[_Entry[ContentT], int]]:
        found: list[tuple[int, _Entry[ContentT], int]] = []
        for entry in self.entries.values():
            if (name is not None and entry.name != name) or (id_ is not None and entry.id != id_):
                continue
            numbers = [entry.latest] if restrict else list(entry.versions)
            found.extend((entry.versions[number].seq, entry, number) for number in numbers)
        found.sort(key=lambda row: row[0], reverse=True)
        return [(entry, number) for _, entry, number in found]

    def _page(self, number: int, size: int, rows: list[tuple[_Entry[ContentT], int]]) -> PagedT | RestError:
        problems = _paging_problems(number, size)
        if problems:
            return _unprocessable(problems)
        shown = rows[number * size : (number + 1) * size]
        return self._paged(number, size, -(-len(rows) // size), [self._render(entry, v) for entry, v in shown])


def _paged_prompts(number: int, size: int, total: int, items: list[ReturnPrompt]) -> ReturnPagedPrompts:
    return ReturnPagedPrompts(page_number=number, page_size=size, total_pages=total, prompts_page=items)


def _paged_tools(number: int, size: int, total: int, items: list[ReturnUserDefinedTool]) -> ReturnPagedUserDefinedTools:
    return ReturnPagedUserDefinedTools(page_number=number, page_size=size, total_pages=total, tools_page=items)


def _paged_configs(number: int, size: int, total: int, items: list[ReturnConfig]) -> ReturnPagedConfigs:
    return ReturnPagedConfigs(page_number=number, page_size=size, total_pages=total, configs_page=items)


def _timeout(posted: PostedTimeoutSpec | None, default_s: int) -> ReturnTimeoutSpec:
    if posted is None:
        return ReturnTimeoutSpec(enabled=True, duration_secs=default_s)
    duration = posted.duration_secs if posted.duration_secs is not None else default_s
    return ReturnTimeoutSpec(enabled=posted.enabled, duration_secs=duration)


def _voice(posted: PostedVoice | None) -> ReturnVoice | None:
    if posted is None:
        return None
    provider = posted.provider or "CUSTOM_VOICE"  # §12.4: the spec's default provider
    if isinstance(posted, VoiceId):
        return ReturnVoice(id=posted.id, name=posted.id, provider=provider)
    made_up = str(uuid.uuid5(_VOICE_NAMESPACE, f"{provider}/{posted.name}"))
    return ReturnVoice(id=made_up, name=posted.name, provider=provider)


def _same_shape(model: type[ModelT], posted: EviRestBody | None) -> ModelT | None:
    return None if posted is None else model.model_validate(posted.to_dict())


# ---------------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------------


class RestStore:
    """EVI's REST resources in memory: ``store.prompts.create({...}, now_s=t)`` and so on (§12.5)."""

    def __init__(self, *, new_id: Callable[[], str] | None = None) -> None:
        self._counter = _Counter(new_id or (lambda: str(uuid.uuid4())))
        self.prompts: VersionedResources[PostedPromptVersion, ReturnPrompt, ReturnPagedPrompts] = VersionedResources(
            self._counter,
            "Prompt",
            (PostedPrompt, PostedPromptVersion, PostedPromptName, PatchedPromptVersionDescription),
            self._render_prompt,
            _paged_prompts,
        )
        """``/v0/evi/prompts``."""
        self.tools: VersionedResources[PostedUserDefinedToolVersion, ReturnUserDefinedTool, ReturnPagedUserDefinedTools]
        self.tools = VersionedResources(
            self._counter,
            "Tool",
            (PostedUserDefinedTool, PostedUserDefinedToolVersion, PostedUserDefinedToolName,
             PostedUserDefinedToolVersionDescription),
            self._render_tool,
            _paged_tools,
        )  # fmt: skip
        """``/v0/evi/tools``: user-defined (function) tools."""
        self.configs: VersionedResources[PostedConfigVersion, ReturnConfig, ReturnPagedConfigs] = VersionedResources(
            self._counter,
            "Config",
            (PostedConfig, PostedConfigVersion, PostedConfigName, PostedConfigVersionDescription),
            self._render_config,
            _paged_configs,
            self._resolve_config,
        )
        """``/v0/evi/configs``: their prompt and tools must exist (else 422); they are expanded when read."""

    def config(self, id_: str, version: int | None = None) -> ReturnConfig | None:
        """The config a chat asks for (``config_id``, ``config_version``): the latest when ``version`` is None."""
        found = self.configs.find(id_, version)
        return None if isinstance(found, RestError) else self._render_config(*found)

    # -- rendering -----------------------------------------------------------------------------------

    @staticmethod
    def _render_prompt(
        entry: _Entry[PostedPromptVersion],
        number: int,
        version_type: str = "FIXED",
        expansion: PromptExpansionSpec | None = None,
    ) -> ReturnPrompt:
        version = entry.versions[number]
        return ReturnPrompt(
            id=entry.id,
            version=number,
            version_type=version_type,
            name=entry.name,
            created_on=entry.created_on,
            modified_on=version.modified_on,
            text=version.content.text,
            version_description=version.content.version_description,
            prompt_expansion=expansion or version.content.prompt_expansion,
        )

    @staticmethod
    def _render_tool(
        entry: _Entry[PostedUserDefinedToolVersion], number: int, version_type: str = "FIXED"
    ) -> ReturnUserDefinedTool:
        version = entry.versions[number]
        return ReturnUserDefinedTool(
            tool_type="FUNCTION",
            id=entry.id,
            version=number,
            version_type=version_type,
            name=entry.name,
            created_on=entry.created_on,
            modified_on=version.modified_on,
            parameters=version.content.parameters,
            version_description=version.content.version_description,
            fallback_content=version.content.fallback_content,
            description=version.content.description,
        )

    def _config_prompt(self, ref: PostedConfigPrompt | None) -> ReturnPrompt | None:
        if ref is None or ref.id is None:
            return None
        found = self.prompts.find(ref.id, ref.version)
        if isinstance(found, RestError):
            return None
        kind = "LATEST" if ref.version is None else "FIXED"
        return self._render_prompt(*found, version_type=kind, expansion=ref.prompt_expansion)

    def _config_tools(self, config: PostedConfigVersion) -> list[ReturnUserDefinedTool] | None:
        if config.tools is None:
            return None
        tools = []
        for ref in config.tools:
            found = self.tools.find(ref.id, ref.version)
            if not isinstance(found, RestError):
                tools.append(self._render_tool(*found, "LATEST" if ref.version is None else "FIXED"))
        return tools

    def _render_config(self, entry: _Entry[PostedConfigVersion], number: int) -> ReturnConfig:
        version = entry.versions[number]
        c = version.content
        nudges = None
        if c.nudges is not None:  # §12.5: posting nudges without ``enabled`` turns them on
            nudges = ReturnNudgeSpec(enabled=c.nudges.enabled is not False, interval_secs=c.nudges.interval_secs)
        builtin = None
        if c.builtin_tools is not None:
            builtin = [ReturnBuiltinTool(name=t.name, tool_type="BUILTIN", fallback_content=t.fallback_content)
                       for t in c.builtin_tools]  # fmt: skip
        return ReturnConfig(
            id=entry.id,
            version=number,
            name=entry.name,
            created_on=entry.created_on,
            modified_on=version.modified_on,
            evi_version=c.evi_version,
            version_description=c.version_description,
            prompt=self._config_prompt(c.prompt),
            voice=_voice(c.voice),
            language_model=_same_shape(ReturnLanguageModel, c.language_model),
            ellm_model=ReturnEllmModel(allow_short_responses=bool(c.ellm_model and c.ellm_model.allow_short_responses)),
            tools=self._config_tools(c),
            builtin_tools=builtin,
            event_messages=_same_shape(ReturnEventMessageSpecs, c.event_messages),
            timeouts=ReturnTimeoutSpecs(
                inactivity=_timeout(c.timeouts.inactivity if c.timeouts else None, DEFAULT_INACTIVITY_S),
                max_duration=_timeout(c.timeouts.max_duration if c.timeouts else None, DEFAULT_MAX_DURATION_S),
            ),
            turn_detection=_same_shape(ReturnTurnDetectionSpec, c.turn_detection),
            interruption=_same_shape(ReturnInterruptionSpec, c.interruption),
            nudges=nudges,
            webhooks=None
            if c.webhooks is None
            else [ReturnWebhookSpec.model_validate(w.to_dict()) for w in c.webhooks],
        )

    def _resolve_config(
        self, content: PostedConfigVersion, name: str, previous: PostedConfigVersion | None, now_s: float
    ) -> PostedConfigVersion | RestError:
        """Check what the config refers to (422 if anything is missing), then settle what it leaves open."""
        problems: list[_Problem] = []
        if content.evi_version not in SUPPORTED_EVI_VERSIONS:
            allowed = " or ".join(repr(v) for v in sorted(SUPPORTED_EVI_VERSIONS))
            problems.append((["body", "evi_version"], f"Only EVI versions {allowed} are supported", "value_error"))
        prompt = content.prompt
        if prompt is not None and (prompt.id is None) == (prompt.text is None):
            problems.append((["body", "prompt"], "Give the prompt either by id or as text", "value_error"))
        elif prompt is not None and prompt.id is not None:
            problems += self.prompts.reference_problems(prompt.id, prompt.version, ["body", "prompt"])
        for index, tool in enumerate(content.tools or ()):
            problems += self.tools.reference_problems(tool.id, tool.version, ["body", "tools", index])
        if problems:
            return _unprocessable(problems)
        if prompt is not None and prompt.text is not None:  # §12.4: text makes a new prompt, pinned at version 0
            made = self.prompts.create({"name": name, "text": prompt.text}, now_s=now_s)
            assert isinstance(made, ReturnPrompt)
            prompt = PostedConfigPrompt(id=made.id, version=0, prompt_expansion=prompt.prompt_expansion)
        # §12.4: allow_short_responses is off for a new config and inherited by a new version.
        posted = content.ellm_model.allow_short_responses if content.ellm_model else None
        inherited = previous.ellm_model.allow_short_responses if previous and previous.ellm_model else None
        short = next((value for value in (posted, inherited) if value is not None), False)
        return content.model_copy(update={"prompt": prompt, "ellm_model": PostedEllmModel(allow_short_responses=short)})

    # -- persistence (§12.5) -------------------------------------------------------------------------

    def export(self) -> dict[str, Any]:
        """The whole state as JSON-compatible data, for ``restore``."""
        return {
            "format": 1,
            "seq": self._counter.seq,
            "prompts": self.prompts.export(),
            "tools": self.tools.export(),
            "configs": self.configs.export(),
        }

    def restore(self, state: object) -> None:
        """Replace the whole state with one from ``export``; raises ValueError (changing nothing) if it is bad."""
        parsed = _StoreState.model_validate(state)
        prompts = self.prompts.restored(parsed.prompts)
        tools = self.tools.restored(parsed.tools)
        configs = self.configs.restored(parsed.configs)
        seqs = [v.seq for es in (prompts, tools, configs) for e in es.values() for v in e.versions.values()]
        if any(seq > parsed.seq for seq in seqs):
            raise ValueError("state 'seq' is behind the versions it holds")
        self.prompts.entries, self.tools.entries, self.configs.entries = prompts, tools, configs
        self._counter.seq = parsed.seq
