"""EVI REST models (evi-protocol.md §12), held up against the official ``hume`` SDK (evi-protocol.md §10).

Three oracles: every returned model the store produces parses as the SDK's type with nothing left over
and nothing changed; every posted body we build is byte-for-byte what the SDK's client sends for the same
arguments; and the SDK's client, pointed at the store, runs every operation (so what the SDK sends fits
our strict posted models, and what the store answers fits the SDK).
"""

from __future__ import annotations

import itertools
import json
import typing
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pydantic
import pytest
from hume import HumeClient
from hume.core.api_error import ApiError
from hume.empathic_voice import types as sdk
from hume.empathic_voice.configs import types as sdk_configs

from gateway.simulator.evi_rest_store import RestError, RestStore, VersionedResources
from gateway.testing import undeclared_fields
from gateway.wire import evi_rest as rest
from gateway.wire import evi_rest_configs as cfg
from gateway.wire.evi_messages import EviModel

# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------

T0 = 1_700_000_000
SCHEMA = json.dumps({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})


def _ids() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"00000000-0000-4000-8000-{next(counter):012d}"


def _uuid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def _ok(result: Any) -> Any:
    assert not isinstance(result, RestError), result.message
    return result


FULL_CONFIG: dict[str, Any] = {
    "name": "phone agent",
    "evi_version": "3",
    "version_description": "first cut",
    "prompt": {"id": _uuid(0), "version": 1, "prompt_expansion": {"enabled": False}},
    "voice": {"name": "Ito", "provider": "HUME_AI"},
    "language_model": {"model_provider": "ANTHROPIC", "model_resource": "claude-sonnet-4-20250514", "temperature": 0.4},
    "ellm_model": {"allow_short_responses": True},
    "tools": [{"id": _uuid(1), "version": 0}, {"id": _uuid(1)}],
    "builtin_tools": [{"name": "hang_up", "fallback_content": "Goodbye."}, {"name": "web_search"}],
    "event_messages": {
        "on_new_chat": {"enabled": True, "text": "Hello, how can I help?"},
        "on_inactivity_timeout": {"enabled": True},
        "on_max_duration_timeout": {"enabled": False, "text": "Time is up."},
    },
    "timeouts": {"inactivity": {"enabled": True, "duration_secs": 60}, "max_duration": {"enabled": True}},
    "turn_detection": {"end_of_turn_silence_ms": 700, "prefix_padding_ms": 200, "speech_detection_threshold": 0.5},
    "interruption": {"min_interruption_ms": 300},
    "nudges": {"enabled": True, "interval_secs": 8},
    "webhooks": [{"url": "https://hooks.example/evi", "events": ["chat_started", "chat_ended", "tool_call"]}],
}


def _store() -> RestStore:
    """Prompt ``_uuid(0)`` (versions 0, 1), tool ``_uuid(1)`` (versions 0, 1), config ``_uuid(2)`` (0, 1)."""
    store = RestStore(new_id=_ids())
    prompt = _ok(store.prompts.create({"name": "agent", "text": "You answer the phone."}, now_s=T0))
    _ok(store.prompts.create_version(prompt.id, {"text": "Be brief.", "version_description": "v1"}, now_s=T0 + 1))
    tool = _ok(store.tools.create({"name": "weather", "parameters": SCHEMA, "description": "Weather"}, now_s=T0 + 2))
    _ok(store.tools.create_version(tool.id, {"parameters": SCHEMA, "fallback_content": "Unknown"}, now_s=T0 + 3))
    config = _ok(store.configs.create(FULL_CONFIG, now_s=T0 + 4))
    _ok(store.configs.create_version(config.id, {"evi_version": "3", "prompt": {"text": "New."}}, now_s=T0 + 5))
    return store


