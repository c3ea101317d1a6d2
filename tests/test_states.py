"""The call state table: legal moves, explicit illegal ones, and the README diagram generated from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.core.states import TRANSITIONS, CallState, Input, next_state, to_mermaid
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
    """Our adapter reporting an upstream it was never asked to open is a bug and raises."""
    with pytest.raises(CallStateError, match="upstream opened"):
        next_state(CallState.ACTIVE, Input.UPSTREAM_OPENED)


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
