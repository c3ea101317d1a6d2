"""The simulator's EVI REST API state: configs, prompts and tools, each versioned (evi-protocol.md §12.5).

Pure: no I/O, no clock (every change takes ``now_s``, seconds since the epoch), ids from a factory that can be
swapped for a deterministic one. ``RestStore`` holds three kinds, ``prompts``, ``tools`` and ``configs``, each
a :class:`~gateway.simulator.evi_rest_versions.VersionedResources` offering the spec's nine operations of
``/v0/evi/<kind>s`` as methods that return the returned model (or ``None`` where the spec's answer is an empty
body) or a :class:`RestError` value; nothing raises for a client's mistake. This module renders each kind's
returned models, checks and settles what a config refers to, and keeps the whole state. An HTTP layer answers
a successful ``create``/``create_version`` with 201 and any other success with 200. ``RestStore.config`` is
the lookup a chat uses, and ``export``/``restore`` carry the whole state as JSON-compatible data.

Behaviour (§12.1–§12.5): a new resource is version 0 and each new version takes the next number, never
reused after a delete; a name belongs to every version; lists are newest first; ``restrict_to_most_recent``
(default true) keeps only the latest version of each resource; unknown ids and versions are 404; a bad body
or query is 422 with the spec's ``detail`` list. Names need not be unique, as the spec sets no such rule.
A config refers to prompts and tools by id and optional version (none: the newest, ``LATEST``), and those
are expanded when it is read; a reference to something deleted since is left out of the expansion.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from gateway.simulator.evi_rest_versions import (
    Entry,
    EntryState,
    Problem,
    RestError,
    StoreCounter,
    VersionedResources,
    unprocessable,
)
from gateway.wire.evi_rest import (
    EviRestBody,
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

ModelT = TypeVar("ModelT", bound=BaseModel)


class _StoreState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal[1]
    seq: int
    prompts: list[EntryState]
    tools: list[EntryState]
    configs: list[EntryState]


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
        self._counter = StoreCounter(new_id or (lambda: str(uuid.uuid4())))
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
        entry: Entry[PostedPromptVersion],
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
        entry: Entry[PostedUserDefinedToolVersion], number: int, version_type: str = "FIXED"
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

    def _render_config(self, entry: Entry[PostedConfigVersion], number: int) -> ReturnConfig:
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
        problems: list[Problem] = []
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
            return unprocessable(problems)
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
