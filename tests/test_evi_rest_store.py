"""The simulator's in-memory EVI REST API: versions, paging, deletes, errors, configs (evi-protocol.md §12.5)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from gateway.simulator.evi_rest_store import (
    DEFAULT_INACTIVITY_S,
    DEFAULT_MAX_DURATION_S,
    RestError,
    RestStore,
    VersionedResources,
)
from gateway.wire.evi_rest import ReturnPrompt, ReturnUserDefinedTool
from gateway.wire.evi_rest_configs import ReturnConfig

T0 = 1_700_000_000
SCHEMA = json.dumps({"type": "object", "properties": {}})


def _store() -> RestStore:
    counter = itertools.count()
    return RestStore(new_id=lambda: f"id-{next(counter)}")


def _ok(result: Any) -> Any:
    assert not isinstance(result, RestError), result.message
    return result


def _error(result: object) -> RestError:
    assert isinstance(result, RestError), result
    return result


def _problems(result: object) -> list[tuple[tuple[str | int, ...], str]]:
    """The 422's problems as (location, type) pairs."""
    error = _error(result)
    assert error.status == 422 and not isinstance(error.detail, str)
    return [(tuple(item.loc), item.type) for item in error.detail]


# Each kind with a valid create body and a valid new-version body, for the behaviour all three share.
KindBodies = tuple[
    Callable[[RestStore], VersionedResources[Any, Any, Any]], Callable[[str], dict[str, Any]], dict[str, Any]
]
KINDS: dict[str, KindBodies] = {
    "prompts": (lambda s: s.prompts, lambda name: {"name": name, "text": "Hi"}, {"text": "Hi again"}),
    "tools": (lambda s: s.tools, lambda name: {"name": name, "parameters": SCHEMA}, {"parameters": SCHEMA}),
    "configs": (lambda s: s.configs, lambda name: {"name": name, "evi_version": "3"}, {"evi_version": "4-mini"}),
}


@pytest.fixture(name="kind", params=sorted(KINDS))
def fixture_kind(request: pytest.FixtureRequest) -> tuple[RestStore, VersionedResources[Any, Any, Any], Any, Any]:
    """(store, one kind of it, create-body maker, new-version body)."""
    resources, create_body, version_body = KINDS[request.param]
    store = _store()
    return store, resources(store), create_body, version_body


Kind = tuple[RestStore, VersionedResources[Any, Any, Any], Any, Any]


# ---------------------------------------------------------------------------------------------------
# Versions, names, descriptions, deletes (§12.1)
# ---------------------------------------------------------------------------------------------------


def test_create_makes_version_0_stamped_with_now(kind: Kind) -> None:
    """A new resource is version 0, FIXED, with the factory's id and ``now_s`` as both times."""
    _, resources, create_body, _ = kind
    made = _ok(resources.create(create_body("a"), now_s=T0 + 0.9))
    assert (made.id, made.version, made.name, made.created_on, made.modified_on) == ("id-0", 0, "a", T0, T0)
    if not isinstance(made, ReturnConfig):
        assert made.version_type == "FIXED"


def test_a_new_version_counts_up_and_keeps_name_and_creation_time(kind: Kind) -> None:
    """Each new version is the next number, under the same name, created_on kept, modified_on its own."""
    _, resources, create_body, version_body = kind
    made = _ok(resources.create(create_body("a"), now_s=T0))
    first = _ok(resources.create_version(made.id, version_body, now_s=T0 + 5))
    second = _ok(resources.create_version(made.id, version_body, now_s=T0 + 9))
    assert [(v.version, v.name, v.created_on, v.modified_on) for v in (first, second)] == [
        (1, "a", T0, T0 + 5),
        (2, "a", T0, T0 + 9),
    ]


