"""Log lines: JSON objects carrying the call's SIDs on every line of a call, secrets redacted (operations.md §3)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.codecs.g711 import pcm16_to_ulaw
from gateway.logs import JsonFormatter, RedactSecrets, configure_logging
from gateway.simulator.caller import CallerConfig, TwilioCaller
from gateway.simulator.demo import logs_to
from gateway.simulator.evi import EviSimulator
from gateway.simulator.harness import running_gateway
from gateway.simulator.wavgen import speechlike_pcm16


@contextmanager
def json_lines(level: int = logging.INFO) -> Iterator[io.StringIO]:
    """Capture the root logger's records as the gateway's JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_each_record_is_one_json_line_whatever_its_text() -> None:
    """A message with newlines and quotes stays one line; extra fields and the exception are fields."""
    with json_lines() as out:
        log = logging.getLogger("gateway.test")
        log.warning('forged\n2026-01-01 INFO gateway "evil" line', extra={"peer": "10.0.0.1"})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == 'forged\n2026-01-01 INFO gateway "evil" line'
    assert (first["level"], first["logger"], first["peer"]) == ("warning", "gateway.test", "10.0.0.1")
    assert "call_sid" not in first  # not logged from a call
    assert "ValueError: boom" in second["exception"]


def test_secrets_are_redacted_in_json_lines() -> None:
    """An API key in a URL or a header never reaches the output."""
    with json_lines(logging.DEBUG) as out:
        logging.getLogger("websockets.client").debug("> GET /v0/evi/chat?api_key=sk-123&x=1")
        logging.getLogger("websockets.client").debug("> X-Hume-Api-Key: sk-456")
    text = out.getvalue()
    assert "sk-123" not in text and "sk-456" not in text and text.count("***") == 2


async def test_every_line_of_a_call_after_start_carries_its_sids() -> None:
    """Lines logged by the call's tasks and by the shared ticker carry the call and stream SIDs."""
    with json_lines() as out:
        async with EviSimulator() as sim, running_gateway(sim.url) as gw:
            config = CallerConfig(
                webhook_url=gw.webhook_url,
                auth_token=gw.auth_token,
                audio_ulaw=pcm16_to_ulaw(speechlike_pcm16(400, 8000, seed=1)),
                hangup_after_ms=60_000,
            )
            async with TwilioCaller(config) as caller:
                await caller.dial()
                session = await sim.wait_session()
                await session.wait_message("session_settings")
                await caller.hang_up()
                assert await caller.wait_for(lambda r: r.close_code is not None, 5)
        call_sid, stream_sid = caller.config.call_sid, caller.config.stream_sid
    entries = [json.loads(line) for line in out.getvalue().splitlines()]
    of_the_call = [e for e in entries if e["logger"] == "gateway.call"]
    assert of_the_call, entries
    started = next(i for i, e in enumerate(of_the_call) if e.get("stream_sid"))
    assert all((e["call_sid"], e["stream_sid"]) == (call_sid, stream_sid) for e in of_the_call[started:])
    ended = next(e for e in entries if "call_ended" in e["message"])
    assert ended["call_sid"] == call_sid


def test_configure_logging_switches_format() -> None:
    """`json` installs the JSON formatter on the root handler, `text` a plain one; either redacts."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        formatters = []
        for log_format in ("json", "text"):
            configure_logging("info", log_format)
            ours = [h for h in root.handlers if h not in saved[0]]
            assert len(ours) == 1  # the second call replaced the first one's handler
            formatters.append(type(ours[0].formatter))
            assert any(isinstance(f, RedactSecrets) for f in ours[0].filters)
        assert formatters == [JsonFormatter, logging.Formatter]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_the_demo_log_escapes_peer_text_and_redacts_secrets(tmp_path: Path) -> None:
    """``gateway demo``'s log file goes through the gateway's filters: a peer's line break cannot start a forged
    line of its own, and a key in a header line or URL is masked."""
    path = tmp_path / "demo.log"
    with logs_to(path):
        log = logging.getLogger("gateway.test")
        log.warning("E< error from EVI: %s", "bad\n2025-01-01 00:00:00,000 INFO gateway.call = call ended")
        log.info("> X-Hume-Api-Key: sk-live-123")
        log.info("E> connecting to wss://evi.example/chat?api_key=sk-live-456&config_id=c1")
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) == 3
    assert "bad\\n2025-01-01" in text
    assert "sk-live" not in text and text.count("***") == 2
