"""Hume EVI REST API: configs, posted and returned (evi-protocol.md §12.4).

Owns: pydantic models of ``/v0/evi/configs`` bodies: the posted config and its parts (references to a
prompt and to tools by id and optional version, the voice, language models, built-in tools, event messages,
timeouts, turn detection, interruption, nudges, webhooks), a new version, a rename and a version
description; and the returned config, with its prompt and tools expanded, plus the paged list (§12.2).

Same conventions as ``gateway.wire.evi_rest`` (§12.1): posted bodies forbid unknown fields and enforce the
value ranges the spec documents; returned ones keep unknown fields and take open enums as strings. Only
the enums the spec closes in a posted body (voice provider, built-in tool name, webhook event) are literals.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

from pydantic import ConfigDict, Field

from gateway.wire.evi_messages import EviModel
from gateway.wire.evi_rest import EviRestBody, PromptExpansionSpec, ReturnPrompt, ReturnUserDefinedTool

__all__ = [
    "SUPPORTED_EVI_VERSIONS",
    "PostedBuiltinTool",
    "PostedConfig",
    "PostedConfigName",
    "PostedConfigPrompt",
    "PostedConfigVersion",
    "PostedConfigVersionDescription",
    "PostedEllmModel",
    "PostedEventMessageSpec",
    "PostedEventMessageSpecs",
    "PostedInterruptionSpec",
    "PostedLanguageModel",
    "PostedNudgeSpec",
    "PostedTimeoutSpec",
    "PostedTimeoutSpecs",
    "PostedTurnDetectionSpec",
    "PostedUserDefinedToolSpec",
    "PostedVoice",
    "PostedWebhookSpec",
    "ReturnBuiltinTool",
    "ReturnConfig",
    "ReturnEllmModel",
    "ReturnEventMessageSpec",
    "ReturnEventMessageSpecs",
    "ReturnInterruptionSpec",
    "ReturnLanguageModel",
    "ReturnNudgeSpec",
    "ReturnPagedConfigs",
    "ReturnTimeoutSpec",
    "ReturnTimeoutSpecs",
    "ReturnTurnDetectionSpec",
    "ReturnVoice",
    "ReturnWebhookSpec",
    "VoiceId",
    "VoiceName",
    "VoiceProvider",
    "WebhookEvent",
]

# §12.4: the spec accepts only these ``evi_version`` values for a new config or version.
SUPPORTED_EVI_VERSIONS: frozenset[str] = frozenset({"3", "4-mini"})

VoiceProvider: TypeAlias = Literal["HUME_AI", "CUSTOM_VOICE"]
WebhookEvent: TypeAlias = Literal["chat_started", "chat_ended", "tool_call"]

# ---------------------------------------------------------------------------------------------------
# Posted parts (§12.4)
# ---------------------------------------------------------------------------------------------------


class PostedConfigPrompt(EviRestBody):
    """§12.4 the config's prompt: an existing one by ``id`` (``version`` omitted: follow the newest), or
    ``text`` for a new one."""

    id: str | None = None
    version: int | None = None
    text: str | None = None
    prompt_expansion: PromptExpansionSpec | None = None


class PostedUserDefinedToolSpec(EviRestBody):
    """§12.4 one tool of the config by ``id``; ``version`` omitted means the newest."""

    id: str
    version: int | None = None


class PostedBuiltinTool(EviRestBody):
    """§12.4 a built-in tool to enable (evi-protocol.md §6)."""

    name: Literal["web_search", "hang_up"]
    fallback_content: str | None = None


class VoiceId(EviRestBody):
    """§12.4 a voice by id; with no provider EVI assumes ``CUSTOM_VOICE``."""

    id: str
    provider: VoiceProvider | None = None


class VoiceName(EviRestBody):
    """§12.4 a voice by name; Voice Library voices need ``provider`` ``HUME_AI``."""

    name: str
    provider: VoiceProvider | None = None


PostedVoice: TypeAlias = VoiceId | VoiceName


class PostedLanguageModel(EviRestBody):
    """§12.4 the supplemental LLM; provider and model are open sets, ``temperature`` is 0–1."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model_provider: str | None = None
    model_resource: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)


class PostedEllmModel(EviRestBody):
    """§12.4 Hume's eLLM; ``allow_short_responses`` omitted: off for a new config, inherited by a new version."""

    allow_short_responses: bool | None = None


class PostedEventMessageSpec(EviRestBody):
    """§12.4 one event message; ``text`` omitted lets EVI write its own."""

    enabled: bool
    text: str | None = None


class PostedEventMessageSpecs(EviRestBody):
    """§12.4 what EVI says when a chat starts, before an inactivity close and at the duration limit."""

    on_new_chat: PostedEventMessageSpec | None = None
    on_inactivity_timeout: PostedEventMessageSpec | None = None
    on_max_duration_timeout: PostedEventMessageSpec | None = None


class PostedTimeoutSpec(EviRestBody):
    """§12.4 one timeout; Hume documents 30–1800 s (evi-protocol.md §8)."""

    enabled: bool
    duration_secs: int | None = Field(default=None, ge=30, le=1800)


class PostedTimeoutSpecs(EviRestBody):
    """§12.4 the user-inactivity and chat-duration timeouts (evi-protocol.md §8)."""

    inactivity: PostedTimeoutSpec | None = None
    max_duration: PostedTimeoutSpec | None = None


class PostedTurnDetectionSpec(EviRestBody):
    """§12.4 end-of-turn detection, in the ranges the spec gives."""

    end_of_turn_silence_ms: int | None = Field(default=None, ge=500, le=3000)
    prefix_padding_ms: int | None = Field(default=None, ge=0, le=1000)
    speech_detection_threshold: float | None = Field(default=None, ge=0.0, le=1.0)