def test_version_numbers_are_not_reused_after_deleting_the_newest(kind: Kind) -> None:
    """Deleting version 1 and adding another gives version 2, not 1 again."""
    _, resources, create_body, version_body = kind
    made = _ok(resources.create(create_body("a"), now_s=T0))
    _ok(resources.create_version(made.id, version_body, now_s=T0))
    assert resources.delete_version(made.id, 1) is None
    assert _ok(resources.create_version(made.id, version_body, now_s=T0)).version == 2


def test_rename_applies_to_every_version_and_answers_empty(kind: Kind) -> None:
    """A rename answers None (an empty body), names every version anew and updates modified_on."""
    _, resources, create_body, version_body = kind
    made = _ok(resources.create(create_body("old"), now_s=T0))
    _ok(resources.create_version(made.id, version_body, now_s=T0))
    assert resources.update_name(made.id, {"name": "new"}, now_s=T0 + 7) is None
    listed = _ok(resources.list_versions(made.id, restrict_to_most_recent=False)).to_dict()
    page = next(value for key, value in listed.items() if key.endswith("_page"))
    assert [(item["name"], item["modified_on"]) for item in page] == [("new", T0 + 7), ("new", T0 + 7)]


def test_a_description_belongs_to_one_version_and_null_clears_it(kind: Kind) -> None:
    """Setting version 0's description leaves version 1's alone; posting null clears it again."""
    _, resources, create_body, version_body = kind
    made = _ok(resources.create(create_body("a"), now_s=T0))
    _ok(resources.create_version(made.id, version_body, now_s=T0))
    described = _ok(resources.update_description(made.id, 0, {"version_description": "first"}, now_s=T0 + 3))
    assert (described.version, described.version_description, described.modified_on) == (0, "first", T0 + 3)
    assert _ok(resources.get_version(made.id, 1)).version_description is None
    cleared = _ok(resources.update_description(made.id, 0, {"version_description": None}, now_s=T0 + 4))
    assert cleared.version_description is None


def test_delete_one_version_keeps_the_others(kind: Kind) -> None:
    """Deleting version 0 leaves version 1 reachable and version 0 a 404."""
    _, resources, create_body, version_body = kind
    made = _ok(resources.create(create_body("a"), now_s=T0))
    _ok(resources.create_version(made.id, version_body, now_s=T0))
    assert resources.delete_version(made.id, 0) is None
    assert _ok(resources.get_version(made.id, 1)).version == 1
    assert _error(resources.get_version(made.id, 0)).status == 404


def test_deleting_the_last_version_deletes_the_resource(kind: Kind) -> None:
    """With its only version gone the id itself is unknown."""
    _, resources, create_body, _ = kind
    made = _ok(resources.create(create_body("a"), now_s=T0))
    assert resources.delete_version(made.id, 0) is None
    assert _error(resources.list_versions(made.id)).status == 404


def test_delete_removes_every_version(kind: Kind) -> None:
    """Deleting the resource removes all its versions and it leaves the list."""
    _, resources, create_body, version_body = kind
    made = _ok(resources.create(create_body("a"), now_s=T0))
    _ok(resources.create_version(made.id, version_body, now_s=T0))
    other = _ok(resources.create(create_body("b"), now_s=T0))
    assert resources.delete(made.id) is None
    assert _error(resources.get_version(made.id, 1)).status == 404
    listed = _ok(resources.list_page(restrict_to_most_recent=False)).to_dict()
    assert [item["id"] for key, items in listed.items() if key.endswith("_page") for item in items] == [other.id]


def test_unknown_ids_and_versions_are_404_for_every_operation(kind: Kind) -> None:
    """Every operation on an unknown id, or on an unknown version of a known id, is a 404 naming it."""
    _, resources, create_body, version_body = kind
    made = _ok(resources.create(create_body("a"), now_s=T0))
    for result in (
        resources.list_versions("nope"),
        resources.get_version("nope", 0),
        resources.create_version("nope", version_body, now_s=T0),
        resources.update_name("nope", {"name": "x"}, now_s=T0),
        resources.update_description("nope", 0, {"version_description": "x"}, now_s=T0),
        resources.delete("nope"),
        resources.delete_version("nope", 0),
    ):
        assert _error(result).status == 404
        assert "nope not found" in _error(result).message
    for result in (
        resources.get_version(made.id, 3),
        resources.update_description(made.id, 3, {}, now_s=T0),
        resources.delete_version(made.id, 3),
    ):
        assert _error(result).to_dict() == {"detail": f"{resources.kind} {made.id} has no version 3"}