def _returned_cases() -> Iterator[tuple[str, EviModel, type[pydantic.BaseModel]]]:
    store = _store()
    p, t, c = _uuid(0), _uuid(1), _uuid(2)
    yield "prompt", _ok(store.prompts.get_version(p, 1)), sdk.ReturnPrompt
    yield (
        "prompt described",
        _ok(store.prompts.update_description(p, 0, {"version_description": "d"}, now_s=T0)),
        (sdk.ReturnPrompt),
    )
    yield "prompts page", _ok(store.prompts.list_page(restrict_to_most_recent=False)), sdk.ReturnPagedPrompts
    yield "prompt versions", _ok(store.prompts.list_versions(p, restrict_to_most_recent=False)), sdk.ReturnPagedPrompts
    yield "tool", _ok(store.tools.get_version(t, 0)), sdk.ReturnUserDefinedTool
    yield "tool fallback", _ok(store.tools.get_version(t, 1)), sdk.ReturnUserDefinedTool
    yield "tools page", _ok(store.tools.list_page(restrict_to_most_recent=False)), sdk.ReturnPagedUserDefinedTools
    yield "tool versions", _ok(store.tools.list_versions(t)), sdk.ReturnPagedUserDefinedTools
    yield "config, every field", _ok(store.configs.get_version(c, 0)), sdk.ReturnConfig
    yield "config, prompt from text", _ok(store.configs.get_version(c, 1)), sdk.ReturnConfig
    yield "configs page", _ok(store.configs.list_page(restrict_to_most_recent=False)), sdk.ReturnPagedConfigs
    yield "config versions", _ok(store.configs.list_versions(c, page_size=1)), sdk.ReturnPagedConfigs
    bad = store.configs.create({"name": "x", "evi_version": "3", "tools": [{"version": 1}]}, now_s=T0)
    assert isinstance(bad, RestError)
    yield "422 body", rest.HttpValidationError.model_validate(bad.to_dict()), sdk.HttpValidationError


RETURNED_CASES = list(_returned_cases())


# ---------------------------------------------------------------------------------------------------
# Returned models → SDK types
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("label", "ours", "theirs"), RETURNED_CASES, ids=[c[0] for c in RETURNED_CASES])
def test_every_returned_model_parses_as_the_sdk_type_unchanged(
    label: str, ours: EviModel, theirs: type[pydantic.BaseModel]
) -> None:
    """What the store returns parses as the SDK's type, keeps no unknown field and dumps back the same."""
    wire = json.loads(ours.to_json())
    parsed = theirs.model_validate(wire)
    assert undeclared_fields(parsed) == []
    assert parsed.model_dump(mode="json", exclude_none=True) == wire


@pytest.mark.parametrize(("label", "ours", "theirs"), RETURNED_CASES, ids=[c[0] for c in RETURNED_CASES])
def test_every_returned_model_round_trips_through_json(
    label: str, ours: EviModel, theirs: type[pydantic.BaseModel]
) -> None:
    """Our own parse of our JSON gives back an equal model."""
    assert type(ours).model_validate_json(ours.to_json()) == ours


def test_the_full_config_leaves_nothing_out() -> None:
    """The every-field config case really sets every field the SDK's ReturnConfig declares."""
    config = next(ours for label, ours, _ in RETURNED_CASES if label == "config, every field")
    assert isinstance(config, cfg.ReturnConfig)
    assert set(config.to_dict()) == set(sdk.ReturnConfig.model_fields)


def test_the_extras_check_catches_a_misspelt_field() -> None:
    """The SDK accepts ``fallback_contents`` silently; only the extras check notices it."""
    tool = _ok(_store().tools.get_version(_uuid(1), 1)).to_dict()
    tool["fallback_contents"] = tool.pop("fallback_content")
    parsed = sdk.ReturnUserDefinedTool.model_validate(tool)
    assert undeclared_fields(parsed) == ["<root>: ['fallback_contents']"]


