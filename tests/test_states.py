"""The call state table: legal moves, explicit illegal ones, and the README diagram generated from it."""

from __future__ import annotations

import ast
import copy
import dataclasses
import re
from pathlib import Path

import pytest

from gateway.core.params import CallParams
from gateway.core.states import (
    CALLER_AUDIO,
    DEADLINES,
    END_REASONS,
    LINK_TRANSITIONS,
    TRANSITIONS,
    TRIGGERED,
    CallState,
    Input,
    Lifecycle,
    LinkInput,
    LinkState,
    next_state,
    to_mermaid,
)
from gateway.errors import CallStateError

README = Path(__file__).resolve().parent.parent / "README.md"


def test_closed_absorbs_every_input() -> None:
    """Once closed, every input leaves the call closed (late frames are harmless)."""
    assert {next_state(CallState.CLOSED, event) for event in Input} == {CallState.CLOSED}


def test_only_start_leaves_awaiting_start_for_the_upstream() -> None:
    """The upstream is only ever opened after a valid start."""
    targets = {
        e for (s, e), t in TRANSITIONS.items() if s is CallState.AWAITING_START and t is CallState.CONNECTING_UPSTREAM
    }
    assert targets == {Input.START}


def test_media_before_start_is_not_a_legal_transition() -> None:
    """Media, marks and DTMF before start are protocol violations, not silently accepted."""
    for event in (Input.MEDIA, Input.MARK, Input.DTMF):
        assert next_state(CallState.AWAITING_START, event) is None


def test_local_misuse_raises() -> None:
    """Our adapter reporting an upstream it was never asked to open, or opened twice, is a bug and raises."""
    life = Lifecycle(0.0)
    with pytest.raises(CallStateError, match="upstream 'opened'"):
        life.link_event(LinkInput.OPENED)
    life.link_event(LinkInput.OPEN)
    life.link_event(LinkInput.OPENED)
    with pytest.raises(CallStateError, match="upstream 'opened'"):
        life.link_event(LinkInput.OPENED)


def test_exactly_one_close_is_sent_per_link() -> None:
    """However often the call asks to close the upstream, only the first close of a live link is sent."""
    for opened in (False, True):
        life = Lifecycle(0.0)
        assert life.link_event(LinkInput.CLOSE) is False  # nothing was opened: nothing to close
        life.link_event(LinkInput.OPEN)
        if opened:
            life.link_event(LinkInput.OPENED)
        assert [life.link_event(LinkInput.CLOSE) for _ in range(3)] == [True, False, False]
        life.link_event(LinkInput.CLOSED)
        assert life.link is LinkState.CLOSED and life.link_event(LinkInput.CLOSE) is False


def test_every_link_state_can_reach_closed() -> None:
    """The link table lets every state but IDLE reach CLOSED (no upstream socket is left open)."""
    for state in LinkState:
        if state is LinkState.IDLE:
            continue
        seen: set[LinkState] = {state}
        frontier: list[LinkState] = [state]
        while frontier:
            current = frontier.pop()
            for (src, _), dst in LINK_TRANSITIONS.items():
                if src is current and dst not in seen:
                    seen.add(dst)
                    frontier.append(dst)
        assert LinkState.CLOSED in seen, state


def test_every_deadline_is_a_call_parameter_with_a_deadline_move() -> None:
    """Each state's deadline names a CallParams field, and the table has the move it makes."""
    fields = {f.name for f in dataclasses.fields(CallParams)}
    for state, deadline in DEADLINES.items():
        assert deadline.timeout_param in fields, deadline
        assert next_state(state, Input.DEADLINE) is not None, state
    live = {s for s in CallState if s is not CallState.CLOSED}
    assert set(DEADLINES) == live, "every state but CLOSED must be bounded in time"


def test_triggered_moves_go_towards_the_end() -> None:
    """Condition-triggered moves only ever lead out of the conversation, never back into it."""
    order = list(CallState)
    for (src, _), dst in TRIGGERED.items():
        assert order.index(dst) > order.index(src)