def test_a_bad_body_is_422_and_changes_nothing(kind: Kind) -> None:
    """A body missing a required field or carrying an unknown one is a 422 located in the body."""
    store, resources, create_body, version_body = kind
    assert _problems(resources.create({**create_body("a"), "colour": "red"}, now_s=T0)) == [
        (("body", "colour"), "extra_forbidden")
    ]
    assert _problems(resources.create({}, now_s=T0))[0][1] == "missing"
    assert _problems(resources.create(["not", "an", "object"], now_s=T0)) == [(("body",), "model_type")]
    made = _ok(resources.create(create_body("a"), now_s=T0))
    assert _problems(resources.update_name(made.id, {"title": "x"}, now_s=T0)) == [
        (("body", "name"), "missing"),
        (("body", "title"), "extra_forbidden"),
    ]
    assert _error(resources.create_version(made.id, {}, now_s=T0)).status == 422
    assert _ok(resources.list_page()).total_pages == 1


def test_names_need_not_be_unique(kind: Kind) -> None:
    """Two resources may share a name; each keeps its own id, and the name filter finds both."""
    _, resources, create_body, _ = kind
    first = _ok(resources.create(create_body("same"), now_s=T0))
    second = _ok(resources.create(create_body("same"), now_s=T0))
    assert first.id != second.id
    listed = _ok(resources.list_page(name="same")).to_dict()
    assert sorted(item["id"] for key, items in listed.items() if key.endswith("_page") for item in items) == [
        first.id,
        second.id,
    ]


# ---------------------------------------------------------------------------------------------------
# Lists and paging (§12.2), shown with prompts
# ---------------------------------------------------------------------------------------------------


def _prompts(store: RestStore, count: int, name: str = "p") -> list[ReturnPrompt]:
    return [_ok(store.prompts.create({"name": f"{name}{i}", "text": "t"}, now_s=T0 + i)) for i in range(count)]


def test_pages_hold_ten_by_default_and_count_the_total() -> None:
    """23 prompts make pages of 10, 10 and 3, total_pages 3, and an empty page after the last."""
    store = _store()
    _prompts(store, 23)
    pages = [_ok(store.prompts.list_page(page_number=n)) for n in range(4)]
    assert [len(page.prompts_page) for page in pages] == [10, 10, 3, 0]
    assert {(page.page_size, page.total_pages) for page in pages} == {(10, 3)}
    assert [page.page_number for page in pages] == [0, 1, 2, 3]


def test_page_size_takes_1_to_100() -> None:
    """page_size 1 and 100 are served; 0 and 101 are a 422 at ``query.page_size``."""
    store = _store()
    _prompts(store, 3)
    assert _ok(store.prompts.list_page(page_size=1)).total_pages == 3
    assert _ok(store.prompts.list_page(page_size=100)).total_pages == 1
    assert _problems(store.prompts.list_page(page_size=0)) == [(("query", "page_size"), "greater_than_equal")]
    assert _problems(store.prompts.list_page(page_size=101)) == [(("query", "page_size"), "less_than_equal")]


def test_a_negative_page_number_is_422_with_every_bad_parameter_named() -> None:
    """page_number −1 is a 422; with a bad page_size as well, both are reported."""
    store = _store()
    assert _problems(store.prompts.list_page(page_number=-1)) == [(("query", "page_number"), "greater_than_equal")]
    assert [loc for loc, _ in _problems(store.tools.list_page(page_number=-1, page_size=500))] == [
        ("query", "page_number"),
        ("query", "page_size"),
    ]


