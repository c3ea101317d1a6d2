"""Transcript tests of call control in the core: tools, transfer, resuming a dropped upstream, EVI errors."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from gateway.codecs.g711 import pcm16_to_ulaw
from gateway.core.actions import CloseTwilio, CloseUpstream, OpenUpstream, RunTool, TransferCall
from gateway.core.lines import LineConfig, SingleLine
from gateway.core.params import CallParams
from gateway.core.states import CallState
from gateway.core.tools import ToolEndpoint, ToolOutcome
from gateway.testing import CallDriver
from gateway.wire import evi_messages as evi

LOOKUP = ToolEndpoint("lookup_order", "http://127.0.0.1:9/tools/lookup_order", "Look up an order")
LINE = LineConfig(
    config_id="cfg-line",
    variables={"brand": "Acme"},
    transfer={"sales": "+15551230000", "support": "sip:support@example.com"},
    tools={"lookup_order": LOOKUP},
)
APOLOGY = pcm16_to_ulaw(np.full(1600, 3000, dtype="<i2").tobytes())  # 200 ms


def tone_pcm(duration_ms: int, rate_hz: int = 24000) -> bytes:
    """A 440 Hz sine as linear16."""
    t = np.arange(duration_ms * rate_hz // 1000) / rate_hz
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()


def driver(**params: Any) -> CallDriver:
    """A ready call on LINE, reached at +15550002222, with Twilio transfers enabled unless told otherwise."""
    params.setdefault("transfers_enabled", True)
    d = CallDriver(CallParams(**params), lines=SingleLine(LINE))
    d.start({"caller_number": "+15550001111", "called_number": "+15550002222"})
    d.ready()
    return d


def tool_call(name: str, parameters: dict[str, Any] | str, call_id: str = "tc-1") -> evi.ToolCallMessage:
    """A function tool_call as EVI sends it (parameters as a JSON string)."""
    text = parameters if isinstance(parameters, str) else json.dumps(parameters)
    return evi.ToolCallMessage(
        name=name, parameters=text, tool_call_id=call_id, response_required=True, tool_type="function"
    )


def test_the_line_sets_the_config_and_session_variables() -> None:
    """The called number's line picks the EVI config, and its variables go out under the call's own."""
    d = CallDriver(CallParams(), lines=SingleLine(LINE))
    opens = [a for a in d.start({"called_number": "+15550002222"}) if isinstance(a, OpenUpstream)]
    assert opens[0].session.config_id == "cfg-line"
    assert dict(opens[0].session.variables) == {
        "brand": "Acme",
        "called_number": "+15550002222",
        "call_sid": d.call_sid,
    }


def test_a_function_tool_is_run_with_its_arguments_and_the_call() -> None:
    """A configured tool becomes one RunTool with parsed parameters and the call's identity; EVI waits."""
    d = driver()
    actions = d.upstream(tool_call("lookup_order", {"order_id": "A17"}))
    runs = [a for a in actions if isinstance(a, RunTool)]
    assert len(runs) == 1 and d.to_upstream(actions) == []
    run = runs[0]
    assert (run.tool_call_id, run.endpoint, run.parameters) == ("tc-1", LOOKUP, {"order_id": "A17"})
    assert dict(run.context) == {
        "call_sid": d.call_sid,
        "from": "+15550001111",
        "to": "+15550002222",
        "chat_id": "chat-1",
        "chat_group_id": "group-1",
    }


def test_a_finished_tool_is_answered_once() -> None:
    """The endpoint's content becomes tool_response; a second result for the same id is ignored."""
    d = driver()
    d.upstream(tool_call("lookup_order", {"order_id": "A17"}))
    sent = d.to_upstream(d.tool_finished("tc-1", ToolOutcome.success('{"status": "shipped"}')))
    assert sent == [{"type": "tool_response", "tool_call_id": "tc-1", "content": '{"status": "shipped"}'}]
    assert d.tool_finished("tc-1", ToolOutcome.success("again")) == []


def test_a_failed_tool_is_answered_with_an_error_the_model_can_say() -> None:
    """A failure becomes tool_error with its code, error and a sentence for the model."""
    d = driver()
    d.upstream(tool_call("lookup_order", {"order_id": "A17"}))
    outcome = ToolOutcome.failure("timeout", "no answer within 5 s", "The order system is not answering.")
    sent = d.to_upstream(d.tool_finished("tc-1", outcome))
    assert sent == [
        {
            "type": "tool_error",
            "tool_call_id": "tc-1",
            "error": "no answer within 5 s",
            "content": "The order system is not answering.",
            "code": "timeout",
        }
    ]


