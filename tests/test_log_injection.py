"""No peer can write a log line of its own (operations.md §3): every value from a peer is escaped and capped by
`gateway.logs.untrusted`, which the handler of `configure_logging` applies to every record, in text and JSON."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest
from twilio.request_validator import RequestValidator

from gateway.logs import LIMIT_CHARS, MESSAGE_LIMIT_CHARS, configure_logging, current_call, untrusted
from gateway.simulator.caller import CallerConfig, SendText, TwilioCaller
from gateway.simulator.evi import EviSimulator
from gateway.simulator.harness import running_gateway
from gateway.wire import evi_messages as evi
from gateway.wire.twilio_media import connected_message, inbound_media_message, start_message

FORGED = "2026-12-02 10:00:00,000 INFO gateway.call forged line"
OWN_TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+ ")
TOKEN = "0123456789abcdef0123456789abcdef"

# ------------------------------------------------------------------------------------------------ the helper


def test_newline_and_carriage_return_are_escaped() -> None:
    """``\\n`` and ``\\r`` become the two characters backslash-n and backslash-r: the value stays on its line."""
    shown = untrusted(f"x\n{FORGED}\r\nFORGED")
    assert shown == f"x\\n{FORGED}\\r\\nFORGED"
    assert shown.splitlines() == [shown]


def test_ansi_escapes_and_other_control_characters_are_escaped() -> None:
    """ESC (a terminal's colour or cursor command), NUL, tab, DEL and C1 controls are written as escapes."""
    assert untrusted("\x1b[2J\x1b[31mred\x00\t\x7f\x85") == "\\x1b[2J\\x1b[31mred\\x00\\t\\x7f\\x85"


def test_line_and_paragraph_separators_and_format_characters_are_escaped() -> None:
    """U+2028 and U+2029 (line breaks to some readers), a right-to-left override and a lone surrogate are escaped;
    a character beyond the BMP that is not printable uses the long form."""
    shown = untrusted("a\u2028b\u2029c\u202ed\udc80e\U000e0001")
    assert shown == "a\\u2028b\\u2029c\\u202ed\\udc80e\\U000e0001"
    assert shown.splitlines() == [shown]


def test_printable_text_is_left_as_it_is() -> None:
    """Letters of any script, spaces, quotes, backslashes and emoji are shown unchanged."""
    text = "Zoë said \"hi\" — 你好 😀 C:\\path 'x'"
    assert untrusted(text) == text


def test_a_huge_string_is_capped_with_a_visible_marker() -> None:
    """A 60 KB value shows its first LIMIT_CHARS characters, then how many were left out."""
    shown = untrusted("y" * 60_000)
    assert shown == "y" * LIMIT_CHARS + f"…(+{60_000 - LIMIT_CHARS} chars)"
    assert untrusted("abcdefghij", limit_chars=4) == "abcd…(+6 chars)"
    assert untrusted("abcd", limit_chars=4) == "abcd"


def test_escapes_count_towards_the_cap() -> None:
    """The cap bounds what is written: an escape is never cut in half, and the marker counts the characters of
    the value not shown."""
    assert untrusted("\n\n\n\n\n", limit_chars=5) == "\\n\\n…(+3 chars)"
    assert len(untrusted("\x00" * 10_000)) <= LIMIT_CHARS + len("…(+10000 chars)")


def test_bytes_are_read_as_utf8_and_the_rest_escaped() -> None:
    """Bytes show their UTF-8 text; bytes that are not UTF-8 show as ``\\xNN``; controls are escaped as for text;
    ``%r`` shows the bytes' own repr."""
    shown = untrusted("é\n".encode() + b"\xff\x1b")
    assert shown == "é\\n\\xff\\x1b"
    assert repr(untrusted(b"a\nb")) == "b'a\\nb'"
    assert untrusted(bytearray(b"x" * 10), limit_chars=3) == "xxx…(+7 chars)"


def test_repr_is_escaped_too_and_the_helper_is_idempotent() -> None:
    """Under ``%r`` the value's repr is shown, capped the same way; passing a result through the helper again
    changes nothing."""
    once = untrusted("a\u2028b" + "z" * 10, limit_chars=8)
    assert str(once) == "a\\u2028b…(+10 chars)"
    assert repr(once) == "'a\\u2028…(+12 chars)"
    assert untrusted(once) is once
    assert repr(untrusted(ValueError("boom\nFORGED"))) == "ValueError('boom\\nFORGED')"


# ------------------------------------------------------------------------------ every record, whatever its call


class Counting(logging.Handler):
    """Counts the records the root logger hands to its handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def configured(log_format: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[io.StringIO, Counting]]:
    """``configure_logging`` as the command line calls it, its stderr captured, each record counted; the root
    logger has no other handler meanwhile and is restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    counting = Counting()
    try:
        configure_logging("info", log_format)
        root.handlers[:] = [h for h in root.handlers if h not in saved[0]] + [counting]
        yield stderr, counting
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_every_string_argument_is_escaped_in_text_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """``%s`` and ``%r`` of a peer's string, bytes or exception stay on the record's line, capped; numbers and
    our own words are formatted as usual."""
    with configured("text", monkeypatch) as (stderr, counting):
        log = logging.getLogger("gateway.call")
        log.info("T< unknown event %r ignored", f"x\n{FORGED}")
        log.warning("T< start rejected: %s (call %s)", "bad token", "CA\r\nFORGED")
        log.info("E< %s after %d ms: %s", ValueError(f"boom\n{FORGED}"), 12, b"\x1b[2J")
        log.info("E< unknown message type %r ignored", "y" * 60_000)
        log.info("T< %(kind)s from %(sid)s", {"kind": "stop", "sid": "MZ\nFORGED"})
    lines = stderr.getvalue().splitlines()
    assert len(lines) == len(counting.records) == 5
    assert all(OWN_TEXT_LINE.match(line) for line in lines), lines
    assert lines[0].endswith(f"T< unknown event 'x\\n{FORGED}' ignored")
    assert lines[1].endswith("T< start rejected: bad token (call CA\\r\\nFORGED)")
    assert lines[2].endswith(f"E< boom\\n{FORGED} after 12 ms: \\x1b[2J")
    assert lines[3].endswith(f"'{'y' * (LIMIT_CHARS - 1)}…(+{60_002 - LIMIT_CHARS} chars) ignored")
    assert lines[4].endswith("T< stop from MZ\\nFORGED")


def test_json_lines_carry_the_escaped_capped_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """In JSON each record is one object; the message, ``extra`` fields and the call's SIDs hold the escaped and
    capped values, as the text lines do."""

    class Call:
        call_sid = "CA\nFORGED"
        stream_sid = "MZ\u2028FORGED"

    with configured("json", monkeypatch) as (stderr, counting):
        token = current_call.set(Call())
        try:
            logging.getLogger("gateway.call").info(
                "E< tool_call %s", "t\r\nFORGED", extra={"peer": "p\x1bq", "headers": {"User-Agent": "u" * 9000}}
            )
        finally:
            current_call.reset(token)
    lines = stderr.getvalue().splitlines()
    assert len(lines) == len(counting.records) == 1
    entry = json.loads(lines[0])
    assert entry["message"] == "E< tool_call t\\r\\nFORGED"
    assert (entry["call_sid"], entry["stream_sid"], entry["peer"]) == ("CA\\nFORGED", "MZ\\u2028FORGED", "p\\x1bq")
    assert entry["headers"]["User-Agent"] == "u" * LIMIT_CHARS + f"…(+{9000 - LIMIT_CHARS} chars)"


def test_a_message_a_library_formatted_itself_is_escaped_and_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A message handed over already formatted (as aiohttp's access log does with header values) is escaped as
    a whole and capped at MESSAGE_LIMIT_CHARS."""
    with configured("text", monkeypatch) as (stderr, counting):
        logging.getLogger("aiohttp.access").info(f'"GET / HTTP/1.1" 200 "x\x1b]0;title\x07\n{FORGED}"')
        logging.getLogger("aiohttp.access").info("u" * 20_000)
    lines = stderr.getvalue().splitlines()
    assert len(lines) == len(counting.records) == 2
    assert lines[0].endswith(f'"x\\x1b]0;title\\x07\\n{FORGED}"')
    assert lines[1].endswith("u" * 100 + f"…(+{20_000 - MESSAGE_LIMIT_CHARS} chars)")


def test_a_traceback_keeps_its_lines_but_each_exception_message_stays_on_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The traceback follows the message as usual; the messages and notes of the exceptions in it, which may
    quote a peer, are escaped onto their own line."""
    with configured("text", monkeypatch) as (stderr, counting):
        try:
            try:
                raise KeyError("first\nFORGED")
            except KeyError as cause:
                error = ValueError(f"boom\x1b[2J\n{FORGED}")
                error.add_note("note\r\nFORGED")
                raise error from cause
        except ValueError:
            logging.getLogger("gateway.call").exception("tick failed")
    lines = stderr.getvalue().splitlines()
    assert len(counting.records) == 1 and OWN_TEXT_LINE.match(lines[0]) and lines[0].endswith("tick failed")
    assert lines[1] == "Traceback (most recent call last):"
    assert "KeyError: 'first\\nFORGED'" in lines
    assert f"ValueError: boom\\x1b[2J\\n{FORGED}" in lines
    assert lines[-1] == "note\\r\\nFORGED"
    assert not any(line.startswith(("FORGED", FORGED)) for line in lines)


def test_a_record_that_does_not_format_still_gives_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A format that does not fit its arguments is reported on one line instead of a multi-line logging error."""
    with configured("text", monkeypatch) as (stderr, counting):
        logging.getLogger("gateway.call").info("count %d\n", "x\nFORGED")
    lines = stderr.getvalue().splitlines()
    assert len(lines) == len(counting.records) == 1
    assert lines[0].endswith("log record not formattable (TypeError): 'count %d\\n'")


def test_a_record_with_nothing_to_escape_is_left_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short printable arguments reach every handler as the call site passed them."""
    with configured("text", monkeypatch) as (stderr, counting):
        logging.getLogger("gateway.call").info("= call %s ended: %s (%d)", "CA1", "twilio_stop", 3)
    (record,) = counting.records
    assert (record.msg, record.args) == ("= call %s ended: %s (%d)", ("CA1", "twilio_stop", 3))
    assert stderr.getvalue().endswith("= call CA1 ended: twilio_stop (3)\n")


# ------------------------------------------------------------------------------------ through a real gateway


def hostile_twilio_frames() -> list[str]:
    """Frames a stranger can send on a signed upgrade before any stream token is checked."""
    return [
        connected_message(),
        json.dumps({"event": f"x\n{FORGED}"}),
        json.dumps({"event": "y" * 60_000}),
        json.dumps({"event": "x\u2028FORGED sep\r\x1b[2K"}),
        start_message(
            sequence_number=1,
            stream_sid="MZ\r\nFORGED stream",
            account_sid="AC\nFORGED account",
            call_sid="CA\r\nFORGED call",
            custom_parameters={"token": "t\nFORGED token"},
        ),
    ]


def assert_own_lines(text: str, log_format: str) -> list[str]:
    """Every line of ``text`` is one the gateway wrote; no line starts with a peer's text; the peer's forged
    line and the 60 KB name appear only escaped and capped. Returns the lines as read (JSON: the messages)."""
    lines = text.splitlines()
    assert lines
    if log_format == "json":
        entries = [json.loads(line) for line in lines]
        assert all(isinstance(e, dict) and {"time", "level", "logger", "message"} <= e.keys() for e in entries)
        shown = [e["message"] for e in entries]
    else:
        assert all(OWN_TEXT_LINE.match(line) for line in lines), [line[:200] for line in lines]
        shown = lines
    assert not any(line.lstrip().startswith(("FORGED", FORGED)) for line in lines)
    assert not any(f"\n{FORGED}" in s or "\r" in s or "\x1b" in s or "\u2028" in s for s in shown)
    assert max(len(line) for line in lines) < MESSAGE_LIMIT_CHARS + 500
    return shown


def serve(log_path: Path, log_format: str) -> subprocess.Popen[bytes]:
    """`gateway serve` on a free port with signatures enforced, its stderr in ``log_path``."""
    environ = {**os.environ, "TWILIO_AUTH_TOKEN": TOKEN, "GATEWAY_LOG_FORMAT": log_format}
    environ.pop("GATEWAY_PUBLIC_URL", None)
    command = [sys.executable, "-m", "gateway", "serve", "--port", "0", "--evi", "simulator", "--evi-cheap"]
    with open(log_path, "wb") as stderr:
        return subprocess.Popen(command, env=environ, stdout=subprocess.PIPE, stderr=stderr)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process")
@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_hostile_twilio_frames_to_gateway_serve_write_no_line_of_their_own(
    tmp_path: Path, log_format: str
) -> None:
    """`gateway serve` as a process: a signed upgrade sends an unknown event carrying a forged log line, a 60 KB
    event name, separators and ANSI escapes, and a `start` whose SIDs hold CR LF; every stderr line is the
    gateway's own, and the peer's text appears in it only escaped."""
    proc = serve(tmp_path / "serve.log", log_format)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        found = re.search(rb"listening on http://([\d.]+:\d+)", line)
        assert found, line
        url = f"ws://{found.group(1).decode()}/twilio/media"
        headers = {"X-Twilio-Signature": RequestValidator(TOKEN).compute_signature(url, {})}
        async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
            for frame in hostile_twilio_frames():
                await ws.send_str(frame)
            closed = await asyncio.wait_for(ws.receive(), 10)
            assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)
    shown = assert_own_lines((tmp_path / "serve.log").read_text(encoding="utf-8"), log_format)
    text = "\n".join(shown)
    assert f"unknown event 'x\\n{FORGED}' ignored" in text
    assert f"{'y' * 100}…(+" in text
    assert "x\\u2028FORGED sep\\r\\x1b[2K" in text
    assert "CA\\r\\nFORGED call" in text


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_hostile_peers_through_the_gateway_app_give_one_line_per_record(
    log_format: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live call on the gateway app with `configure_logging`: the caller sends unknown events and media for a
    forged stream, EVI sends an error, a tool call and an unknown type with CR LF in every string, then closes
    with a forged reason. Stderr holds exactly one line per record, each the gateway's own."""
    with configured(log_format, monkeypatch) as (stderr, counting):
        async with EviSimulator() as sim, running_gateway(sim.url) as gw:
            config = CallerConfig(
                webhook_url=gw.webhook_url, auth_token=gw.auth_token, audio_ulaw=b"\xff" * 1600, hangup_after_ms=60_000
            )
            async with TwilioCaller(config) as caller:
                await caller.dial()
                session = await sim.wait_session()
                await session.wait_message("session_settings")
                for frame in hostile_twilio_frames()[1:4]:
                    caller.send(SendText(frame))
                forged_media = inbound_media_message(
                    sequence_number=90, stream_sid="MZ\r\nFORGED media", chunk=90, timestamp_ms=0, ulaw=b"\xff" * 160
                )
                caller.send(SendText(forged_media))
                await session.send_error("E0\nFORGED code", "slug\r\nFORGED slug", f"msg\n{FORGED}")
                await session.send_message(
                    evi.ToolCallMessage(
                        name="tool\r\nFORGED tool",
                        parameters="{}",
                        tool_call_id="id\nFORGED id",
                        response_required=True,
                        tool_type="function",
                    )
                )
                await session.send_raw(json.dumps({"type": "x\nFORGED type"}))
                await asyncio.sleep(0.3)
                await session.close(4000, "bye\r\nFORGED reason")
                assert await caller.wait_for(lambda r: r.close_code is not None, 10)
    assert not any(record.exc_info for record in counting.records)
    text = stderr.getvalue()
    assert len(text.splitlines()) == len(counting.records)
    shown = "\n".join(assert_own_lines(text, log_format))
    for escaped in (
        f"unknown event 'x\\n{FORGED}' ignored",
        "MZ\\r\\nFORGED media",
        f"msg\\n{FORGED}",
        "tool\\r\\nFORGED tool",
        "'x\\nFORGED type'",
        "bye\\r\\nFORGED reason",
    ):
        assert escaped in shown, escaped
