"""The outbound playout buffer: pacing, coalescing, marks, barge-in and played-audio accounting."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gateway.core.playout import MarkEcho, PlayoutBuffer, PlayoutParams, SendClear, SendMark, SendMedia
from gateway.errors import CallStateError, ConfigError
from gateway.ids import MarkName, ResponseId

A = ResponseId("a")
B = ResponseId("b")
TICK_S = 0.02


def audio(n_bytes: int, seed: int = 0) -> bytes:
    """Distinct-looking μ-law bytes, so duplicated or reordered audio shows up in comparisons."""
    return bytes((seed + i) % 251 for i in range(n_bytes))


class Caller:
    """Twilio's side as the buffer models it: plays messages back to back, in order, from when they arrive."""

    def __init__(self) -> None:
        self.play_end_s = -math.inf
        self.media: list[SendMedia] = []
        self.marks: list[SendMark] = []
        self.dry_while_sending = 0

    def receive(self, now_s: float, decisions: list[SendMedia | SendMark]) -> None:
        for decision in decisions:
            if isinstance(decision, SendMedia):
                self.play_end_s = max(self.play_end_s, now_s) + len(decision.ulaw) / 8000
                self.media.append(decision)
            else:
                self.marks.append(decision)

    def ahead_ms(self, now_s: float) -> float:
        return max(0.0, self.play_end_s - now_s) * 1000

    @property
    def heard(self) -> bytes:
        return b"".join(m.ulaw for m in self.media)


def run(buffer: PlayoutBuffer, caller: Caller, start_tick: int, n_ticks: int) -> None:
    for k in range(start_tick, start_tick + n_ticks):
        now_s = k * TICK_S
        caller.receive(now_s, buffer.poll(now_s))


def test_first_poll_sends_whole_messages_until_the_lead_is_reached() -> None:
    """At the start of a response one poll releases max_message_ms messages, each with its mark, until the
    audio at Twilio reaches lead_ms."""
    buffer = PlayoutBuffer(PlayoutParams(lead_ms=160, max_message_ms=100))
    buffer.push(A, audio(8000))
    decisions = buffer.poll(0.0)
    media = [d for d in decisions if isinstance(d, SendMedia)]
    assert [m.duration_ms for m in media] == [100, 100]
    assert [type(d) for d in decisions] == [SendMedia, SendMark, SendMedia, SendMark]
    assert buffer.queued_ms == 1000 - 200


def test_lead_is_respected_and_nothing_underruns_on_a_steady_tick() -> None:
    """Polled every 20 ms, the unplayed audio at Twilio stays within lead + one message and never runs dry."""
    params = PlayoutParams(lead_ms=160, max_message_ms=100)
    buffer = PlayoutBuffer(params)
    pushed = audio(5 * 8000 + 37)
    buffer.push(A, pushed)
    buffer.end_response(A)
    caller = Caller()
    for k in range(400):
        now_s = k * TICK_S
        if caller.media and caller.heard != pushed:
            assert caller.play_end_s >= now_s, f"caller ran dry at {now_s}"
        caller.receive(now_s, buffer.poll(now_s))
        assert caller.ahead_ms(now_s) <= params.lead_ms + params.max_message_ms
    assert caller.heard == pushed
    assert buffer.statistics().underruns == 0


def test_steady_state_sends_one_whole_message_whenever_the_lead_falls() -> None:
    """Polled every 20 ms, the buffer sends a max_message_ms message each time the lead falls below lead_ms:
    five messages (and five marks) a second of speech at 200 ms, not one per tick."""
    buffer = PlayoutBuffer(PlayoutParams(lead_ms=160, max_message_ms=200))
    buffer.push(A, audio(3 * 8000))
    caller = Caller()
    run(buffer, caller, 0, 101)  # two seconds of ticks
    assert [m.duration_ms for m in caller.media] == [200] * 11
    assert buffer.statistics().marks_sent == 11
    assert buffer.statistics().underruns == 0


def test_late_tick_catches_up_in_one_coalesced_message() -> None:
    """A tick arriving 60 ms late releases one message of max_message_ms, restoring the lead."""
    params = PlayoutParams(lead_ms=160, max_message_ms=100)
    buffer = PlayoutBuffer(params)
    buffer.push(A, audio(8000))
    caller = Caller()
    caller.receive(0.0, buffer.poll(0.0))
    decisions = buffer.poll(0.08)
    caller.receive(0.08, decisions)
    assert [d.duration_ms for d in decisions if isinstance(d, SendMedia)] == [100]
    assert caller.ahead_ms(0.08) == pytest.approx(220)