def test_an_empty_store_lists_zero_pages() -> None:
    """Nothing stored: an empty first page and total_pages 0."""
    page = _ok(_store().configs.list_page())
    assert (page.configs_page, page.total_pages) == ([], 0)


def test_lists_are_newest_first_by_version_creation() -> None:
    """A new version of an old prompt moves it to the front of the list."""
    store = _store()
    old, middle, new = _prompts(store, 3)
    _ok(store.prompts.create_version(old.id, {"text": "t2"}, now_s=T0 + 10))
    assert [p.id for p in _ok(store.prompts.list_page()).prompts_page] == [old.id, new.id, middle.id]


def test_restrict_to_most_recent_defaults_to_the_latest_of_each() -> None:
    """By default one item per prompt (its latest); with false, every version, newest first."""
    store = _store()
    first, second = _prompts(store, 2)
    _ok(store.prompts.create_version(first.id, {"text": "t1"}, now_s=T0 + 10))
    latest = _ok(store.prompts.list_page()).prompts_page
    assert [(p.id, p.version) for p in latest] == [(first.id, 1), (second.id, 0)]
    every = _ok(store.prompts.list_page(restrict_to_most_recent=False)).prompts_page
    assert [(p.id, p.version) for p in every] == [(first.id, 1), (second.id, 0), (first.id, 0)]


def test_list_versions_is_restricted_by_default_too() -> None:
    """As the spec's default says, one prompt's version list holds only its latest unless told otherwise."""
    store = _store()
    (made,) = _prompts(store, 1)
    for n in range(3):
        _ok(store.prompts.create_version(made.id, {"text": f"v{n}"}, now_s=T0 + n))
    assert [p.version for p in _ok(store.prompts.list_versions(made.id)).prompts_page] == [3]
    every = _ok(store.prompts.list_versions(made.id, page_size=3, restrict_to_most_recent=False))
    assert ([p.version for p in every.prompts_page], every.total_pages) == ([3, 2, 1], 2)


def test_a_bad_query_is_422_even_for_an_unknown_id() -> None:
    """The query is checked before the id, as a framework validating parameters first would."""
    assert _error(_store().prompts.list_versions("nope", page_size=0)).status == 422


def test_the_name_filter_is_exact() -> None:
    """``name`` keeps only exact matches: not prefixes, not other cases."""
    store = _store()
    for name in ("agent", "agent 2", "Agent"):
        _ok(store.tools.create({"name": name, "parameters": SCHEMA}, now_s=T0))
    assert [t.name for t in _ok(store.tools.list_page(name="agent")).tools_page] == ["agent"]
    assert _ok(store.tools.list_page(name="nobody")).tools_page == []


def test_a_renamed_resource_is_found_under_its_new_name_only() -> None:
    """After a rename the name filter finds it by the new name and no longer by the old."""
    store = _store()
    (made,) = _prompts(store, 1, name="old")
    _ok(store.prompts.update_name(made.id, {"name": "new"}, now_s=T0))
    assert [p.id for p in _ok(store.prompts.list_page(name="new")).prompts_page] == [made.id]
    assert _ok(store.prompts.list_page(name="old0")).prompts_page == []


# ---------------------------------------------------------------------------------------------------
# Tools (§12.1)
# ---------------------------------------------------------------------------------------------------


def test_a_tool_is_a_function_tool_with_its_schema_as_text() -> None:
    """A created tool comes back as FUNCTION with ``parameters`` the very text posted."""
    store = _store()
    made = _ok(store.tools.create({"name": "t", "parameters": SCHEMA, "fallback_content": "f"}, now_s=T0))
    assert isinstance(made, ReturnUserDefinedTool)
    assert (made.tool_type, made.parameters, made.fallback_content) == ("FUNCTION", SCHEMA, "f")