def test_every_move_towards_the_end_has_a_reason() -> None:
    """Every input that leaves the conversation gives an end reason (or is a deadline, which carries its own)."""
    endward = {CallState.SAYING_GOODBYE, CallState.ENDING, CallState.CLOSED}
    for (src, event), dst in TRANSITIONS.items():
        if dst in endward and src not in endward and event is not Input.DEADLINE:
            assert event in END_REASONS, (src, event)


def test_caller_audio_has_a_route_in_every_state_that_accepts_it() -> None:
    """Each state that accepts caller media says whether it holds, forwards or drops it."""
    accepting = {s for (s, e), _ in TRANSITIONS.items() if e is Input.MEDIA and s is not CallState.CLOSED}
    assert accepting == set(CALLER_AUDIO)


def test_only_states_py_assigns_a_call_state() -> None:
    """No module but gateway/core/states.py assigns a CallState (h11's rule: the machine lives in one module)."""
    package = Path(__file__).resolve().parent.parent / "gateway"
    offenders = []
    for path in package.rglob("*.py"):
        if path.name == "states.py" and path.parent.name == "core":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign) and node.value is not None:
                value = node.value
                if isinstance(value, ast.Attribute) and ast.unparse(value.value) == "CallState":
                    offenders.append(f"{path.relative_to(package.parent)}:{node.lineno}")
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    # playout.py's per-response state (_State) is not a call state.
                    if (
                        isinstance(target, ast.Attribute)
                        and target.attr == "state"
                        and "_State." not in ast.unparse(node.value)
                    ):
                        offenders.append(f"{path.relative_to(package.parent)}:{node.lineno}")
    assert offenders == []


def test_every_live_state_can_reach_closed() -> None:
    """From every state some input path leads to CLOSED (no call can get stuck)."""
    for state in CallState:
        seen, frontier = {state}, [state]
        while frontier:
            current = frontier.pop()
            for (src, _), dst in TRANSITIONS.items():
                if src is current and dst not in seen:
                    seen.add(dst)
                    frontier.append(dst)
        assert CallState.CLOSED in seen


def test_twilio_closing_ends_every_state() -> None:
    """A caller hanging up ends the call from any state at once."""
    assert {next_state(s, Input.TWILIO_CLOSED) for s in CallState} == {CallState.CLOSED}


def test_readme_diagram_is_generated_from_the_table() -> None:
    """The diagram in README.md is exactly what to_mermaid() prints."""
    match = re.search(r"```mermaid\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert match is not None, "README.md has no mermaid block"
    assert match.group(1).strip() == to_mermaid().strip()


def test_committing_an_inert_move_changes_nothing() -> None:
    """Every move the table marks inert (a self-loop the core may skip committing) leaves a lifecycle exactly as it
    was, from every reachable state it is legal in, and leads to no triggered move; a media frame while active is
    one of them."""
    reached = {CallState.AWAITING_START: Lifecycle(0.0)}
    frontier = [CallState.AWAITING_START]
    while frontier:  # one lifecycle per state, reached through the table
        state = frontier.pop()
        for (source, event), target in TRANSITIONS.items():
            if source is state and target not in reached:
                life = copy.deepcopy(reached[state])
                life.commit(life.decide(event) or pytest.fail(f"{event} refused in {state}"), 1.0)
                reached[target] = life
                frontier.append(target)
    inert = 0
    for (source, event), _target in TRANSITIONS.items():
        if source not in reached:
            continue
        life = copy.deepcopy(reached[source])
        transition = life.decide(event)
        assert transition is not None
        if not transition.inert:
            continue
        inert += 1
        before = copy.deepcopy(vars(life))
        life.commit(transition, 99.0)
        assert vars(life) == before, f"{source} / {event}"
        assert life.triggered(lambda _condition: True) is None
    assert inert > 10
    active = reached[CallState.ACTIVE]
    assert (active.decide(Input.MEDIA) or pytest.fail("media refused")).inert
    assert not (reached[CallState.AWAITING_START].decide(Input.START) or pytest.fail("start refused")).inert