# Our model and the SDK's for the same schema: they must declare the same fields, nested ones included.
FIELD_PAIRS: list[tuple[type[pydantic.BaseModel], type[pydantic.BaseModel]]] = [
    (rest.ReturnPrompt, sdk.ReturnPrompt),
    (rest.ReturnPagedPrompts, sdk.ReturnPagedPrompts),
    (rest.ReturnUserDefinedTool, sdk.ReturnUserDefinedTool),
    (rest.ReturnPagedUserDefinedTools, sdk.ReturnPagedUserDefinedTools),
    (rest.PromptExpansionSpec, sdk.PromptExpansionSpec),
    (rest.HttpValidationError, sdk.HttpValidationError),
    (rest.ValidationErrorItem, sdk.ValidationError),
    (cfg.ReturnConfig, sdk.ReturnConfig),
    (cfg.ReturnPagedConfigs, sdk.ReturnPagedConfigs),
    (cfg.ReturnVoice, sdk.ReturnVoice),
    (cfg.ReturnBuiltinTool, sdk.ReturnBuiltinTool),
    (cfg.ReturnLanguageModel, sdk.ReturnLanguageModel),
    (cfg.ReturnEllmModel, sdk.ReturnEllmModel),
    (cfg.ReturnEventMessageSpec, sdk.ReturnEventMessageSpec),
    (cfg.ReturnEventMessageSpecs, sdk.ReturnEventMessageSpecs),
    (cfg.ReturnTimeoutSpec, sdk.ReturnTimeoutSpec),
    (cfg.ReturnTimeoutSpecs, sdk.ReturnTimeoutSpecs),
    (cfg.ReturnTurnDetectionSpec, sdk.ReturnTurnDetectionSpec),
    (cfg.ReturnInterruptionSpec, sdk.ReturnInterruptionSpec),
    (cfg.ReturnNudgeSpec, sdk.ReturnNudgeSpec),
    (cfg.ReturnWebhookSpec, sdk.ReturnWebhookSpec),
    (cfg.PostedConfigPrompt, sdk_configs.PostedConfigPrompt),
    (cfg.PostedUserDefinedToolSpec, sdk.PostedUserDefinedToolSpec),
    (cfg.PostedBuiltinTool, sdk.PostedBuiltinTool),
    (cfg.VoiceId, sdk.VoiceId),
    (cfg.VoiceName, sdk.VoiceName),
    (cfg.PostedLanguageModel, sdk_configs.PostedConfigLanguageModel),
    (cfg.PostedEllmModel, sdk_configs.PostedConfigEllmModel),
    (cfg.PostedEventMessageSpec, sdk.PostedEventMessageSpec),
    (cfg.PostedEventMessageSpecs, sdk_configs.PostedConfigEventMessages),
    (cfg.PostedTimeoutSpec, sdk.PostedTimeoutSpec),
    (cfg.PostedTimeoutSpecs, sdk_configs.PostedConfigTimeouts),
    (cfg.PostedTurnDetectionSpec, sdk.PostedTurnDetectionSpec),
    (cfg.PostedInterruptionSpec, sdk.PostedInterruptionSpec),
    (cfg.PostedNudgeSpec, sdk_configs.PostedConfigNudges),
    (cfg.PostedWebhookSpec, sdk.PostedWebhookSpec),
]


@pytest.mark.parametrize(("ours", "theirs"), FIELD_PAIRS, ids=[o.__name__ for o, _ in FIELD_PAIRS])
def test_each_model_declares_exactly_the_sdk_fields(ours: type[pydantic.BaseModel], theirs: type[Any]) -> None:
    """No field missing, none invented: our model and the SDK's declare the same names."""
    assert set(ours.model_fields) == set(theirs.model_fields)


# ---------------------------------------------------------------------------------------------------
# Posted bodies → what the SDK sends
# ---------------------------------------------------------------------------------------------------


class StoreTransport:
    """An httpx transport answering the SDK's REST calls from a RestStore (the HTTP mapping of §12.1)."""

    def __init__(self, store: RestStore) -> None:
        self.store = store
        self.bodies: list[Any] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")
        assert parts[:2] == ["v0", "evi"], parts
        kind: VersionedResources[Any, Any, Any] = getattr(self.store, parts[2])
        body = json.loads(request.content) if request.content else None
        self.bodies.append(body)
        query = request.url.params
        paging: dict[str, Any] = {
            "page_number": int(query.get("page_number", 0)),
            "page_size": int(query.get("page_size", rest.DEFAULT_PAGE_SIZE)),
            "restrict_to_most_recent": query.get("restrict_to_most_recent", "true") == "true",
        }
        route = (request.method, len(parts))
        result: Any
        if route == ("POST", 3):
            result = kind.create(body, now_s=T0 + 10)
        elif route == ("GET", 3):
            result = kind.list_page(name=query.get("name"), **paging)
        elif route == ("GET", 4):
            result = kind.list_versions(parts[3], **paging)
        elif route == ("POST", 4):
            result = kind.create_version(parts[3], body, now_s=T0 + 10)
        elif route == ("PATCH", 4):
            result = kind.update_name(parts[3], body, now_s=T0 + 10)
        elif route == ("DELETE", 4):
            result = kind.delete(parts[3])
        elif route == ("GET", 6):
            result = kind.get_version(parts[3], int(parts[5]))
        elif route == ("PATCH", 6):
            result = kind.update_description(parts[3], int(parts[5]), body, now_s=T0 + 10)
        else:
            assert route == ("DELETE", 6), route
            result = kind.delete_version(parts[3], int(parts[5]))
        if isinstance(result, RestError):
            return httpx.Response(result.status, json=result.to_dict())
        if result is None:
            return httpx.Response(200)
        return httpx.Response(201 if request.method == "POST" else 200, json=result.to_dict())