def test_a_tool_whose_parameters_are_not_a_schema_is_refused() -> None:
    """``parameters`` that is not JSON object text is a 422 at ``body.parameters``."""
    store = _store()
    assert _problems(store.tools.create({"name": "t", "parameters": "{oops"}, now_s=T0)) == [
        (("body", "parameters"), "value_error")
    ]


# ---------------------------------------------------------------------------------------------------
# Configs (§12.4)
# ---------------------------------------------------------------------------------------------------


def _with_prompt_and_tool(store: RestStore) -> tuple[ReturnPrompt, ReturnUserDefinedTool]:
    prompt = _ok(store.prompts.create({"name": "agent", "text": "v0"}, now_s=T0))
    tool = _ok(store.tools.create({"name": "weather", "parameters": SCHEMA}, now_s=T0))
    return prompt, tool


def test_a_config_with_a_dangling_prompt_or_tool_is_422_naming_each() -> None:
    """Unknown prompt id, unknown tool id and unknown tool version are each reported, and nothing is made."""
    store = _store()
    _, tool = _with_prompt_and_tool(store)
    body = {
        "name": "c",
        "evi_version": "3",
        "prompt": {"id": "missing-prompt"},
        "tools": [{"id": tool.id}, {"id": "missing-tool"}, {"id": tool.id, "version": 7}],
    }
    result = store.configs.create(body, now_s=T0)
    assert _problems(result) == [
        (("body", "prompt", "id"), "value_error"),
        (("body", "tools", 1, "id"), "value_error"),
        (("body", "tools", 2, "version"), "value_error"),
    ]
    assert _error(result).message.splitlines() == [
        "body.prompt.id: Prompt missing-prompt does not exist",
        "body.tools[1].id: Tool missing-tool does not exist",
        f"body.tools[2].version: Tool {tool.id} has no version 7",
    ]
    assert _ok(store.configs.list_page()).total_pages == 0


def test_a_config_version_pointing_at_a_missing_prompt_version_is_422() -> None:
    """A new config version is checked like a new config: prompt version 5 of a one-version prompt fails."""
    store = _store()
    prompt, _ = _with_prompt_and_tool(store)
    made = _ok(store.configs.create({"name": "c", "evi_version": "3"}, now_s=T0))
    bad = {"evi_version": "3", "prompt": {"id": prompt.id, "version": 5}}
    assert _problems(store.configs.create_version(made.id, bad, now_s=T0)) == [
        (("body", "prompt", "version"), "value_error")
    ]
    assert [c.version for c in _ok(store.configs.list_versions(made.id)).configs_page] == [0]


def test_only_the_supported_evi_versions_are_accepted() -> None:
    """``evi_version`` must be 3 or 4-mini; 2 is a 422 at ``body.evi_version``."""
    store = _store()
    assert _problems(store.configs.create({"name": "c", "evi_version": "2"}, now_s=T0)) == [
        (("body", "evi_version"), "value_error")
    ]
    assert _ok(store.configs.create({"name": "c", "evi_version": "4-mini"}, now_s=T0)).evi_version == "4-mini"


@pytest.mark.parametrize("prompt", [{}, {"id": "x", "text": "y"}])
def test_a_config_prompt_needs_exactly_one_of_id_and_text(prompt: dict[str, str]) -> None:
    """Neither or both of ``id`` and ``text`` is a 422 at ``body.prompt``."""
    result = _store().configs.create({"name": "c", "evi_version": "3", "prompt": prompt}, now_s=T0)
    assert _problems(result) == [(("body", "prompt"), "value_error")]


def test_a_config_prompt_given_as_text_becomes_a_pinned_prompt() -> None:
    """Prompt text makes a new prompt named after the config, used at version 0 (FIXED)."""
    store = _store()
    made = _ok(store.configs.create({"name": "line", "evi_version": "3", "prompt": {"text": "Hello"}}, now_s=T0))
    assert made.prompt is not None
    assert (made.prompt.name, made.prompt.text, made.prompt.version, made.prompt.version_type) == (
        "line",
        "Hello",
        0,
        "FIXED",
    )
    assert [p.id for p in _ok(store.prompts.list_page()).prompts_page] == [made.prompt.id]


