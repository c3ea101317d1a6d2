"""Call recordings and the post-call webhook (docs/recordings.md), off the call path.

:class:`Recordings` is shared by the app. ``tap(call)`` gives each call a :class:`CallTap` that the
:class:`~gateway.adapters.media_socket.CallRunner` feeds the frames it reads and writes; it keeps audio
only once Twilio's ``start`` has named the line and the line has ``record = true``. When the call has
ended, ``finish`` schedules one background task that renders and writes the WAV and JSONL files in a
worker thread (``asyncio.to_thread``) and then POSTs the signed summary. Nothing here raises into a call:
every failure is logged and counted (``gateway_recording_failures_total``, ``gateway_post_call_failures_total``).
"""

from __future__ import annotations

import asyncio
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
from gateway.core.call import Call
from gateway.core.recording import RATE_HZ, CallRecording, RenderedCall
from gateway.core.stats import CallStats
from gateway.wire.tool_http import signed_headers
from gateway.wire.upstream import UpstreamCodec

log = logging.getLogger("gateway.recordings")

POST_CALL_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 10.0
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class CallTap:
    """What one call's runner feeds; errors in here are logged once and never reach the call."""

    def __init__(self, call: Call, codec: UpstreamCodec | None, keep_audio: bool) -> None:
        self.call = call
        self.recording = CallRecording(codec)
        self._keep_audio = keep_audio
        self._decided = False
        self.recorded = False
        """The line asked for a recording and the gateway has somewhere to put it."""
        self._failed = False

    def _active(self) -> bool:
        if not self._decided and self.call.stream_sid is not None:
            self._decided = True  # Twilio's start has been read: the call's line is known
            self.recorded = self._keep_audio and self.call.line.record
        return self.recorded and not self._failed

    def twilio_read(self, text: str | bytes, now_s: float) -> None:
        """A frame read from Twilio, after the core has seen it."""
        if self._active():
            self._guard(self.recording.twilio_read, text, now_s)

    def twilio_written(self, text: str, now_s: float) -> None:
        """A frame written to Twilio."""
        if self._active():
            self._guard(self.recording.twilio_written, text, now_s)

    def upstream_read(self, text: str | bytes, now_s: float) -> None:
        """A frame read from the upstream (tool calls are kept for the summary even without a recording)."""
        self._active()
        if not self._failed:
            self._guard(self._upstream, text, now_s)

    def _upstream(self, text: str | bytes, now_s: float) -> None:
        # Without a recording only tool calls are kept (for the summary); other frames are not decoded.
        if self.recorded or '"tool_call"' in (text if isinstance(text, str) else text.decode("utf-8", "replace")):
            self.recording.upstream_read(text, now_s)

    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            self._failed = True
            log.exception("recording of call %s stopped: it could not follow a frame", self.call.call_sid)


