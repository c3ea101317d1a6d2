"""Transcript tests of what the core reports for metrics, and of the drain's shutdown input (no sockets)."""

from __future__ import annotations

import json

import numpy as np

from gateway.core.actions import CloseTwilio
from gateway.core.lines import LineConfig, SingleLine
from gateway.core.observe import MAX_PENDING, Observation, Observations
from gateway.core.params import CallParams
from gateway.core.states import CallState, EndReason
from gateway.core.tools import ToolEndpoint, ToolOutcome
from gateway.testing import CallDriver, user_final
from gateway.wire import evi_messages as evi

LOOKUP = ToolEndpoint("lookup_order", "http://127.0.0.1:9/tools/lookup_order", "Look up an order")


def tone(duration_ms: int, rate_hz: int = 24000) -> bytes:
    """A 440 Hz sine as linear16."""
    t = np.arange(duration_ms * rate_hz // 1000) / rate_hz
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()


def ready_call(**params: object) -> CallDriver:
    """A call on a line with one tool and one transfer destination, its upstream ready."""
    line = LineConfig(tools={"lookup_order": LOOKUP}, transfer={"sales": "+15551230000"})
    d = CallDriver(CallParams(transfers_enabled=True, **params), lines=SingleLine(line))  # type: ignore[arg-type]
    d.start()
    d.ready()
    return d


def kinds(d: CallDriver) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    return [(o.kind, o.labels) for o in d.call.observed.take()]


def tool_call(name: str, call_id: str, parameters: str = "{}") -> evi.ToolCallMessage:
    return evi.ToolCallMessage(
        name=name, parameters=parameters, tool_call_id=call_id, response_required=True, tool_type="function"
    )


def test_response_latency_runs_from_the_final_transcript_to_the_first_agent_audio_sent() -> None:
    """The wait the caller hears: from EVI's final user_message to the first media of the next response."""
    d = ready_call()
    d.call.observed.take()
    d.upstream(user_final("where is my order"))
    d.advance(300)
    d.say("r1", tone(200), 24000)
    latencies = [o for o in d.call.observed.take() if o.kind == "response_latency_s"]
    assert len(latencies) == 1 and abs(latencies[0].value - 0.3) < 1e-6
    d.say("r1", tone(200), 24000, index=1)  # more audio of the same response is not another turn
    d.advance(200)
    assert [o for o in d.call.observed.take() if o.kind == "response_latency_s"] == []


def test_audio_of_a_response_begun_before_the_turn_ended_does_not_count() -> None:
    """Agent audio still playing from an earlier response is not the answer to the caller's turn."""
    d = ready_call()
    d.say("r1", tone(400), 24000)
    d.upstream(user_final("hello"))
    d.advance(100)  # r1's queued frames go out: no latency yet
    assert [o for o in d.call.observed.take() if o.kind == "response_latency_s"] == []
    d.upstream(evi.AssistantEnd())
    d.advance(600)
    d.say("r2", tone(200), 24000)
    assert [round(o.value, 3) for o in d.call.observed.take() if o.kind == "response_latency_s"] == [0.7]


def test_tool_calls_are_reported_by_name_and_outcome() -> None:
    """An endpoint's success and failure, an unknown tool and a transfer each report their outcome."""
    d = ready_call()
    d.call.observed.take()
    d.upstream(tool_call("lookup_order", "t1"))
    d.upstream(tool_call("lookup_order", "t2"))
    d.upstream(tool_call("nope", "t3"))
    d.tool_finished("t1", ToolOutcome.success("shipped"))
    d.tool_finished("t2", ToolOutcome.failure("timeout", "no answer in 5 s", "The system is slow."))
    d.upstream(tool_call("transfer_call", "t4", json.dumps({"destination": "sales"})))
    assert kinds(d) == [
        ("tool_call", (("tool", "nope"), ("outcome", "unknown_tool"))),
        ("tool_call", (("tool", "lookup_order"), ("outcome", "ok"))),
        ("tool_call", (("tool", "lookup_order"), ("outcome", "timeout"))),
        ("tool_call", (("tool", "transfer_call"), ("outcome", "ok"))),
        ("transfer", (("outcome", "started"),)),
    ]


def test_a_barge_in_and_an_evi_error_are_reported() -> None:
    """A user_interruption that cuts playing audio is one barge-in; an EVI error is reported by its code."""
    d = ready_call()
    d.say("r1", tone(1000), 24000)
    d.advance(100)
    d.call.observed.take()
    d.upstream(evi.UserInterruption(time=1))
    d.upstream(evi.WebSocketError(code="E0101", slug="bad", message="x", type="error"))
    assert kinds(d) == [("barge_in", ()), ("upstream_error", (("code", "E0101"),))]


def test_pending_observations_are_bounded() -> None:
    """Nobody taking them (no metrics) keeps at most MAX_PENDING, the newest."""
    observed = Observations()
    for n in range(MAX_PENDING + 5):
        observed.upstream_error(str(n))
    taken = observed.take()
    assert len(taken) == MAX_PENDING and taken[-1] == Observation("upstream_error", labels=(("code", str(n)),))
    assert observed.take() == []


def test_shutdown_says_the_goodbye_then_ends_the_call_going_away() -> None:
    """In the conversation, shut_down has the agent say the shutdown message; once said and heard the stream
    closes with 1001 and the end reason is shutdown."""
    d = ready_call(shutdown_message="We are closing now.")
    actions = d.call.shut_down(d.now)
    assert d.call.state is CallState.SAYING_GOODBYE
    assert d.to_upstream(actions) == [{"type": "assistant_input", "text": "We are closing now."}]
    d.say("bye", tone(300), 24000)
    d.upstream(evi.AssistantEnd())
    closes = [a for a in d.advance(1500) if isinstance(a, CloseTwilio)]
    state: CallState = d.call.state
    assert state is CallState.CLOSED and d.call.end_reason is EndReason.SHUTDOWN
    assert [c.code for c in closes] == [1001]
    assert d.playback.heard_audio_bytes >= 300 * 8  # the goodbye was heard in full before the close


def test_shutdown_waits_while_the_call_cannot_say_goodbye() -> None:
    """While the upstream is still connecting, shut_down changes nothing (the drain repeats it); before
    `start` it closes the socket at once."""
    d = CallDriver(CallParams())
    d.start()
    assert d.call.shut_down(d.now) == [] and d.call.state is CallState.CONNECTING_UPSTREAM
    waiting = CallDriver(CallParams())
    waiting.call.shut_down(waiting.now)
    assert waiting.call.state is CallState.CLOSED and waiting.call.end_reason is EndReason.SHUTDOWN