def test_a_latest_reference_follows_new_versions_and_a_fixed_one_does_not() -> None:
    """A reference without version shows the newest prompt and tool; with a version, that one."""
    store = _store()
    prompt, tool = _with_prompt_and_tool(store)
    latest = _ok(store.configs.create(
        {"name": "l", "evi_version": "3", "prompt": {"id": prompt.id}, "tools": [{"id": tool.id}]}, now_s=T0
    ))  # fmt: skip
    fixed = _ok(store.configs.create(
        {"name": "f", "evi_version": "3", "prompt": {"id": prompt.id, "version": 0},
         "tools": [{"id": tool.id, "version": 0}]}, now_s=T0,
    ))  # fmt: skip
    _ok(store.prompts.create_version(prompt.id, {"text": "v1"}, now_s=T0 + 1))
    _ok(store.tools.create_version(tool.id, {"parameters": SCHEMA, "description": "new"}, now_s=T0 + 1))
    now_latest, now_fixed = store.config(latest.id), store.config(fixed.id)
    assert now_latest is not None and now_fixed is not None
    assert now_latest.prompt is not None and now_fixed.prompt is not None
    assert (now_latest.prompt.text, now_latest.prompt.version_type) == ("v1", "LATEST")
    assert (now_fixed.prompt.text, now_fixed.prompt.version_type) == ("v0", "FIXED")
    assert [(t.version, t.version_type) for t in now_latest.tools or []] == [(1, "LATEST")]
    assert [(t.version, t.version_type) for t in now_fixed.tools or []] == [(0, "FIXED")]


def test_a_reference_deleted_later_is_left_out_of_the_config() -> None:
    """Deleting the prompt and the tool a config names leaves the config readable, without them."""
    store = _store()
    prompt, tool = _with_prompt_and_tool(store)
    made = _ok(store.configs.create(
        {"name": "c", "evi_version": "3", "prompt": {"id": prompt.id}, "tools": [{"id": tool.id}]}, now_s=T0
    ))  # fmt: skip
    _ok(store.prompts.delete(prompt.id))
    _ok(store.tools.delete_version(tool.id, 0))
    again = store.config(made.id)
    assert again is not None and (again.prompt, again.tools) == (None, [])


def test_a_renamed_prompt_shows_its_new_name_inside_configs() -> None:
    """The config's expanded prompt carries the prompt's current name."""
    store = _store()
    prompt, _ = _with_prompt_and_tool(store)
    made = _ok(store.configs.create({"name": "c", "evi_version": "3", "prompt": {"id": prompt.id}}, now_s=T0))
    _ok(store.prompts.update_name(prompt.id, {"name": "renamed"}, now_s=T0))
    again = store.config(made.id)
    assert again is not None and again.prompt is not None and again.prompt.name == "renamed"


def test_short_responses_are_off_by_default_and_inherited_by_new_versions() -> None:
    """allow_short_responses: off when a config leaves it out, kept by a version that leaves it out."""
    store = _store()
    made = _ok(store.configs.create({"name": "c", "evi_version": "3"}, now_s=T0))
    assert made.ellm_model.allow_short_responses is False
    on = _ok(store.configs.create_version(
        made.id, {"evi_version": "3", "ellm_model": {"allow_short_responses": True}}, now_s=T0
    ))  # fmt: skip
    kept = _ok(store.configs.create_version(made.id, {"evi_version": "3", "ellm_model": {}}, now_s=T0))
    off = _ok(store.configs.create_version(
        made.id, {"evi_version": "3", "ellm_model": {"allow_short_responses": False}}, now_s=T0
    ))  # fmt: skip
    assert [c.ellm_model.allow_short_responses for c in (on, kept, off)] == [True, True, False]


