"""A call's tool turns: what each ``tool_call`` becomes for the call's table, and the answers that follow.

docs/evi-protocol.md §6. :class:`gateway.core.tools.ToolCalls` decides what a call needs (run an endpoint,
reply at once, hang up, transfer); this module turns that decision into the input the call's table decides
(:class:`ToolRoute`), with the frames to send and what to observe, and turns a finished endpoint call into
its answer. It reads no clock and moves no state.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import assert_never

from gateway.core.actions import Action, RunTool, SendUpstream, TransferCall
from gateway.core.lines import LineConfig
from gateway.core.observe import Observations
from gateway.core.states import Input
from gateway.core.tools import HangUp, Reply, Run, ToolCalls, ToolOutcome, ToolReplies, Transfer, call_context
from gateway.wire.upstream import ToolCall

log = logging.getLogger("gateway.call")


@dataclass(frozen=True, slots=True)
class ToolRoute:
    """The input a ``tool_call`` is for the call's table, and what it sends if the table accepts it."""

    event: Input
    actions: list[Action]
    detail: str = ""
    transfer: TransferCall | None = None
    """The move to make once the hand-off line is heard (for :attr:`Input.TRANSFER`)."""


@dataclass(frozen=True, slots=True)
class CallIds:
    """What a tool endpoint is told about the call (docs/design.md "Tool endpoint contract")."""

    call_sid: str | None
    custom_parameters: Mapping[str, str]
    session_id: str | None
    group_id: str | None


class ToolTurns:
    """The tool calls of one call: routing each one, answering finished ones, counting outcomes."""

    def __init__(self, codec: ToolReplies, observed: Observations) -> None:
        self._codec = codec
        self._observed = observed
        self._calls = ToolCalls(codec, {}, {}, transfers_enabled=False)

    def configure(self, line: LineConfig, *, transfers_enabled: bool) -> None:
        """The line is known (at ``start``): its tools and transfer table apply from now on."""
        self._calls = ToolCalls(self._codec, line.tools, line.transfer, transfers_enabled=transfers_enabled)

    @property
    def waiting(self) -> bool:
        """An endpoint call is running: the upstream is waiting for our answer."""
        return bool(self._calls.pending)

    def route(self, event: ToolCall, ids: CallIds, *, may_transfer: bool) -> ToolRoute:
        """Every function call is answered, now or when its endpoint replies (``may_transfer``: the table
        accepts a transfer in the call's state now)."""
        decision = self._calls.decide(
            event.name, event.tool_call_id, event.parameters_json, builtin=event.builtin, reply=event.response_required
        )
        log.info("E< tool_call %s (%s, %s)", event.name, event.tool_call_id, type(decision).__name__.lower())
        observe = self._observed.tool_call
        match decision:
            case HangUp():
                observe(event.name, "ok")
                return ToolRoute(Input.HANG_UP, tool_reply(decision.reply), "agent hung up")
            case Transfer():
                if not may_transfer:
                    observe(event.name, "transfer_not_possible")
                    return ToolRoute(Input.UPSTREAM_EVENT, tool_reply(decision.refused))
                observe(event.name, "ok")
                self._observed.transfer("started")
                assert ids.call_sid is not None
                move = TransferCall(ids.call_sid, decision.destination, decision.target)
                detail = f"transfer to {decision.destination}"
                return ToolRoute(Input.TRANSFER, tool_reply(decision.accepted), detail, transfer=move)
            case Run():
                context = call_context(ids.call_sid, ids.custom_parameters, ids.session_id, ids.group_id)
                run = RunTool(event.tool_call_id, decision.endpoint, decision.parameters, context)
                return ToolRoute(Input.UPSTREAM_EVENT, [run])
            case Reply():
                if decision.text is not None:
                    observe(event.name, decision.code or "ok")
                return ToolRoute(Input.UPSTREAM_EVENT, tool_reply(decision.text))
        assert_never(decision)

    def answer(self, tool_call_id: str, outcome: ToolOutcome, *, link_open: bool) -> tuple[list[Action], bool]:
        """The answer to a finished endpoint call, if it is still waiting and the upstream is open; and whether
        it was an error the call should count."""
        finished = self._calls.finished(tool_call_id, outcome)
        if finished is None:
            return [], False
        name, answer = finished
        self._observed.tool_call(name, "ok" if outcome.ok else outcome.code or "error")
        if not outcome.ok:
            log.warning("E> tool_error for %s: %s %s", tool_call_id, outcome.code, outcome.error)
        if not link_open:
            log.info("E> answer to tool call %s dropped: the upstream is not open", tool_call_id)
            return [], not outcome.ok
        return [SendUpstream(answer, kind="tool_error" if not outcome.ok else "tool_response")], not outcome.ok


def tool_reply(text: str | None) -> list[Action]:
    """An encoded ``tool_response``/``tool_error`` as the frame to send (none for None)."""
    if text is None:
        return []
    kind = "tool_error" if '"tool_error"' in text[:40] else "tool_response"
    return [SendUpstream(text, kind=kind)]
