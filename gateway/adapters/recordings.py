"""Call recordings and the post-call webhook (docs/recordings.md), off the call's path.

One :class:`Recordings` per app. ``tap(call)`` gives each call a :class:`CallTap`, which the call's runner
(gateway.adapters.media_socket) feeds with what it reads from and writes to both sockets; once Twilio's
``start`` has named the call's line, the tap keeps audio if that line has ``record = true`` and a recordings
directory is set. When the call has ended, ``finish`` starts one background task: it renders and writes the
WAV and the JSONL in a worker thread (``asyncio.to_thread``), then POSTs the signed summary. Nothing here
raises into a call; every failure is logged and counted (recordings.md §5), and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aiohttp

from gateway.codecs.wav import write_wav
from gateway.core.actions import SendTwilio
from gateway.core.call import Call
from gateway.core.recording import RATE_HZ, CallRecorder, RenderedCall
from gateway.core.stats import CallStats
from gateway.core.tools import TRANSFER_TOOL, ToolOutcome
from gateway.wire.tool_http import signed_headers
from gateway.wire.upstream import UpstreamCodec

__all__ = ["CLOSE_TIMEOUT_S", "POST_CALL_TIMEOUT_S", "WRITE_TIMEOUT_S", "CallTap", "Recordings", "post_call_body"]

log = logging.getLogger("gateway.recordings")

POST_CALL_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 60.0
"""A recording not written by then (a hung file system) counts as failed; its worker thread is left to end."""
CLOSE_TIMEOUT_S = 10.0
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_COUNTERS = ("recordings_written", "recording_failures", "post_call_sent", "post_call_failures")


class CallTap:
    """What one call's runner feeds (recordings.md §1). It never raises: if it cannot follow a frame, it logs
    why once and stops, and the call goes on."""

    def __init__(self, call: Call, codec: UpstreamCodec | None, *, may_record: bool) -> None:
        self.call = call
        self._codec = codec
        self._may_record = may_record
        self.recorder: CallRecorder | None = None
        """Made once Twilio's ``start`` has been read (the call's line is known then)."""
        self.recorded = False
        """The line asked for a recording and there is a directory to put it in."""
        self.failed = False

    def twilio_read(self, text: str | bytes, now_s: float) -> None:
        """A frame read from Twilio, after the core has handled it."""
        if self.recorder is None and self.call.stream_sid is not None and not self.failed:
            self.recorded = self._may_record and self.call.line.record
            self.recorder = CallRecorder(self._codec, keep_audio=self.recorded)
        if self.recorder is not None:
            self._guard(self.recorder.twilio_read, text, now_s)

    def twilio_sent(self, action: SendTwilio, now_s: float) -> None:
        """A frame the gateway wrote to Twilio."""
        if self.recorder is not None:
            self._guard(self.recorder.twilio_sent, action.text, now_s, kind=action.kind, response_id=action.response_id)

    def twilio_closed(self, now_s: float) -> None:
        """The Twilio socket closed, or the gateway is closing it."""
        if self.recorder is not None:
            self._guard(self.recorder.twilio_ended, now_s)

    def upstream_read(self, text: str | bytes, now_s: float) -> None:
        """A frame read from the upstream."""
        if self.recorder is not None:
            self._guard(self.recorder.upstream_read, text, now_s)

    def tool_finished(self, tool_call_id: str, outcome: ToolOutcome) -> None:
        """The gateway's HTTP call of a tool ended."""
        if self.recorder is not None:
            self._guard(self.recorder.tool_finished, tool_call_id, "ok" if outcome.ok else outcome.code or "error")

    def _guard(self, method: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        if self.failed:
            return
        try:
            method(*args, **kwargs)
        except Exception:  # a bug in the recorder must not become the call's problem
            self.failed = True
            log.exception("call %s: the recording stopped, it could not follow a frame", self.call.call_sid)


class Recordings:
    """Per app: where recordings go, where summaries go, and the counts of both (``/metrics``)."""

    ZERO: Mapping[str, int] = MappingProxyType(dict.fromkeys(_COUNTERS, 0))
    """The counters of an app that records nothing (still exported, as zeros)."""

    def __init__(
        self,
        recordings_dir: Path | None,
        post_call_url: str | None,
        session: aiohttp.ClientSession | None,
        secret: bytes | None,
        codec: UpstreamCodec | None = None,
        *,
        post_call_timeout_s: float = POST_CALL_TIMEOUT_S,
        write_timeout_s: float = WRITE_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.recordings_dir = recordings_dir
        self.post_call_url = post_call_url
        self.post_call_timeout_s = post_call_timeout_s
        self.write_timeout_s = write_timeout_s
        self._session = session
        self._secret = secret
        self._codec = codec
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self.recordings_written = 0
        self.recording_failures = 0
        self.post_call_sent = 0
        self.post_call_failures = 0

    def counters(self) -> dict[str, int]:
        """The four counts, exported as ``gateway_<name>_total``."""
        return {name: getattr(self, name) for name in _COUNTERS}

    @property
    def pending(self) -> int:
        """Ended calls whose files or webhook are still being worked on."""
        return len(self._tasks)

    def tap(self, call: Call) -> CallTap:
        """A tap for one call."""
        return CallTap(call, self._codec, may_record=self.recordings_dir is not None)

    def finish(self, tap: CallTap, stats: CallStats, end_s: float) -> None:
        """The call has ended: schedule its files and its webhook; returns at once and never raises."""
        tap.twilio_closed(end_s)  # no-op when the runner saw the socket close earlier
        if tap.recorder is None:
            return  # no ``start`` was read: not a call with a line or a CallSid
        try:
            task = asyncio.get_running_loop().create_task(self._finish(tap, stats), name="post-call")
        except RuntimeError:
            log.warning("call %s: no event loop left to write its recording or send its summary", stats.call_sid)
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, tap: CallTap, stats: CallStats) -> None:
        try:
            rendered: RenderedCall | None = None
            paths: dict[str, str] = {}
            if tap.recorded:
                rendered, paths = await self._write(tap, stats)
            if self.post_call_url is not None:
                await self._post(post_call_body(tap, stats, paths, rendered))
        except Exception:  # a bug here must not become an unretrieved task exception
            log.exception("call %s: post-call work failed", stats.call_sid)

    async def _write(self, tap: CallTap, stats: CallStats) -> tuple[RenderedCall | None, dict[str, str]]:
        assert self.recordings_dir is not None and tap.recorder is not None
        if tap.failed:
            self.recording_failures += 1
            log.warning("call %s: recording not written, the recorder stopped during the call", stats.call_sid)
            return None, {}
        stem = _UNSAFE.sub("_", stats.call_sid or stats.stream_sid or "call")[:80]
        work = asyncio.to_thread(_render_and_write, tap.recorder, self.recordings_dir, stem, stats.stream_sid)
        try:
            rendered, paths = await asyncio.wait_for(work, self.write_timeout_s)
        except (OSError, TimeoutError) as exc:
            self.recording_failures += 1
            reason = str(exc) or type(exc).__name__
            log.warning("call %s: recording not written to %s: %s", stats.call_sid, self.recordings_dir, reason)
            return None, {}
        except Exception:
            self.recording_failures += 1
            log.exception("call %s: recording not written to %s", stats.call_sid, self.recordings_dir)
            return None, {}
        self.recordings_written += 1
        log.info(
            "call %s: recording written to %s (%.1f s, %.1f s of agent audio heard, %.1f s cut)",
            stats.call_sid,
            paths["wav"],
            rendered.duration_ms / 1000,
            rendered.heard_ms / 1000,
            rendered.cut_ms / 1000,
        )
        return rendered, paths

    async def _post(self, payload: dict[str, Any]) -> None:
        assert self.post_call_url is not None and self._session is not None
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")
        headers = signed_headers(self._secret, int(self._clock()), body)
        call_sid = payload.get("call_sid")
        timeout = aiohttp.ClientTimeout(total=self.post_call_timeout_s)
        try:
            async with self._session.post(self.post_call_url, data=body, headers=headers, timeout=timeout) as resp:
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.post_call_failures += 1
            log.warning("call %s: post-call webhook not delivered: %s", call_sid, str(exc) or type(exc).__name__)
            return
        if 200 <= status < 300:
            self.post_call_sent += 1
            log.info("call %s: post-call webhook delivered (HTTP %d)", call_sid, status)
        else:
            self.post_call_failures += 1
            log.warning("call %s: post-call webhook refused: HTTP %d", call_sid, status)

    async def aclose(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """At app clean-up: wait at most ``timeout_s`` for pending files and webhooks, then cancel the rest."""
        pending = set(self._tasks)
        if not pending:
            return
        _done, late = await asyncio.wait(pending, timeout=timeout_s)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=1.0)
            log.warning("%d call(s) still writing or posting at shutdown were cancelled", len(late))


def _render_and_write(
    recorder: CallRecorder, directory: Path, stem: str, stream_sid: str | None
) -> tuple[RenderedCall, dict[str, str]]:
    """In a worker thread: render, then write ``<stem>.wav`` and ``<stem>.jsonl``, each through a ``.part`` file
    renamed into place (a file that exists is whole). An existing recording of the same name is kept."""
    rendered = recorder.render()
    directory.mkdir(parents=True, exist_ok=True)
    if stream_sid and any((directory / f"{stem}{suffix}").exists() for suffix in (".wav", ".jsonl")):
        stem = f"{stem}-{_UNSAFE.sub('_', stream_sid)[:80]}"
    paths = {}
    for key, suffix, data in (
        ("wav", ".wav", write_wav(rendered.stereo_pcm16, RATE_HZ, channels=2)),
        ("transcript", ".jsonl", rendered.transcript_jsonl().encode("utf-8")),
    ):
        final = directory / f"{stem}{suffix}"
        partial = final.with_name(final.name + ".part")
        try:
            partial.write_bytes(data)
            partial.replace(final)
        finally:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
        paths[key] = str(final)
    return rendered, paths


def post_call_body(
    tap: CallTap, stats: CallStats, paths: Mapping[str, str], rendered: RenderedCall | None = None
) -> dict[str, Any]:
    """The post-call webhook's JSON body (recordings.md §3)."""
    recorder = tap.recorder
    tool_calls = recorder.tool_calls if recorder is not None else []
    transfer: dict[str, Any] | None = None
    for seen in tool_calls:
        if seen.name == TRANSFER_TOOL:
            destination = seen.parameters.get("destination") if isinstance(seen.parameters, dict) else None
            transfer = {"destination": destination}
    started, failed = stats.counts.get("transfers", 0), stats.counts.get("transfers_failed", 0)
    if transfer is not None or started:
        transfer = {"destination": None, **(transfer or {}), "started": started, "failed": failed}
    recording: dict[str, Any] | None = None
    if paths and rendered is not None:
        recording = {
            **paths,
            "duration_ms": round(rendered.duration_ms, 1),
            "heard_ms": round(rendered.heard_ms, 1),
            "cut_ms": round(rendered.cut_ms, 1),
        }
    return {
        "event": "call_ended",
        "call_sid": stats.call_sid,
        "stream_sid": stats.stream_sid,
        "from": tap.call.custom_parameters.get("caller_number"),
        "to": tap.call.custom_parameters.get("called_number"),
        "chat_id": stats.upstream_session_id,
        "chat_group_id": stats.upstream_group_id,
        "end_reason": stats.end_reason,
        "end_detail": stats.end_detail,
        "duration_s": stats.duration_s,
        "caller_turns": stats.counts.get("user_turns", 0),
        "response_latencies_ms": recorder.response_latencies_ms if recorder is not None else [],
        "barge_ins": stats.outbound.barge_ins if stats.outbound is not None else 0,
        "tool_calls": [
            {"name": t.name, "tool_call_id": t.tool_call_id, "parameters": t.parameters, "outcome": t.outcome}
            for t in tool_calls
        ],
        "transfer": transfer,
        "recording": recording,
    }