def test_unset_timeouts_come_back_as_the_documented_defaults() -> None:
    """No timeouts: 120 s inactivity and 1800 s at most, both on; a partial one keeps what it set."""
    store = _store()
    bare = _ok(store.configs.create({"name": "c", "evi_version": "3"}, now_s=T0))
    assert bare.timeouts.to_dict() == {
        "inactivity": {"enabled": True, "duration_secs": DEFAULT_INACTIVITY_S},
        "max_duration": {"enabled": True, "duration_secs": DEFAULT_MAX_DURATION_S},
    }
    partial = _ok(store.configs.create(
        {"name": "c", "evi_version": "3", "timeouts": {"inactivity": {"enabled": False, "duration_secs": 45}}},
        now_s=T0,
    ))  # fmt: skip
    assert partial.timeouts.to_dict() == {
        "inactivity": {"enabled": False, "duration_secs": 45},
        "max_duration": {"enabled": True, "duration_secs": DEFAULT_MAX_DURATION_S},
    }


def test_a_timeout_outside_30_to_1800_seconds_is_refused() -> None:
    """An inactivity timeout of 29 s is a 422 at its ``duration_secs``."""
    body = {"name": "c", "evi_version": "3", "timeouts": {"inactivity": {"enabled": True, "duration_secs": 29}}}
    assert _problems(_store().configs.create(body, now_s=T0)) == [
        (("body", "timeouts", "inactivity", "duration_secs"), "greater_than_equal")
    ]


def test_voices_come_back_with_both_id_and_name() -> None:
    """By name: a stable made-up id (same name, same id); by id: the id as name; no provider: CUSTOM_VOICE."""
    store = _store()
    one = _ok(store.configs.create({"name": "a", "evi_version": "3", "voice": {"name": "Ito"}}, now_s=T0))
    two = _ok(store.configs.create({"name": "b", "evi_version": "3", "voice": {"name": "Ito"}}, now_s=T0))
    other = _ok(store.configs.create(
        {"name": "c", "evi_version": "3", "voice": {"name": "Ito", "provider": "HUME_AI"}}, now_s=T0
    ))  # fmt: skip
    by_id = _ok(store.configs.create({"name": "d", "evi_version": "3", "voice": {"id": "v-9"}}, now_s=T0))
    assert one.voice.id == two.voice.id != other.voice.id
    assert (one.voice.name, one.voice.provider, other.voice.provider) == ("Ito", "CUSTOM_VOICE", "HUME_AI")
    assert by_id.voice.to_dict() == {"id": "v-9", "name": "v-9", "provider": "CUSTOM_VOICE"}


def test_a_voice_given_both_by_id_and_by_name_is_refused() -> None:
    """``voice`` is an id or a name, not both."""
    body = {"name": "c", "evi_version": "3", "voice": {"id": "v", "name": "n"}}
    assert _error(_store().configs.create(body, now_s=T0)).status == 422


def test_nudges_posted_without_enabled_are_on() -> None:
    """Posting ``nudges`` with only an interval turns them on; an explicit false stays off."""
    store = _store()
    implied = _ok(store.configs.create({"name": "c", "evi_version": "3", "nudges": {"interval_secs": 6}}, now_s=T0))
    off = _ok(store.configs.create({"name": "c", "evi_version": "3", "nudges": {"enabled": False}}, now_s=T0))
    assert (implied.nudges.enabled, implied.nudges.interval_secs, off.nudges.enabled) == (True, 6, False)


def test_built_in_tools_come_back_as_builtin() -> None:
    """``builtin_tools`` return with tool_type BUILTIN and their fallback text."""
    body = {"name": "c", "evi_version": "3", "builtin_tools": [{"name": "hang_up", "fallback_content": "Bye"}]}
    made = _ok(_store().configs.create(body, now_s=T0))
    assert [t.to_dict() for t in made.builtin_tools] == [
        {"name": "hang_up", "tool_type": "BUILTIN", "fallback_content": "Bye"}
    ]