def _client(store: RestStore) -> tuple[HumeClient, StoreTransport]:
    transport = StoreTransport(store)
    http = httpx.Client(transport=httpx.MockTransport(transport))
    return HumeClient(api_key="test-key", base_url="https://evi.test", httpx_client=http), transport


def _sdk_kwargs(method: Callable[..., Any], body: dict[str, Any]) -> dict[str, Any]:
    """``body``'s fields as the SDK method's keyword arguments, each parsed into the SDK's declared type."""
    hints = typing.get_type_hints(method)
    return {name: pydantic.TypeAdapter(hints[name]).validate_python(value) for name, value in body.items()}


POSTED_CASES: list[tuple[str, EviModel, str, str, tuple[Any, ...]]] = [
    ("prompt", rest.PostedPrompt(name="agent", text="Hi", version_description="d",
                                 prompt_expansion=rest.PromptExpansionSpec(enabled=False)),
     "prompts", "create_prompt", ()),
    ("prompt, bare", rest.PostedPrompt(name="agent", text="Hi"), "prompts", "create_prompt", ()),
    ("prompt version", rest.PostedPromptVersion(text="Hi again", version_description="d"),
     "prompts", "create_prompt_version", (_uuid(0),)),
    ("prompt name", rest.PostedPromptName(name="renamed"), "prompts", "update_prompt_name", (_uuid(0),)),
    ("prompt description", rest.PatchedPromptVersionDescription(version_description="note"),
     "prompts", "update_prompt_description", (_uuid(0), 0)),
    ("tool", rest.PostedUserDefinedTool(name="weather", parameters=SCHEMA, description="d", fallback_content="f",
                                        version_description="v"), "tools", "create_tool", ()),
    ("tool version", rest.PostedUserDefinedToolVersion(parameters=SCHEMA, description="d2"),
     "tools", "create_tool_version", (_uuid(1),)),
    ("tool name", rest.PostedUserDefinedToolName(name="forecast"), "tools", "update_tool_name", (_uuid(1),)),
    ("tool description", rest.PostedUserDefinedToolVersionDescription(version_description="x"),
     "tools", "update_tool_description", (_uuid(1), 1)),
    ("config, every field", cfg.PostedConfig.model_validate(FULL_CONFIG), "configs", "create_config", ()),
    ("config, voice by id", cfg.PostedConfig(name="c", evi_version="4-mini", voice=cfg.VoiceId(id="v-1")),
     "configs", "create_config", ()),
    ("config version", cfg.PostedConfigVersion.model_validate({k: v for k, v in FULL_CONFIG.items() if k != "name"}),
     "configs", "create_config_version", (_uuid(2),)),
    ("config name", cfg.PostedConfigName(name="renamed"), "configs", "update_config_name", (_uuid(2),)),
    ("config description", cfg.PostedConfigVersionDescription(version_description="y"),
     "configs", "update_config_description", (_uuid(2), 0)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("label", "body", "resource", "method", "args"), POSTED_CASES, ids=[c[0] for c in POSTED_CASES]
)
def test_posted_bodies_are_what_the_sdk_sends(
    label: str, body: EviModel, resource: str, method: str, args: tuple[Any, ...]
) -> None:
    """The SDK, given our body's fields as its arguments, accepts every one and sends exactly our JSON."""
    client, transport = _client(_store())
    call = getattr(getattr(client.empathic_voice, resource), method)
    call(*args, **_sdk_kwargs(call, body.to_dict()))
    assert transport.bodies == [body.to_dict()]


def test_a_field_the_sdk_does_not_know_fails_the_comparison() -> None:
    """The posted-body oracle is not blind: a field name the SDK lacks is refused by its method."""
    client, _ = _client(_store())
    call = client.empathic_voice.prompts.create_prompt
    with pytest.raises(KeyError):
        _sdk_kwargs(call, {"name": "a", "text": "b", "prompt_text": "c"})


# ---------------------------------------------------------------------------------------------------
# The SDK's client against the store
# ---------------------------------------------------------------------------------------------------


def test_the_sdk_client_manages_prompts_through_the_store() -> None:
    """Create, version, list (every page), fetch, describe, rename and delete a prompt with the SDK's client."""
    client, transport = _client(RestStore(new_id=_ids()))
    prompts = client.empathic_voice.prompts
    made = prompts.create_prompt(name="agent", text="v0")
    assert made is not None and made.version == 0
    for n in range(1, 5):
        prompts.create_prompt_version(made.id, text=f"v{n}")
    pages = [
        prompts.list_prompt_versions(made.id, page_number=n, page_size=2, restrict_to_most_recent=False)
        for n in range(4)
    ]
    assert [[p.version for p in page.prompts_page if p] for page in pages] == [[4, 3], [2, 1], [0], []]
    assert {page.total_pages for page in pages} == {3}
    assert all(undeclared_fields(page) == [] for page in pages)
    fetched = prompts.get_prompt_version(made.id, 2)
    assert fetched is not None and fetched.text == "v2"
    described = prompts.update_prompt_description(made.id, 2, version_description="kept")
    assert described is not None and described.version_description == "kept"
    prompts.update_prompt_name(made.id, name="renamed")
    assert [p.name for p in prompts.list_prompts()] == ["renamed"]
    prompts.delete_prompt_version(made.id, 4)
    prompts.delete_prompt(made.id)
    assert list(prompts.list_prompts()) == []
    assert {"name": "renamed"} in transport.bodies  # the store accepted every body the SDK sent


def test_the_sdk_client_manages_tools_and_configs_through_the_store() -> None:
    """A tool and a config referring to it, made and read back with the SDK's client; nothing unknown comes back."""
    client, _ = _client(RestStore(new_id=_ids()))
    ev = client.empathic_voice
    tool = ev.tools.create_tool(name="weather", parameters=SCHEMA, fallback_content="No forecast")
    assert tool is not None
    prompt = ev.prompts.create_prompt(name="agent", text="Answer calls.")
    assert prompt is not None
    made = ev.configs.create_config(
        name="line 1",
        evi_version="3",
        prompt=sdk_configs.PostedConfigPrompt(id=prompt.id),
        tools=[sdk.PostedUserDefinedToolSpec(id=tool.id)],
        builtin_tools=[sdk.PostedBuiltinTool(name="hang_up")],
        voice=sdk.VoiceName(name="Ito", provider="HUME_AI"),
        timeouts=sdk_configs.PostedConfigTimeouts(inactivity=sdk_configs.PostedConfigTimeoutsInactivity(enabled=False)),
    )
    assert undeclared_fields(made) == []
    assert made.prompt is not None and made.prompt.version_type == "LATEST"
    assert made.tools is not None and [t.name for t in made.tools if t] == ["weather"]
    ev.tools.update_tool_name(tool.id, name="forecast")
    again = ev.configs.create_config_version(made.id or "", evi_version="3", version_description="second")
    assert again.version == 1 and again.ellm_model is not None
    listed = list(ev.configs.list_configs(name="line 1"))
    assert [(c.version, c.version_description) for c in listed] == [(1, "second")]
    shown = ev.configs.get_config_version(made.id or "", 0)
    assert shown.tools is not None and [t.name for t in shown.tools if t] == ["forecast"]


def test_the_sdk_sees_a_store_error_as_an_api_error() -> None:
    """A dangling reference comes back to the SDK as an error with the 422 ``detail``, not as a config."""
    client, _ = _client(RestStore(new_id=_ids()))
    with pytest.raises(ApiError) as caught:
        client.empathic_voice.configs.create_config(
            name="c", evi_version="3", prompt=sdk_configs.PostedConfigPrompt(id=_uuid(9))
        )
    assert caught.value.status_code == 422
    parsed = sdk.HttpValidationError.model_validate(caught.value.body)
    assert [d.loc for d in parsed.detail or []] == [["body", "prompt", "id"]]


# ---------------------------------------------------------------------------------------------------
# Posted strictness, returned leniency, validation errors (§12.1, §12.3)
# ---------------------------------------------------------------------------------------------------


def test_posted_bodies_refuse_unknown_fields_at_every_level() -> None:
    """A misspelt field in a posted body, top-level or nested, is a validation error."""
    with pytest.raises(pydantic.ValidationError):
        rest.PostedPrompt.model_validate({"name": "a", "text": "b", "txt": "c"})
    with pytest.raises(pydantic.ValidationError):
        cfg.PostedConfig.model_validate({"name": "a", "evi_version": "3", "timeouts": {"inactivity": {"on": True}}})


def test_returned_models_keep_unknown_fields() -> None:
    """A field EVI adds later survives a parse and a dump of a returned model."""
    wire = {"id": "p", "version": 0, "version_type": "FIXED", "name": "n", "created_on": 1, "modified_on": 1,
            "text": "t", "locale": "en-GB"}  # fmt: skip
    parsed = rest.ReturnPrompt.model_validate(wire)
    assert parsed.model_extra == {"locale": "en-GB"}
    assert json.loads(parsed.to_json()) == wire


def test_unset_optional_fields_are_left_out_of_the_json() -> None:
    """``to_json`` writes only what was set: no nulls for omitted optional fields."""
    body = cfg.PostedConfig(name="c", evi_version="3", prompt=cfg.PostedConfigPrompt(id="p"))
    assert json.loads(body.to_json()) == {"name": "c", "evi_version": "3", "prompt": {"id": "p"}}


@pytest.mark.parametrize(
    ("spec", "good", "bad"),
    [
        ({"turn_detection": "end_of_turn_silence_ms"}, 500, 499),
        ({"turn_detection": "end_of_turn_silence_ms"}, 3000, 3001),
        ({"turn_detection": "prefix_padding_ms"}, 0, -1),
        ({"turn_detection": "speech_detection_threshold"}, 1.0, 1.01),
        ({"interruption": "min_interruption_ms"}, 50, 49),
        ({"interruption": "min_interruption_ms"}, 2000, 2001),
        ({"language_model": "temperature"}, 0.0, -0.1),
    ],
)
def test_documented_ranges_are_enforced_on_posted_configs(spec: dict[str, str], good: float, bad: float) -> None:
    """A value at the documented bound is accepted, one just past it refused."""
    ((part, field),) = spec.items()
    base = {"name": "c", "evi_version": "3"}
    cfg.PostedConfig.model_validate({**base, part: {field: good}})
    with pytest.raises(pydantic.ValidationError):
        cfg.PostedConfig.model_validate({**base, part: {field: bad}})


@pytest.mark.parametrize("parameters", ["not json", "[1, 2]", '"a string"'])
def test_tool_parameters_must_be_a_json_object_as_text(parameters: str) -> None:
    """``parameters`` that is not the text of a JSON object is a 422 at ``body.parameters``."""
    error = rest.parse_body(rest.PostedUserDefinedTool, {"name": "t", "parameters": parameters})
    assert isinstance(error, rest.HttpValidationError)
    assert [(d.loc, d.type) for d in error.detail or []] == [(["body", "parameters"], "value_error")]


def test_tool_parameters_as_an_object_are_refused() -> None:
    """A nested object instead of JSON text (a common slip) is refused, not stringified."""
    error = rest.parse_body(rest.PostedUserDefinedTool, {"name": "t", "parameters": {"type": "object"}})
    assert isinstance(error, rest.HttpValidationError)


def test_parse_body_reports_every_problem_where_it_is() -> None:
    """Each problem of a bad body is one ``detail`` item located under ``body``."""
    error = rest.parse_body(cfg.PostedConfig, {"evi_version": 3, "tools": [{"version": 1}], "extra": True})
    assert isinstance(error, rest.HttpValidationError)
    assert sorted((tuple(d.loc), d.type) for d in error.detail or []) == [
        (("body", "evi_version"), "string_type"),
        (("body", "extra"), "extra_forbidden"),
        (("body", "name"), "missing"),
        (("body", "tools", 0, "id"), "missing"),
    ]


def test_parse_body_passes_a_model_through() -> None:
    """An instance of the model is returned as it is."""
    body = rest.PostedPromptName(name="n")
    assert rest.parse_body(rest.PostedPromptName, body) is body


def test_a_validation_error_reads_as_one_line_per_problem() -> None:
    """The spec's 422 body renders as ``where: what`` lines, list indexes in brackets, in order."""
    error = rest.HttpValidationError.model_validate(
        {
            "detail": [
                {"loc": ["body", "tools", 0, "id"], "msg": "Field required", "type": "missing"},
                {"loc": ["query", "page_size"], "msg": "Input should be less than or equal to 100", "type": "x"},
                {"loc": [], "msg": "Body is not an object", "type": "y", "input": None},
            ]
        }
    )
    assert rest.validation_message(error) == (
        "body.tools[0].id: Field required\n"
        "query.page_size: Input should be less than or equal to 100\n"
        "(request): Body is not an object"
    )


def test_a_validation_error_without_detail_still_reads() -> None:
    """An empty or missing ``detail`` renders as a plain sentence rather than nothing."""
    assert rest.validation_message(rest.HttpValidationError()) == "validation failed (no detail given)"
    assert rest.validation_message(rest.HttpValidationError(detail=[])) == "validation failed (no detail given)"