@pytest.mark.parametrize(("frame_ms", "max_message_ms", "lead_ms"), [(20, 100, 160), (20, 20, 60), (10, 50, 500)])
def test_messages_never_exceed_max_message_ms(frame_ms: int, max_message_ms: int, lead_ms: int) -> None:
    """Every media message is at most max_message_ms and is made of whole frames."""
    buffer = PlayoutBuffer(PlayoutParams(lead_ms=lead_ms, max_message_ms=max_message_ms, frame_ms=frame_ms))
    buffer.push(A, audio(3 * 8000))
    caller = Caller()
    run(buffer, caller, 0, 200)
    assert caller.heard == audio(3 * 8000)
    assert all(len(m.ulaw) <= max_message_ms * 8 for m in caller.media)
    assert all(len(m.ulaw) % (frame_ms * 8) == 0 for m in caller.media)


def test_all_audio_is_sent_once_and_in_order() -> None:
    """Audio pushed in odd-sized pieces across two responses comes out byte-identical, in push order."""
    buffer = PlayoutBuffer()
    first = [audio(n, seed) for seed, n in enumerate([1, 159, 161, 700, 3, 0, 999])]
    second = [audio(n, seed + 50) for seed, n in enumerate([320, 77])]
    for piece in first:
        buffer.push(A, piece)
    buffer.end_response(A)
    for piece in second:
        buffer.push(B, piece)
    buffer.end_response(B)
    caller = Caller()
    run(buffer, caller, 0, 300)
    assert b"".join(m.ulaw for m in caller.media if m.response_id == A) == b"".join(first)
    assert b"".join(m.ulaw for m in caller.media if m.response_id == B) == b"".join(second)
    assert [m.response_id for m in caller.media] == sorted(m.response_id for m in caller.media)
    assert buffer.sent_ms(A) == sum(map(len, first)) // 8
    assert buffer.statistics().sent_ms == (sum(map(len, first)) + sum(map(len, second))) // 8


def test_partial_frame_waits_for_more_audio_or_end_response() -> None:
    """A partial trailing frame is held until the response continues or ends, then sent unpadded."""
    buffer = PlayoutBuffer()
    buffer.push(A, audio(200))
    caller = Caller()
    caller.receive(0.0, buffer.poll(0.0))
    assert caller.heard == audio(200)[:160]
    assert buffer.queued_ms == 5
    buffer.end_response(A)
    caller.receive(0.02, buffer.poll(0.02))
    assert caller.heard == audio(200)
    assert len(caller.media[-1].ulaw) == 40


def test_messages_do_not_mix_responses() -> None:
    """Frames of two responses queued back to back go out in separate messages."""
    buffer = PlayoutBuffer(PlayoutParams(lead_ms=500, max_message_ms=100))
    buffer.push(A, audio(240))
    buffer.end_response(A)
    buffer.push(B, audio(240, 9))
    decisions = buffer.poll(0.0)
    media = [d for d in decisions if isinstance(d, SendMedia)]
    assert [(m.response_id, len(m.ulaw)) for m in media] == [(A, 240), (B, 160)]


def test_mark_follows_every_message_and_names_are_unique_across_generations() -> None:
    """Each media message is followed by a mark, and no mark name repeats across clears."""
    buffer = PlayoutBuffer(PlayoutParams(mark_prefix="r:"))
    names: list[str] = []
    now_s = 0.0
    for generation in range(4):
        rid = ResponseId(f"resp{generation}")
        buffer.push(rid, audio(4000))
        for _ in range(5):
            decisions = buffer.poll(now_s)
            for i, decision in enumerate(decisions):
                if isinstance(decision, SendMedia):
                    assert isinstance(decisions[i + 1], SendMark)
                if isinstance(decision, SendMark):
                    names.append(decision.name)
            now_s += TICK_S
        assert buffer.clear(now_s) == [SendClear()]
    assert len(names) == len(set(names)) > 4
    assert all(name.startswith("r:") for name in names)