@pytest.mark.parametrize(
    ("name", "parameters", "code"),
    [("weather", {}, "unknown_tool"), ("lookup_order", "not json", "invalid_parameters")],
)
def test_a_tool_the_line_cannot_run_is_refused_at_once(name: str, parameters: Any, code: str) -> None:
    """An unknown tool or unreadable arguments get a tool_error straight away: EVI is never left waiting."""
    d = driver()
    actions = d.upstream(tool_call(name, parameters))
    assert not any(isinstance(a, RunTool) for a in actions)
    (sent,) = d.to_upstream(actions)
    assert sent["type"] == "tool_error" and sent["code"] == code and sent["content"]


def test_builtin_tools_are_only_observed() -> None:
    """EVI runs its built-in tools itself: the gateway sends nothing back."""
    d = driver()
    builtin = evi.ToolCallMessage(
        name="web_search", parameters="{}", tool_call_id="tc-9", response_required=False, tool_type="builtin"
    )
    assert d.to_upstream(d.upstream(builtin)) == []
    assert d.call.statistics(d.now).counts["tool_calls"] == 1


def test_a_tool_result_after_the_call_ended_goes_nowhere() -> None:
    """A request still running when the caller hangs up is answered by nobody (the adapter cancels it)."""
    d = driver()
    d.upstream(tool_call("lookup_order", {"order_id": "A17"}))
    d.call.twilio_closed(d.now)
    assert d.tool_finished("tc-1", ToolOutcome.success("late")) == []


def test_transfer_plays_the_hand_off_then_moves_the_call_and_ends_on_stop() -> None:
    """transfer_call → tool_response; the hand-off line is heard; then one TransferCall; Twilio's stop closes
    the upstream only, and the call ended as transferred."""
    d = driver()
    sent = d.to_upstream(d.upstream(tool_call("transfer_call", {"destination": "sales"})))
    assert sent == [
        {"type": "tool_response", "tool_call_id": "tc-1", "content": "Transferring the caller to sales now."}
    ]
    assert d.call.state is CallState.TRANSFERRING
    d.say("handoff", tone_pcm(800), 24000)
    d.upstream(evi.AssistantEnd())
    d.advance(600)
    assert d.call.state is CallState.TRANSFERRING  # the line is still playing
    actions = d.advance(800)
    transfers = [a for a in actions if isinstance(a, TransferCall)]
    assert transfers == [TransferCall(d.call_sid, "sales", "+15551230000")]
    assert d.call.state is CallState.REDIRECTING
    assert d.playback.heard_audio_bytes == pytest.approx(800 * 8, abs=160)
    assert {"type": "pause_assistant_message"} in d.to_upstream(actions)
    actions = d.stop()
    assert any(isinstance(a, CloseUpstream) for a in actions)
    assert d.call.end_reason is not None and d.call.end_reason.value == "transferred"


def test_transfer_to_an_unknown_destination_lists_the_valid_names() -> None:
    """The model may only pick a name of the transfer table; anything else is a tool_error naming them."""
    d = driver()
    (sent,) = d.to_upstream(d.upstream(tool_call("transfer_call", {"destination": "+19005550000"})))
    assert sent["type"] == "tool_error" and sent["code"] == "unknown_destination"
    assert "sales, support" in sent["content"]
    assert d.call.state is CallState.ACTIVE


def test_transfer_without_twilio_credentials_is_refused() -> None:
    """With no REST credentials the gateway cannot move a call, and says so to the model."""
    d = driver(transfers_enabled=False)
    (sent,) = d.to_upstream(d.upstream(tool_call("transfer_call", {"destination": "sales"})))
    assert sent["type"] == "tool_error" and sent["code"] == "transfer_unavailable"


def test_a_failed_redirect_returns_the_caller_to_the_agent() -> None:
    """If Twilio refuses the redirect, the agent resumes and tells the caller."""
    d = driver(agent_silence_grace_s=0.2)
    d.upstream(tool_call("transfer_call", {"destination": "support"}))
    d.advance(300)
    assert d.call.state is CallState.REDIRECTING
    sent = d.to_upstream(d.transfer_failed("HTTP 404"))
    assert d.call.state is CallState.ACTIVE
    assert sent == [
        {"type": "resume_assistant_message"},
        {"type": "assistant_input", "text": LINE.transfer_failed_message},
    ]