class Recordings:
    """Per app: where recordings go, where summaries go, and the counts of both."""

    ZERO: Mapping[str, int] = MappingProxyType(
        dict.fromkeys(("recordings_written", "recording_failures", "post_call_sent", "post_call_failures"), 0)
    )
    """The counters of an app that records nothing (still exported, as zeros)."""

    def __init__(
        self,
        recordings_dir: Path | None,
        post_call_url: str | None,
        session: aiohttp.ClientSession | None,
        secret: bytes | None,
        codec: UpstreamCodec | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.recordings_dir = recordings_dir
        self.post_call_url = post_call_url
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
        """The four counts, for ``/metrics`` (``gateway_<name>_total``)."""
        return {
            "recordings_written": self.recordings_written,
            "recording_failures": self.recording_failures,
            "post_call_sent": self.post_call_sent,
            "post_call_failures": self.post_call_failures,
        }

    def tap(self, call: Call) -> CallTap | None:
        """A tap for ``call``, or None when there is neither a recordings dir nor a post-call URL."""
        if self.recordings_dir is None and self.post_call_url is None:
            return None
        return CallTap(call, self._codec, keep_audio=self.recordings_dir is not None)

    def finish(self, tap: CallTap | None, stats: CallStats, end_s: float) -> None:
        """Schedule the files and the webhook of an ended call; returns at once."""
        if tap is None:
            return
        try:
            task = asyncio.get_running_loop().create_task(self._finish(tap, stats, end_s), name="post-call")
        except RuntimeError:
            log.warning("call %s: no event loop to write its recording", stats.call_sid)
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, tap: CallTap, stats: CallStats, end_s: float) -> None:
        paths: dict[str, str] = {}
        try:
            if tap.recorded:
                paths = await self._write(tap, stats, end_s)
            if self.post_call_url is not None:
                await self._post(summary(tap, stats, paths))
        except Exception:  # a bug here must not become an unretrieved task exception
            log.exception("post-call work for call %s failed", stats.call_sid)

    async def _write(self, tap: CallTap, stats: CallStats, end_s: float) -> dict[str, str]:
        assert self.recordings_dir is not None
        base = self.recordings_dir / _file_stem(stats)
        try:
            rendered = await asyncio.to_thread(_render_and_write, tap.recording, end_s, base)
        except Exception as exc:  # a full disk, a bad directory, or a bug: the call is over either way
            self.recording_failures += 1
            log.warning("recording of call %s not written to %s: %s", stats.call_sid, self.recordings_dir, exc)
            return {}
        self.recordings_written += 1
        log.info(
            "recording of call %s written: %s (%.1f s, %.1f s heard, %.1f s cut)",
            stats.call_sid,
            base.with_suffix(".wav"),
            rendered.duration_ms / 1000,
            rendered.heard_ms / 1000,
            rendered.cut_ms / 1000,
        )
        return {"wav": str(base.with_suffix(".wav")), "transcript": str(base.with_suffix(".jsonl"))}

    async def _post(self, body_obj: dict[str, Any]) -> None:
        assert self.post_call_url is not None and self._session is not None
        body = json.dumps(body_obj, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")
        headers = signed_headers(self._secret, int(self._clock()), body)
        call_sid = body_obj.get("call_sid")
        try:
            timeout = aiohttp.ClientTimeout(total=POST_CALL_TIMEOUT_S)
            async with self._session.post(self.post_call_url, data=body, headers=headers, timeout=timeout) as resp:
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.post_call_failures += 1
            log.warning("post-call webhook for call %s not delivered: %s", call_sid, type(exc).__name__)
            return
        if 200 <= status < 300:
            self.post_call_sent += 1
            log.info("post-call webhook for call %s delivered (%d)", call_sid, status)
        else:
            self.post_call_failures += 1
            log.warning("post-call webhook for call %s refused: HTTP %d", call_sid, status)

    async def aclose(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Wait (at most ``timeout_s``) for the pending files and webhooks, then cancel what is left."""
        pending = set(self._tasks)
        if not pending:
            return
        _done, late = await asyncio.wait(pending, timeout=timeout_s)
        for task in late:
            task.cancel()
        if late:
            log.warning("%d post-call task(s) still running at shutdown were cancelled", len(late))


def _file_stem(stats: CallStats) -> str:
    name = stats.call_sid or stats.stream_sid or "call"
    return _UNSAFE.sub("_", name)[:80]


def _render_and_write(recording: CallRecording, end_s: float, base: Path) -> RenderedCall:
    """In a worker thread: render, then write ``<base>.wav`` and ``<base>.jsonl`` (each via a temporary file)."""
    rendered = recording.render(end_s)
    base.parent.mkdir(parents=True, exist_ok=True)
    for suffix, data in (
        (".wav", write_wav(rendered.stereo_pcm16, RATE_HZ, channels=2)),
        (".jsonl", rendered.transcript_jsonl().encode("utf-8")),
    ):
        final = base.with_suffix(suffix)
        partial = final.with_name(final.name + ".part")
        partial.write_bytes(data)
        partial.replace(final)
    return rendered


def summary(tap: CallTap, stats: CallStats, paths: dict[str, str]) -> dict[str, Any]:
    """The post-call webhook's JSON body (docs/recordings.md §3)."""
    call = tap.call
    tool_calls = []
    transfer: dict[str, Any] | None = None
    for _now_s, event in tap.recording.tool_calls:
        try:
            parameters = json.loads(event.parameters_json)
        except ValueError:
            parameters = event.parameters_json
        tool_calls.append({"name": event.name, "tool_call_id": event.tool_call_id, "parameters": parameters})
        if event.name == "transfer_call" and isinstance(parameters, dict):
            transfer = {"destination": parameters.get("destination")}
    counts = stats.counts
    if transfer is not None or counts.get("transfers"):
        transfer = {
            **(transfer or {}),
            "started": counts.get("transfers", 0),
            "failed": counts.get("transfers_failed", 0),
        }
    return {
        "event": "call_ended",
        "call_sid": stats.call_sid,
        "stream_sid": stats.stream_sid,
        "from": call.custom_parameters.get("caller_number"),
        "to": call.custom_parameters.get("called_number"),
        "chat_id": stats.upstream_session_id,
        "chat_group_id": stats.upstream_group_id,
        "end_reason": stats.end_reason,
        "end_detail": stats.end_detail,
        "duration_s": stats.duration_s,
        "tool_calls": tool_calls,
        "transfer": transfer,
        "recording": paths or None,
    }