def test_played_ms_advances_with_echoes_in_the_current_generation() -> None:
    """An echoed mark advances its response's played ms to the mark's position, never backwards."""
    buffer = PlayoutBuffer(PlayoutParams(lead_ms=160, max_message_ms=100))
    buffer.push(A, audio(8000))
    marks = [d for d in buffer.poll(0.0) if isinstance(d, SendMark)]
    assert buffer.played_ms(A) == 0
    second = buffer.mark_echoed(marks[1].name)
    assert second == MarkEcho("played", A, 200, False)
    assert buffer.mark_echoed(marks[0].name).played_ms == 200
    assert buffer.played_ms(A) == 200
    assert buffer.sent_ms(A) == 200


def test_stale_echoes_after_clear_advance_nothing() -> None:
    """Echoes of marks sent before a clear are stale and leave played ms unchanged (twilio-media-streams.md P6)."""
    buffer = PlayoutBuffer(PlayoutParams(lead_ms=160, max_message_ms=100))
    buffer.push(A, audio(8000))
    marks = [d for d in buffer.poll(0.0) if isinstance(d, SendMark)]
    assert buffer.mark_echoed(marks[0].name).status == "played"
    assert buffer.clear(0.12) == [SendClear()]
    echo = buffer.mark_echoed(marks[1].name)
    assert echo == MarkEcho("stale", A, 100, False)
    assert buffer.played_ms(A) == 100
    stats = buffer.statistics()
    assert (stats.marks_played, stats.marks_stale) == (1, 1)


def test_unknown_and_repeated_echoes_are_tolerated() -> None:
    """A mark name the buffer never sent, or one already echoed, is reported as unknown."""
    buffer = PlayoutBuffer()
    buffer.push(A, audio(160))
    mark = next(d for d in buffer.poll(0.0) if isinstance(d, SendMark))
    assert buffer.mark_echoed("someone-else") == MarkEcho("unknown", None, 0, False)
    assert buffer.mark_echoed(mark.name).status == "played"
    assert buffer.mark_echoed(mark.name).status == "unknown"
    assert buffer.statistics().marks_unknown == 2


def test_barge_in_drops_exactly_what_was_not_sent() -> None:
    """After clear, sent plus dropped equals everything pushed, and nothing more is sent."""
    buffer = PlayoutBuffer()
    pushed = audio(3 * 8000 + 40)
    buffer.push(A, pushed)
    caller = Caller()
    run(buffer, caller, 0, 10)
    assert buffer.clear(0.2) == [SendClear()]
    stats = buffer.statistics()
    assert len(caller.heard) + stats.dropped_ms_on_clear * 8 == len(pushed)
    assert stats.dropped_ms_on_clear > 0
    assert (stats.queued_ms, stats.frames_queued, stats.generation, stats.clears) == (0, 0, 1, 1)
    assert pushed.startswith(caller.heard)
    run(buffer, caller, 11, 20)
    assert len(caller.heard) + stats.dropped_ms_on_clear * 8 == len(pushed)


def test_audio_of_a_cleared_response_is_refused() -> None:
    """Pushing audio for a response cut off by clear is our bug (the outbound side drops late audio, P5);
    ending it is a no-op, and the next response plays."""
    buffer = PlayoutBuffer()
    buffer.push(A, audio(800))
    buffer.poll(0.0)
    buffer.clear(0.05)
    with pytest.raises(CallStateError, match="cut off"):
        buffer.push(A, audio(480))
    buffer.end_response(A)
    buffer.push(B, audio(160))
    decisions = buffer.poll(0.06)
    assert [d.response_id for d in decisions if isinstance(d, SendMedia)] == [B]
    assert buffer.played_ms(A) == 0


def test_next_response_after_clear_starts_with_a_full_burst() -> None:
    """After a clear Twilio holds nothing, so the next response again gets its lead at once (whole messages
    until lead_ms is reached)."""
    buffer = PlayoutBuffer(PlayoutParams(lead_ms=160, max_message_ms=100))
    buffer.push(A, audio(8000))
    buffer.poll(0.0)
    buffer.clear(0.02)
    buffer.push(B, audio(8000, 3))
    decisions = buffer.poll(0.02)
    assert sum(d.duration_ms for d in decisions if isinstance(d, SendMedia)) == 200


