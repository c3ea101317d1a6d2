"""``gateway bench capacity``: the frame tag, the sink's accounting, the option checks and a tiny real sweep."""

from __future__ import annotations

import binascii
import json
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs.g711 import ulaw_to_pcm16
from gateway.loadtest.capacity import CapacityConfig, format_table, main, run_capacity
from gateway.loadtest.capacity_callers import tagged_media
from gateway.loadtest.relay import FILLER_B64, TAG_BYTES, SinkStats, decode_tag, encode_tag
from gateway.wire.evi_codec import EviCodec
from gateway.wire.twilio_media import inbound_media_message

_FILLER = binascii.a2b_base64(FILLER_B64)


def _audio_input(call_index: int, frame: int, sent_ns: int) -> str:
    """The ``audio_input`` the gateway sends for one tagged caller frame."""
    return EviCodec().encode_audio(ulaw_to_pcm16(encode_tag(call_index, frame, sent_ns) + _FILLER))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1), st.integers(0, 2**63 - 1))
def test_tag_survives_ulaw_decoding(call_index: int, frame: int, sent_ns: int) -> None:
    """A tag written into μ-law is read back exactly from the decoded linear16."""
    ulaw = encode_tag(call_index, frame, sent_ns)
    assert len(ulaw) == TAG_BYTES and 0x7F not in ulaw
    assert decode_tag(ulaw_to_pcm16(ulaw + _FILLER)) == (call_index, frame, sent_ns)


def test_untagged_audio_is_not_mistaken_for_a_frame() -> None:
    """Silence and the filler carry no tag."""
    assert decode_tag(ulaw_to_pcm16(b"\xff" * 160)) is None
    assert decode_tag(ulaw_to_pcm16(_FILLER)) is None


def test_tagged_media_is_the_twilio_media_message() -> None:
    """The callers' hand-built frame is the same JSON as the Twilio media builder's, payload included."""
    text = tagged_media("MZ" + "0" * 32, 7, 4, 3, 123_456_789)
    expected = inbound_media_message(
        sequence_number=7,
        stream_sid="MZ" + "0" * 32,
        chunk=5,
        timestamp_ms=80,
        ulaw=encode_tag(3, 4, 123_456_789) + _FILLER,
    )
    assert json.loads(text) == json.loads(expected)


def test_sink_counts_frames_sent_in_the_window_with_their_latency() -> None:
    """Frames sent inside the window are counted with latency; others, repeats and holes are told apart."""
    stats = SinkStats()
    stats.window(1_000, 2_000)
    stats.audio_input(_audio_input(1, 0, 500), received_ns=900)  # sent before the window
    stats.audio_input(_audio_input(1, 1, 1_000), received_ns=1_000 + 2_000_000)  # 2 ms
    stats.audio_input(_audio_input(1, 1, 1_000), received_ns=1_000 + 3_000_000)  # repeat
    stats.audio_input(_audio_input(1, 4, 1_500), received_ns=1_500 + 50_000)  # frames 2, 3 missing
    stats.audio_input(_audio_input(2, 0, 2_000), received_ns=2_100)  # sent at the window's end: excluded
    report = stats.report()
    assert (report["received"], report["received_total"], report["repeats"], report["gaps"]) == (2, 4, 1, 2)
    assert report["histogram"] == {"200": 1, "5": 1}


def test_sink_reads_every_frame_of_a_coalesced_audio_input() -> None:
    """An audio_input carrying several 20 ms frames (pre-roll) accounts for each of them."""
    stats = SinkStats()
    stats.window(0, 10_000)
    pcm = b"".join(ulaw_to_pcm16(encode_tag(5, n, 100 + n) + _FILLER) for n in range(3))
    stats.audio_input(EviCodec().encode_audio(pcm), received_ns=1_000)
    assert (stats.report()["received"], stats.report()["gaps"]) == (3, 0)


def test_bad_options_exit_with_status_2() -> None:
    """Decreasing levels and a reply longer than its period are refused before anything starts."""
    assert main(["--levels", "50,25"]) == 2
    assert main(["--reply-s", "7", "--reply-every-s", "6"]) == 2


async def test_tiny_sweep_accounts_for_every_frame_on_both_paths() -> None:
    """Two calls through the relay and the gateway: every frame sent arrives, both paths carry replies."""
    config = CapacityConfig(
        levels=(2,), window_s=1.0, settle_s=0.3, budget_s=60, retries=0, pin=False, reply_every_s=0.8, reply_s=0.4
    )
    started_s = time.monotonic()
    report = await run_capacity(config)
    assert time.monotonic() - started_s < 60
    data = json.loads(json.dumps(report.as_dict()))
    assert set(data) >= {"config", "machine", "levels", "stopped", "limit_calls", "calls_per_core", "goal"}
    (level,) = data["levels"]
    for path in ("relay", "gateway"):
        result = level[path]
        assert result["connected"] == 2 and result["closed_early"] == 0, result
        assert result["frames_sent"] > 0 and result["frames_lost"] == 0, result
        assert result["frames_received"] == result["frames_sent"], result
        assert result["sequence_gaps"] == 0 and result["heard_s"] > 0, result
        assert result["p50_ms"] is not None and result["cpu_ms_per_call_s"] > 0, result
    table = format_table(report)
    assert "relay" in table and "gateway" in table and "limit" in table