class PostedInterruptionSpec(EviRestBody):
    """§12.4 how long the user must talk over EVI before it yields (50–2000 ms; evi-protocol.md §5)."""

    min_interruption_ms: int | None = Field(default=None, ge=50, le=2000)


class PostedNudgeSpec(EviRestBody):
    """§12.4 nudging a silent user to speak after ``interval_secs``."""

    enabled: bool | None = None
    interval_secs: int | None = None


class PostedWebhookSpec(EviRestBody):
    """§12.4 a webhook subscriber: its URL and the events it wants."""

    url: str
    events: list[WebhookEvent]


class PostedConfigVersion(EviRestBody):
    """§12.4 ``POST /v0/evi/configs/{id}``: the next version of a config, complete; the name is kept."""

    evi_version: str
    version_description: str | None = None
    prompt: PostedConfigPrompt | None = None
    voice: PostedVoice | None = None
    language_model: PostedLanguageModel | None = None
    ellm_model: PostedEllmModel | None = None
    tools: list[PostedUserDefinedToolSpec] | None = None
    builtin_tools: list[PostedBuiltinTool] | None = None
    event_messages: PostedEventMessageSpecs | None = None
    timeouts: PostedTimeoutSpecs | None = None
    turn_detection: PostedTurnDetectionSpec | None = None
    interruption: PostedInterruptionSpec | None = None
    nudges: PostedNudgeSpec | None = None
    webhooks: list[PostedWebhookSpec] | None = None


class PostedConfig(PostedConfigVersion):
    """§12.4 ``POST /v0/evi/configs``: a new config, created as version 0."""

    name: str


class PostedConfigName(EviRestBody):
    """§12.4 ``PATCH /v0/evi/configs/{id}``: a new name for every version."""

    name: str


class PostedConfigVersionDescription(EviRestBody):
    """§12.4 ``PATCH /v0/evi/configs/{id}/version/{version}``: that version's description."""

    version_description: str | None = None


# ---------------------------------------------------------------------------------------------------
# Returned parts (§12.4)
# ---------------------------------------------------------------------------------------------------


class ReturnVoice(EviModel):
    """§12.4 the config's voice, always with both ``id`` and ``name``."""

    id: str
    name: str
    provider: str
    compatible_octave_models: list[str] | None = None


class ReturnBuiltinTool(EviModel):
    """§12.4 an enabled built-in tool; ``tool_type`` is ``BUILTIN``."""

    name: str
    tool_type: str
    fallback_content: str | None = None


class ReturnLanguageModel(EviModel):
    """§12.4 the supplemental LLM."""

    model_config = ConfigDict(extra="allow", frozen=True, protected_namespaces=())

    model_provider: str | None = None
    model_resource: str | None = None
    temperature: float | None = None


class ReturnEllmModel(EviModel):
    """§12.4 the eLLM setting, always resolved."""

    allow_short_responses: bool


class ReturnEventMessageSpec(EviModel):
    """§12.4 one event message."""

    enabled: bool
    text: str | None = None


class ReturnEventMessageSpecs(EviModel):
    """§12.4 the event messages that were set."""

    on_new_chat: ReturnEventMessageSpec | None = None
    on_inactivity_timeout: ReturnEventMessageSpec | None = None
    on_max_duration_timeout: ReturnEventMessageSpec | None = None


class ReturnTimeoutSpec(EviModel):
    """§12.4 one timeout."""

    enabled: bool
    duration_secs: int | None = None


class ReturnTimeoutSpecs(EviModel):
    """§12.4 both timeouts; the spec requires both whenever ``timeouts`` is returned."""

    inactivity: ReturnTimeoutSpec
    max_duration: ReturnTimeoutSpec


class ReturnTurnDetectionSpec(EviModel):
    """§12.4 end-of-turn detection."""

    end_of_turn_silence_ms: int | None = None
    prefix_padding_ms: int | None = None
    speech_detection_threshold: float | None = None


class ReturnInterruptionSpec(EviModel):
    """§12.4 interruption sensitivity."""

    min_interruption_ms: int | None = None


class ReturnNudgeSpec(EviModel):
    """§12.4 nudges."""

    enabled: bool
    interval_secs: int | None = None


class ReturnWebhookSpec(EviModel):
    """§12.4 a webhook subscriber."""

    url: str
    events: list[str]


class ReturnConfig(EviModel):
    """§12.4 one config version, its prompt and tools expanded to the versions in use.

    The spec marks no field required; every config has an id, version, name and times, so those are
    required here, and everything else is optional.
    """

    id: str
    version: int
    name: str
    created_on: int
    modified_on: int
    evi_version: str | None = None
    version_description: str | None = None
    prompt: ReturnPrompt | None = None
    voice: ReturnVoice | None = None
    language_model: ReturnLanguageModel | None = None
    ellm_model: ReturnEllmModel | None = None
    tools: list[ReturnUserDefinedTool] | None = None
    builtin_tools: list[ReturnBuiltinTool] | None = None
    event_messages: ReturnEventMessageSpecs | None = None
    timeouts: ReturnTimeoutSpecs | None = None
    turn_detection: ReturnTurnDetectionSpec | None = None
    interruption: ReturnInterruptionSpec | None = None
    nudges: ReturnNudgeSpec | None = None
    webhooks: list[ReturnWebhookSpec] | None = None


class ReturnPagedConfigs(EviModel):
    """§12.2 one page of config versions; the spec requires only ``total_pages``."""

    total_pages: int
    page_number: int | None = None
    page_size: int | None = None
    configs_page: list[ReturnConfig] | None = None