def test_clear_with_nothing_playing_or_queued_sends_nothing() -> None:
    """clear() returns nothing when Twilio holds nothing and nothing is queued, yet bumps the generation."""
    buffer = PlayoutBuffer()
    assert buffer.clear(1.0) == []
    buffer.push(A, audio(160))
    mark = next(d for d in buffer.poll(1.0) if isinstance(d, SendMark))
    buffer.mark_echoed(mark.name)
    assert buffer.clear(1.5) == []
    assert buffer.generation == 2
    assert buffer.statistics().clears == 0


def test_clear_while_audio_may_still_be_playing_sends_clear() -> None:
    """clear() flushes Twilio while sent audio is still playing, even if every mark was already echoed."""
    buffer = PlayoutBuffer()
    buffer.push(A, audio(800))
    marks = [d for d in buffer.poll(0.0) if isinstance(d, SendMark)]
    for mark in marks:
        buffer.mark_echoed(mark.name)
    assert buffer.clear(0.05) == [SendClear()]


def test_clear_with_unacknowledged_marks_sends_clear() -> None:
    """clear() flushes Twilio while a current-generation mark is unacknowledged, whatever the clock says."""
    buffer = PlayoutBuffer()
    buffer.push(A, audio(160))
    buffer.poll(0.0)
    assert buffer.clear(10.0) == [SendClear()]


def test_clear_with_only_queued_audio_sends_clear() -> None:
    """clear() returns a clear when audio is queued but nothing was sent yet."""
    buffer = PlayoutBuffer()
    buffer.push(A, audio(100))
    assert buffer.clear(0.0) == [SendClear()]
    assert buffer.statistics().dropped_ms_on_clear == 12


def test_final_mark_echo_reports_response_done() -> None:
    """Only the echo of an ended response's final mark reports response_done, and the buffer is then idle."""
    buffer = PlayoutBuffer(PlayoutParams(lead_ms=160, max_message_ms=100))
    buffer.push(A, audio(1600))
    buffer.end_response(A)
    caller = Caller()
    run(buffer, caller, 0, 20)
    assert caller.heard == audio(1600)
    echoes = [buffer.mark_echoed(m.name) for m in caller.marks]
    assert [e.response_done for e in echoes] == [False] * (len(echoes) - 1) + [True]
    assert echoes[-1] == MarkEcho("played", A, 200, True)
    assert len(caller.marks) == len(caller.media)
    assert buffer.idle


def test_end_response_after_last_frame_sent_gets_its_own_final_mark() -> None:
    """Ending a response whose audio was all sent already emits a standalone final mark at the next poll."""
    buffer = PlayoutBuffer()
    buffer.push(A, audio(320))
    first = buffer.poll(0.0)
    buffer.end_response(A)
    second = buffer.poll(0.02)
    assert len(second) == 1 and isinstance(second[0], SendMark)
    for decision in first:
        if isinstance(decision, SendMark):
            assert not buffer.mark_echoed(decision.name).response_done
    assert buffer.mark_echoed(second[0].name) == MarkEcho("played", A, 40, True)


def test_response_without_audio_still_gets_a_final_mark() -> None:
    """end_response for a response that never had audio yields a final mark that reports done."""
    buffer = PlayoutBuffer()
    buffer.end_response(A)
    assert not buffer.idle
    (mark,) = buffer.poll(0.0)
    assert isinstance(mark, SendMark)
    assert buffer.mark_echoed(mark.name) == MarkEcho("played", A, 0, True)


def test_final_mark_waits_behind_queued_audio() -> None:
    """A final mark is released only after every frame queued before it."""
    buffer = PlayoutBuffer(PlayoutParams(lead_ms=40, max_message_ms=40))
    buffer.push(A, audio(800))
    buffer.end_response(B)
    first = buffer.poll(0.0)
    assert [type(d) for d in first] == [SendMedia, SendMark]
    caller = Caller()
    run(buffer, caller, 1, 10)
    final = caller.marks[-1]
    assert buffer.mark_echoed(final.name) == MarkEcho("played", B, 0, True)


def test_final_mark_flushed_by_clear_is_not_done() -> None:
    """A final mark echoed because of clear is stale and does not report the response as heard."""
    buffer = PlayoutBuffer()
    buffer.push(A, audio(320))
    buffer.end_response(A)
    marks = [d for d in buffer.poll(0.0) if isinstance(d, SendMark)]
    buffer.clear(0.01)
    assert buffer.mark_echoed(marks[-1].name) == MarkEcho("stale", A, 0, False)