def test_config_lookup_gives_the_latest_or_the_version_asked_for() -> None:
    """``config(id)`` is the newest version, ``config(id, n)`` version n, and an unknown one is None."""
    store = _store()
    made = _ok(store.configs.create({"name": "c", "evi_version": "3", "version_description": "v0"}, now_s=T0))
    _ok(store.configs.create_version(made.id, {"evi_version": "3", "version_description": "v1"}, now_s=T0))
    latest, first = store.config(made.id), store.config(made.id, 0)
    assert latest is not None and first is not None
    assert (latest.version, latest.version_description, first.version_description) == (1, "v1", "v0")
    assert store.config(made.id, 5) is None
    assert store.config("nope") is None


# ---------------------------------------------------------------------------------------------------
# Persistence and purity (§12.5)
# ---------------------------------------------------------------------------------------------------


def _populated() -> RestStore:
    store = _store()
    prompt, tool = _with_prompt_and_tool(store)
    _ok(store.prompts.create_version(prompt.id, {"text": "v1", "version_description": "d"}, now_s=T0 + 1))
    _ok(store.configs.create(
        {"name": "c", "evi_version": "3", "prompt": {"id": prompt.id}, "tools": [{"id": tool.id, "version": 0}],
         "voice": {"name": "Ito"}, "ellm_model": {"allow_short_responses": True}}, now_s=T0 + 2,
    ))  # fmt: skip
    return store


def _everything(store: RestStore) -> list[dict[str, Any]]:
    return [
        _ok(kind.list_page(page_size=100, restrict_to_most_recent=False)).to_dict()
        for kind in (store.prompts, store.tools, store.configs)
    ]


def test_export_is_json_and_restore_reproduces_every_answer() -> None:
    """A store restored from JSON text of ``export()`` lists exactly what the original lists."""
    original = _populated()
    copy = _store()
    copy.restore(json.loads(json.dumps(original.export())))
    assert _everything(copy) == _everything(original)
    assert copy.export() == original.export()


def test_a_restored_store_carries_on_numbering_and_ordering() -> None:
    """After a restore the next version number and newest-first order continue where they were."""
    original = _populated()
    copy = _store()
    copy.restore(original.export())
    (config,) = _ok(copy.configs.list_page()).configs_page
    again = _ok(copy.configs.create_version(config.id, {"evi_version": "3"}, now_s=T0 + 9))
    assert (again.version, again.ellm_model.allow_short_responses) == (1, True)
    newest = _ok(copy.prompts.create({"name": "later", "text": "t"}, now_s=T0 + 9))
    assert _ok(copy.prompts.list_page()).prompts_page[0].id == newest.id


@pytest.mark.parametrize(
    "damage",
    [
        lambda state: state.update(format=2),
        lambda state: state.update(seq=0),
        lambda state: state["prompts"][0].update(next_version=0),
        lambda state: state["prompts"][0]["versions"][0]["content"].update(colour="red"),
        lambda state: state["tools"][0].update(versions=[]),
    ],
)
def test_restoring_a_damaged_state_fails_and_changes_nothing(damage: Callable[[dict[str, Any]], None]) -> None:
    """A bad format, a stale counter or a bad entry raises ValueError and leaves the store as it was."""
    store = _populated()
    before = store.export()
    state = json.loads(json.dumps(before))
    damage(state)
    with pytest.raises(ValueError):
        store.restore(state)
    assert store.export() == before


def test_the_store_loads_no_async_or_network_stack() -> None:
    """Importing the store pulls in neither asyncio, aiohttp nor websockets."""
    code = (
        "import sys, gateway.simulator.evi_rest_store;"
        "print(sorted(m for m in ('asyncio', 'aiohttp', 'websockets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