def test_a_dropped_upstream_is_resumed_while_the_caller_stays_on() -> None:
    """A 1006 close mid-call reopens the chat group; caller audio in the gap is dropped; then audio flows again."""
    d = driver()
    d.say("r1", tone_pcm(600), 24000)
    actions = d.upstream_closed(1006)
    opens = [a for a in actions if isinstance(a, OpenUpstream)]
    assert d.call.state is CallState.RECONNECTING
    assert len(opens) == 1 and opens[0].session.resume_group_id == "group-1"
    assert not any(isinstance(a, CloseTwilio) for a in actions)
    assert d.to_upstream(d.media(bytes(160))) == []
    assert d.call.statistics(d.now).counts["caller_frames_dropped"] == 1
    d.advance(700)
    assert d.playback.heard_audio_bytes == pytest.approx(600 * 8, abs=160)  # playout went on
    sent = d.to_upstream(d.ready(chat_id="chat-2"))
    assert d.call.state is CallState.ACTIVE and sent[0]["type"] == "session_settings"
    assert [m["type"] for m in d.to_upstream(d.media(bytes(160)))] == ["audio_input"]
    assert d.call.upstream_session_id == "chat-2" and d.call.upstream_group_id == "group-1"


def test_resume_attempts_back_off_then_the_caller_hears_an_apology() -> None:
    """Failed resumes are retried after 1 s and 2 s; after the last one the apology plays and the call ends."""
    d = driver(apology_ulaw=APOLOGY)
    d.upstream_closed(1011)
    opened_at = [d.now]
    for _ in range(2):
        d.upstream_closed(None)  # the attempt could not connect
        for _ in range(200):
            if any(isinstance(a, OpenUpstream) for a in d.advance(20)):
                opened_at.append(d.now)
                break
    waits_s = [later - earlier for earlier, later in zip(opened_at, opened_at[1:], strict=False)]
    assert waits_s == [pytest.approx(1.0, abs=0.03), pytest.approx(2.0, abs=0.03)]  # after each failure
    d.upstream_closed(None)
    assert d.call.state is CallState.ENDING
    d.advance(600)
    assert d.call.state is CallState.CLOSED
    assert d.call.end_reason is not None and d.call.end_reason.value == "upstream_lost"
    assert d.playback.heard_audio_bytes == len(APOLOGY)


def test_a_normal_close_is_not_resumed() -> None:
    """EVI closing with 1000 ends the session: no reconnect."""
    d = driver()
    actions = d.upstream_closed(1000)
    assert not any(isinstance(a, OpenUpstream) for a in actions)
    assert d.call.state in (CallState.ENDING, CallState.CLOSED)


def test_a_non_fatal_error_leaves_the_call_up_and_a_fatal_one_ends_it() -> None:
    """An EVI error about one message is logged; transcription_disconnected ends the call with an apology."""
    d = driver(apology_ulaw=APOLOGY)
    d.upstream(evi.WebSocketError(code="E0101", slug="invalid_message", message="bad field"))
    assert d.call.state is CallState.ACTIVE
    actions = d.upstream(evi.WebSocketError(code="I0118", slug="transcription_disconnected", message="gone"))
    assert "close_upstream" in d.kinds(actions)
    d.advance(400)
    assert d.call.state is CallState.CLOSED
    assert d.call.statistics(d.now).upstream_faults == ("E0101 invalid_message", "I0118 transcription_disconnected")
    assert d.playback.heard_audio_bytes == len(APOLOGY)


def test_hang_up_before_its_goodbye_still_plays_the_goodbye() -> None:
    """A hang_up tool_call that arrives before the goodbye's audio waits for that audio and its end."""
    d = driver()
    d.upstream(
        evi.ToolCallMessage(
            name="hang_up", parameters="{}", tool_call_id="tc-h", response_required=False, tool_type="builtin"
        )
    )
    d.advance(500)
    d.say("bye", tone_pcm(900), 24000)
    d.upstream(evi.AssistantEnd())
    d.advance(1500)
    assert d.call.state is CallState.CLOSED
    assert d.playback.heard_audio_bytes == pytest.approx(900 * 8, abs=160)


def test_an_operator_message_is_spoken_through_the_agent() -> None:
    """A supervisor's text becomes assistant_input on a live call; with no live conversation it is refused."""
    d = driver()
    actions = d.call.operator_say("Your order has shipped.", d.now)
    assert actions is not None
    assert d.to_upstream(actions) == [{"type": "assistant_input", "text": "Your order has shipped."}]
    d.upstream_closed(1000)
    assert d.call.operator_say("too late", d.now) is None