def test_audio_after_end_response_reopens_the_response() -> None:
    """Audio for an ended response is kept, and its final mark moves behind the new audio."""
    buffer = PlayoutBuffer(PlayoutParams(lead_ms=40, max_message_ms=20))
    buffer.push(A, audio(480))
    buffer.end_response(A)
    early = buffer.poll(0.0)
    buffer.push(A, audio(160, 7))
    buffer.end_response(A)
    caller = Caller()
    caller.receive(0.0, early)
    run(buffer, caller, 1, 10)
    assert caller.heard == audio(480) + audio(160, 7)
    echoes = [buffer.mark_echoed(m.name) for m in caller.marks]
    assert [e.response_done for e in echoes] == [False, False, False, True]


def test_underrun_is_counted_when_audio_stops_mid_response() -> None:
    """An open response whose audio runs out before the caller's buffer is refilled counts one underrun."""
    buffer = PlayoutBuffer()
    buffer.push(A, audio(800))
    caller = Caller()
    run(buffer, caller, 0, 12)
    assert buffer.statistics().underruns == 1
    buffer.push(A, audio(800, 1))
    run(buffer, caller, 12, 12)
    assert buffer.statistics().underruns == 2
    assert buffer.statistics().underruns_paced_late == 0  # nothing was queued: the upstream was late


def test_a_poll_is_due_only_when_it_would_release_audio_a_final_mark_or_notice_an_underrun() -> None:
    """``due`` is true exactly when a poll has work: audio once the lead falls, a final mark at once (even with
    the lead full), the moment the caller's buffer runs dry mid-response (once); false between those."""
    buffer = PlayoutBuffer(PlayoutParams(lead_ms=160, max_message_ms=200))
    assert not buffer.due(0.0)
    buffer.push(A, audio(1600 + 800))  # 300 ms
    assert buffer.due(0.0)
    buffer.poll(0.0)  # 200 ms out: the lead is full
    assert not buffer.due(0.02) and buffer.poll(0.02) == []
    assert buffer.due(0.041)  # 160 ms ahead no more
    buffer.poll(0.041)
    assert not buffer.due(0.06)
    assert not buffer.due(0.3)
    assert buffer.due(0.31)  # the caller ran dry with the response still open: an underrun to count
    buffer.poll(0.31)
    assert buffer.statistics().underruns == 1
    assert not buffer.due(0.5)  # counted once
    buffer.push(B, audio(1600))
    buffer.poll(0.5)
    buffer.end_response(B)  # the lead is full, but the final mark goes at once
    assert buffer.due(0.5)
    assert [type(d) for d in buffer.poll(0.5)] == [SendMark]
    assert not buffer.due(0.55)


def test_late_tick_in_a_long_response_is_an_underrun() -> None:
    """A poll so late that the caller ran dry while frames were still queued counts as an underrun."""
    buffer = PlayoutBuffer()
    buffer.push(A, audio(8000))
    buffer.end_response(A)
    buffer.poll(0.0)
    buffer.poll(0.5)
    assert buffer.statistics().underruns == 1
    assert buffer.statistics().underruns_paced_late == 1  # audio was queued: the poll was late


def test_ended_response_is_not_an_underrun() -> None:
    """Silence after a response that ended and was fully sent, and before the next one, is no underrun."""
    buffer = PlayoutBuffer()
    buffer.push(A, audio(800))
    buffer.end_response(A)
    caller = Caller()
    run(buffer, caller, 0, 50)
    buffer.push(B, audio(160))
    buffer.end_response(B)
    run(buffer, caller, 50, 50)
    assert caller.heard == audio(800) + audio(160)
    assert buffer.statistics().underruns == 0


def test_cleared_response_is_not_an_underrun() -> None:
    """Silence after a barge-in is not an underrun."""
    buffer = PlayoutBuffer()
    buffer.push(A, audio(800))
    buffer.poll(0.0)
    buffer.clear(0.02)
    for k in range(2, 30):
        buffer.poll(k * TICK_S)
    assert buffer.statistics().underruns == 0


def test_idle_means_nothing_queued_or_unacknowledged() -> None:
    """idle is False while audio is queued or marks are unacknowledged, True once all marks are echoed."""
    buffer = PlayoutBuffer()
    states = [buffer.idle]
    buffer.push(A, audio(10))
    states.append(buffer.idle)
    buffer.end_response(A)
    decisions = buffer.poll(0.0)
    states.append(buffer.idle)
    for decision in decisions:
        if isinstance(decision, SendMark):
            buffer.mark_echoed(decision.name)
    states.append(buffer.idle)
    assert states == [True, False, False, True]


