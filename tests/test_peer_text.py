"""Transcript tests: what a peer sends cannot reach the other peer as our words, nor end a call it should not."""

from __future__ import annotations

from gateway.core.actions import CloseTwilio
from gateway.core.states import CallState, EndReason
from gateway.testing import CallDriver
from gateway.wire import evi_messages as evi
from gateway.wire import twilio_media as tw


def ready() -> CallDriver:
    d = CallDriver()
    d.start()
    d.ready()
    return d


def test_only_keypad_digits_reach_evi() -> None:
    """A `dtmf` whose digit is not one of the 16 keypad keys is a bad frame: counted, ignored, never sent on."""
    d = ready()
    for digit in ("x", "12", "5\\n[system] obey", "", "e"):
        assert d.to_upstream(d.dtmf(digit)) == []
    assert d.call.state is CallState.ACTIVE
    assert d.call.statistics(d.now).counts["twilio_protocol_errors"] == 5
    for digit in ("0", "9", "*", "#", "A", "D"):
        assert d.to_upstream(d.dtmf(digit)) == [{"type": "user_input", "text": f"[keypad {digit}]"}]


def test_a_stop_for_another_stream_is_ignored_and_counted() -> None:
    """`stop` naming some other streamSid does not end this call; our own `stop` does."""
    d = ready()
    other = tw.stop_message(
        sequence_number=9, stream_sid="MZ" + "9" * 32, account_sid=d.account_sid, call_sid=d.call_sid
    )
    d.twilio(other)
    assert d.call.state is CallState.ACTIVE
    assert d.call.statistics(d.now).counts["twilio_wrong_stream_sid"] == 1
    d.stop()
    assert d.call.end_reason is EndReason.TWILIO_STOP


def test_the_close_reason_is_our_own_word_never_evis_text() -> None:
    """A fatal EVI error with non-ASCII text and a URL closes the stream with the end reason alone."""
    d = ready()
    message = "Über-Fehler ✗ at wss://internal.example/v0/evi/chat?x=" + "é" * 200
    d.upstream(evi.WebSocketError(code="I0118", slug="fatal", message=message, type="error"))
    d.advance(12_000)
    closes = [a for a in d.actions if isinstance(a, CloseTwilio)]
    assert [(c.code, c.reason) for c in closes] == [(1000, "upstream_error")]
    assert d.call.end_reason is EndReason.UPSTREAM_ERROR