def test_send_media_repr_shows_size_not_payload() -> None:
    """SendMedia's repr names the payload size and never the bytes."""
    text = repr(SendMedia(b"\x7f" * 160, A, 20))
    assert "160 bytes" in text
    assert "\\x7f" not in text


@pytest.mark.parametrize("kwargs", [{"frame_ms": 0}, {"max_message_ms": 10, "frame_ms": 20}, {"lead_ms": -1}])
def test_invalid_params_are_config_errors(kwargs: dict[str, Any]) -> None:
    """Impossible playout parameters raise ConfigError."""
    with pytest.raises(ConfigError):
        PlayoutParams(**kwargs)


# ---------------------------------------------------------------------- random interleavings


class PlayoutMachine(RuleBasedStateMachine):
    """Drives the buffer with random pushes, ends, polls, clears and echoes against a byte-exact model."""

    @initialize(
        lead_ms=st.sampled_from([0, 20, 60, 160, 250]),
        frame_ms=st.sampled_from([10, 20]),
        frames_per_message=st.integers(1, 5),
    )
    def setup(self, lead_ms: int, frame_ms: int, frames_per_message: int) -> None:
        self.params = PlayoutParams(lead_ms=lead_ms, frame_ms=frame_ms, max_message_ms=frame_ms * frames_per_message)
        self.buffer = PlayoutBuffer(self.params)
        self.caller = Caller()
        self.now_s = 0.0
        self.seed = 0
        self.next_id = 0
        self.generation = 0
        self.pushed: dict[ResponseId, bytearray] = {}
        self.sent: dict[ResponseId, bytearray] = {}
        self.ended: set[ResponseId] = set()
        self.done: set[ResponseId] = set()
        self.cut: set[ResponseId] = set()
        self.generation_pushed = 0
        self.generation_sent = 0
        self.total_sent = 0
        self.dropped = 0
        self.outstanding: list[tuple[MarkName, int]] = []
        self.names: set[str] = set()

    def _push(self, rid: ResponseId, n_bytes: int) -> None:
        data = audio(n_bytes, self.seed)
        self.seed += n_bytes
        if rid in self.cut:
            with pytest.raises(CallStateError):
                self.buffer.push(rid, data)
            return
        self.buffer.push(rid, data)
        self.pushed.setdefault(rid, bytearray()).extend(data)
        self.sent.setdefault(rid, bytearray())
        self.ended.discard(rid)
        self.done.discard(rid)
        self.generation_pushed += n_bytes

    @rule(n_bytes=st.integers(0, 700))
    def push_new(self, n_bytes: int) -> None:
        self.next_id += 1
        self._push(ResponseId(f"r{self.next_id}"), n_bytes)

    @precondition(lambda self: self.next_id > 0)
    @rule(data=st.data(), n_bytes=st.integers(0, 700))
    def push_known(self, data: st.DataObject, n_bytes: int) -> None:
        rid = ResponseId(f"r{data.draw(st.integers(1, self.next_id))}")
        self._push(rid, n_bytes)

    @precondition(lambda self: self.next_id > 0)
    @rule(data=st.data())
    def end(self, data: st.DataObject) -> None:
        rid = ResponseId(f"r{data.draw(st.integers(1, self.next_id))}")
        self.buffer.end_response(rid)
        if rid not in self.cut:
            self.ended.add(rid)
            self.pushed.setdefault(rid, bytearray())
            self.sent.setdefault(rid, bytearray())

    @rule(step_ms=st.integers(0, 120))
    def poll(self, step_ms: int) -> None:
        self.now_s += step_ms / 1000
        due = self.buffer.due(self.now_s)
        before = self.buffer.statistics()
        decisions = self.buffer.poll(self.now_s)
        if not due:  # a clock may skip a poll that is not due: it would have changed nothing
            assert decisions == [] and self.buffer.statistics() == before
        self._check_decisions(decisions)

    def _check_decisions(self, decisions: list[SendMedia | SendMark]) -> None:
        for i, decision in enumerate(decisions):
            if isinstance(decision, SendMedia):
                assert isinstance(decisions[i + 1], SendMark)
                assert 0 < len(decision.ulaw) <= self.params.max_message_ms * 8
                assert decision.duration_ms == len(decision.ulaw) // 8
                rid = decision.response_id
                assert rid not in self.cut
                self.sent[rid].extend(decision.ulaw)
                assert self.pushed[rid].startswith(self.sent[rid]), "audio duplicated, reordered or invented"
                self.generation_sent += len(decision.ulaw)
                self.total_sent += len(decision.ulaw)
            else:
                assert decision.name not in self.names
                self.names.add(decision.name)
                self.outstanding.append((decision.name, self.generation))
        self.caller.receive(self.now_s, decisions)
        ahead_ms = self.caller.ahead_ms(self.now_s)
        assert ahead_ms <= self.params.lead_ms + self.params.max_message_ms + 1e-6
        if self.buffer.statistics().frames_queued:
            assert ahead_ms >= self.params.lead_ms - 1e-3, "frames held back while the caller's lead is short"

    @rule(step_ms=st.integers(0, 120))
    def clear(self, step_ms: int) -> None:
        self.now_s += step_ms / 1000
        playing = self.caller.play_end_s > self.now_s or any(g == self.generation for _, g in self.outstanding)
        holding = self.generation_pushed > self.generation_sent
        decisions = self.buffer.clear(self.now_s)
        if holding or self.caller.play_end_s > self.now_s + 1e-3:
            assert decisions == [SendClear()]
        if any(g == self.generation for _, g in self.outstanding):
            assert decisions == [SendClear()]
        if not playing and not holding:
            assert decisions == []
        self.generation += 1
        self.dropped += self.generation_pushed - self.generation_sent
        self.generation_pushed = self.generation_sent = 0
        self.cut |= set(self.pushed) - self.done
        self.ended -= self.cut
        self.caller.play_end_s = self.now_s

    @precondition(lambda self: bool(self.outstanding))
    @rule(data=st.data())
    def echo(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.outstanding) - 1))
        name, generation = self.outstanding.pop(index)
        before = {rid: self.buffer.played_ms(rid) for rid in self.pushed}
        echo = self.buffer.mark_echoed(name)
        after = {rid: self.buffer.played_ms(rid) for rid in self.pushed}
        if generation != self.generation:
            assert echo.status == "stale" and not echo.response_done
            assert after == before
            return
        assert echo.status == "played" and echo.response_id is not None
        rid = echo.response_id
        assert {r: v for r, v in after.items() if r != rid} == {r: v for r, v in before.items() if r != rid}
        assert before[rid] <= after[rid] == echo.played_ms <= len(self.sent[rid]) // 8
        if echo.response_done:
            assert rid in self.ended and self.sent[rid] == self.pushed[rid]
            self.done.add(rid)

    @rule()
    def echo_unknown(self) -> None:
        assert self.buffer.mark_echoed("not-a-mark").status == "unknown"

    @rule()
    def drain(self) -> None:
        """End every open response and poll until the queue is empty: all their audio has gone out."""
        for rid in list(self.pushed):
            if rid not in self.cut and rid not in self.ended and rid not in self.done:
                self.buffer.end_response(rid)
                self.ended.add(rid)
        for _ in range(10_000):
            if self.buffer.queued_ms == 0 and self.buffer.statistics().frames_queued == 0:
                break
            self.now_s += TICK_S
            self._check_decisions(self.buffer.poll(self.now_s))
        self.now_s += TICK_S
        self._check_decisions(self.buffer.poll(self.now_s))
        for rid, pushed in self.pushed.items():
            if rid not in self.cut:
                assert self.sent[rid] == pushed

    @invariant()
    def accounting(self) -> None:
        if not hasattr(self, "buffer"):
            return
        stats = self.buffer.statistics()
        assert stats.generation == self.buffer.generation == self.generation
        assert stats.queued_ms == self.buffer.queued_ms == (self.generation_pushed - self.generation_sent) // 8
        assert stats.sent_ms == self.total_sent // 8
        assert stats.dropped_ms_on_clear == self.dropped // 8
        assert stats.marks_sent == len(self.names)
        for rid in self.pushed:
            assert self.buffer.played_ms(rid) <= self.buffer.sent_ms(rid) == len(self.sent[rid]) // 8
        if self.buffer.idle:
            assert self.generation_pushed == self.generation_sent
            assert all(g != self.generation for _, g in self.outstanding)


PlayoutMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_playout_random_interleavings = PlayoutMachine.TestCase
