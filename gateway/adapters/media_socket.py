"""Runs one call: the Twilio socket and the upstream socket under one TaskGroup; one ticker serves all calls.

The adapter decides nothing. It stamps each input with ``loop.time()``, hands it to the core, and executes
the returned actions in order. Outgoing frames go through one queue per socket, filled synchronously right
after the core returns, so frames leave in exactly the order the core produced them (a ``clear`` can never
be overtaken by media computed before it) and no reader ever waits on a writer (twilio-media-streams.md P11).
A caller frame with nothing queued ahead of it, for an upstream socket that can take it, is written at once
instead (``Upstream.send_now``): the same order, without a task switch per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from aiohttp import WSMsgType, web

from gateway.adapters.metrics import GatewayMetrics
from gateway.adapters.recordings import Recordings
from gateway.adapters.ticker import ticks
from gateway.codecs.framing import FRAME_MS
from gateway.core.actions import (
    Action,
    CloseTwilio,
    CloseUpstream,
    OpenUpstream,
    RunTool,
    SendTwilio,
    SendUpstream,
    TransferCall,
)
from gateway.core.call import Call
from gateway.core.keepalive import Keepalive, KeepaliveVerdict
from gateway.core.states import CallState, EndReason
from gateway.core.stats import CallStats
from gateway.core.tools import ToolOutcome
from gateway.errors import TwilioRestError, UpstreamProtocolError
from gateway.logs import current_call
from gateway.wire.upstream import SessionStart

log = logging.getLogger("gateway.call")

UPSTREAM_QUEUE_FRAMES = 500  # 10 s of 20 ms audio: beyond this the upstream is not keeping up
UPSTREAM_QUEUE_BYTES = 2**20  # and never more than this many bytes of frames (tool answers can be large)
CLOSE_GRACE_S = 2.0
OFF_LOOP_DECODE_BYTES = 256 * 1024
"""Upstream frames larger than this are decoded in a worker thread, so no call's audio waits for one (§4)."""


class Upstream(Protocol):
    """An open upstream socket (see gateway.adapters.evi_client.UpstreamConnection)."""

    async def send(self, text: str) -> None: ...

    def send_now(self, text: str) -> bool: ...

    def messages(self) -> Any: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    @property
    def close_code(self) -> int | None: ...

    @property
    def close_reason(self) -> str: ...


ConnectUpstream = Callable[[SessionStart], Awaitable[Upstream]]
RunToolCall = Callable[[RunTool], Awaitable[ToolOutcome]]
MoveCall = Callable[[str, str], Awaitable[None]]
"""``(call_sid, target)``: move a live call with a REST update; raises TwilioRestError on failure."""
_TICK_PHASES = itertools.count()
_CLOSE = object()
"""Queued after the frames for the upstream: close it with ``_upstream_close`` (code, reason)."""
_PING = WSMsgType.PING
_PONG = WSMsgType.PONG
"""Control frames for Twilio go through its writer queue like media (``(kind, payload)``), so that they are
bounded by the same send timeout and never interleave with a frame being written."""


class CallRunner:
    """Drives one :class:`Call` over real sockets."""

    def __init__(
        self,
        call: Call,
        ws: web.WebSocketResponse,
        connect_upstream: ConnectUpstream,
        *,
        run_tool: RunToolCall | None = None,
        move_call: MoveCall | None = None,
        metrics: GatewayMetrics | None = None,
        recordings: Recordings | None = None,
        send_timeout_s: float = 5.0,
        twilio_queue_bytes: int = 256 * 1024,
        abort_twilio: Callable[[], None] | None = None,
        twilio_ping_interval_s: float | None = None,
    ) -> None:
        self.call = call
        self.tick_phase = next(_TICK_PHASES)
        """Which rounds of the ticker give this active call its periodic tick (``tick_calls``)."""
        # docs/operations.md §4: a Twilio peer that stops reading is noticed by a send passing send_timeout_s or
        # by our queue passing twilio_queue_bytes; its socket is then aborted (a close frame could not get out).
        self._send_timeout_s = send_timeout_s
        self._twilio_queue_limit = twilio_queue_bytes
        self._twilio_queued_bytes = 0
        self._abort_twilio = abort_twilio
        self._loop = asyncio.get_running_loop()
        # docs/operations.md §4: a ping every twilio_heartbeat_s, its pong due within half of it (RFC 6455 §5.5.2).
        self._keepalive = (
            Keepalive(twilio_ping_interval_s, twilio_ping_interval_s / 2, self._loop.time())
            if twilio_ping_interval_s is not None
            else None
        )
        self._upstream_queued_bytes = 0
        self._recordings = recordings
        # The recording's tap (docs/recordings.md) sees every frame read and written, and what the upstream said.
        self._tap = recordings.tap(call) if recordings is not None else None
        self._ws = ws
        self._connect_upstream = connect_upstream
        self._run_tool = run_tool
        self._move_call = move_call
        self._metrics = metrics
        # The caller frame's added latency, observed per frame: the histogram's own method, bound once.
        self._observe_caller_frame = metrics.frames["caller_to_evi"].observe if metrics is not None else None
        self._side_tasks: set[asyncio.Task[None]] = set()
        # Frames wait with the time their input was read: the writers measure the gateway's added latency.
        self._twilio_out: asyncio.Queue[tuple[SendTwilio | CloseTwilio | tuple[WSMsgType, bytes], float]] = (
            asyncio.Queue()
        )
        self._upstream_out: asyncio.Queue[tuple[str, float] | object] = asyncio.Queue(UPSTREAM_QUEUE_FRAMES)
        self._upstream: Upstream | None = None
        self._upstream_task: asyncio.Task[None] | None = None
        self._upstream_close_requested = False
        self._upstream_close = (1000, "call ended")
        self._upstream_writing = False  # the upstream writer holds a frame it is sending
        self._tg: asyncio.TaskGroup | None = None
        self._closed = asyncio.Event()
        self.upstream_frames_dropped = 0

    @property
    def upstream_queued_bytes(self) -> int:
        """Bytes of frames waiting for the upstream writer (bounded by UPSTREAM_QUEUE_BYTES)."""
        return self._upstream_queued_bytes

    @property
    def twilio_pings_sent(self) -> int:
        """Keepalive pings queued for the Twilio socket so far."""
        return self._keepalive.pings_sent if self._keepalive is not None else 0

    def now(self) -> float:
        """The loop's monotonic clock, in seconds."""
        return self._loop.time()

    async def run(self) -> None:
        """Run until the call is closed and both sockets are shut; then hand the call to the recordings."""
        try:
            await self._run()
        finally:
            if self._recordings is not None and self._tap is not None:
                now = self.now()
                self._recordings.finish(self._tap, self.call.statistics(now), now)

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            reader = tg.create_task(self._read_twilio(), name="twilio-reader")
            writer = tg.create_task(self._write_twilio(), name="twilio-writer")
            await self._closed.wait()
            # Let the writers deliver what the core queued (final media, close frames), then stop all.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(writer), CLOSE_GRACE_S)
            for task in (reader, writer, *self._side_tasks):
                task.cancel()  # a tool request or a REST call still running ends with the call
            if self._upstream_task is not None and not self._upstream_task.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._upstream_task), CLOSE_GRACE_S)
                self._upstream_task.cancel()
        if not self._ws.closed:
            await self._ws.close()

    # -------------------------------------------------------------- executing the core's decisions

    def execute(self, actions: list[Action], input_s: float | None = None) -> None:
        """Queue the core's actions, in order, without awaiting anything (``input_s``: when the input that
        produced them was read; now if not given)."""
        stamp = self._loop.time() if input_s is None else input_s
        for action in actions:
            match action:
                case SendTwilio():
                    self._twilio_out.put_nowait((action, stamp))
                    self._twilio_queued_bytes += len(action.text)
                    if self._twilio_queued_bytes > self._twilio_queue_limit:
                        self._twilio_stalled(f"{self._twilio_queued_bytes} bytes wait for Twilio to read them")
                        return
                case SendUpstream():
                    self._send_upstream(action.text, stamp)
                case OpenUpstream():
                    assert self._tg is not None
                    self._upstream_close_requested = False  # a new socket (a resume): the old close was done
                    self._upstream_task = self._tg.create_task(self._run_upstream(action.session), name="upstream")
                case CloseUpstream():
                    self._upstream_close = (action.code, action.reason)
                    self._close_upstream()
                case CloseTwilio():
                    self._twilio_out.put_nowait((action, stamp))
                case RunTool():
                    self._side_task(self._tool(action), f"tool-{action.endpoint.name}")
                case TransferCall():
                    self._side_task(self._transfer(action), "transfer")
        if self.call.state is CallState.CLOSED:
            self._closed.set()

    def _side_task(self, work: Coroutine[Any, Any, None], name: str) -> None:
        assert self._tg is not None
        task = self._tg.create_task(work, name=name)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _tool(self, action: RunTool) -> None:
        if self._run_tool is None:
            outcome = ToolOutcome.failure("no_tool_client", "this gateway runs no tools", "That tool is not available.")
        else:
            outcome = await self._run_tool(action)
        if self._tap is not None:
            self._tap.tool_finished(action.tool_call_id, outcome)
        self.execute(self.call.tool_finished(action.tool_call_id, outcome, self.now()))

    async def _transfer(self, action: TransferCall) -> None:
        try:
            if self._move_call is None:
                raise TwilioRestError("no Twilio REST credentials configured")
            await self._move_call(action.call_sid, action.target)
        except TwilioRestError as exc:
            self.execute(self.call.transfer_failed(self.now(), str(exc)))

    def _twilio_stalled(self, detail: str) -> None:
        """Twilio is not reading: abort its socket, then let the core end the call (nothing more is queued)."""
        if self.call.state is CallState.CLOSED:
            return
        if self._abort_twilio is not None:
            self._abort_twilio()
        actions = self.call.twilio_stalled(self.now(), detail)
        self.execute([a for a in actions if not isinstance(a, SendTwilio | CloseTwilio)])
        self._closed.set()

    def _send_upstream(self, text: str, stamp: float) -> None:
        upstream = self._upstream
        # Nothing is ahead of this frame: write it now if the socket can take it (no task switch, no timer).
        if (
            upstream is not None
            and not self._upstream_writing
            and self._upstream_out.empty()
            and upstream.send_now(text)
        ):
            if self._observe_caller_frame is not None:
                self._observe_caller_frame(self._loop.time() - stamp)
            return
        if self._upstream_queued_bytes + len(text) > UPSTREAM_QUEUE_BYTES:
            self._upstream_dropped()
            return
        try:
            self._upstream_out.put_nowait((text, stamp))
        except asyncio.QueueFull:
            self._upstream_dropped()
            return
        self._upstream_queued_bytes += len(text)

    def _upstream_dropped(self) -> None:
        self.upstream_frames_dropped += 1
        if self.upstream_frames_dropped == 1:
            log.warning("E> upstream is not keeping up: dropping caller audio")

    def _close_upstream(self) -> None:
        self._upstream_close_requested = True
        if self._upstream is None:
            if self._upstream_task is not None:
                self._upstream_task.cancel()
            return
        with contextlib.suppress(asyncio.QueueFull):
            self._upstream_out.put_nowait(_CLOSE)
        if self._upstream_out.full():
            # Closing matters more than queued audio.
            while not self._upstream_out.empty():
                self._upstream_out.get_nowait()
            self._upstream_queued_bytes = 0
            self._upstream_out.put_nowait(_CLOSE)

    # ------------------------------------------------------------------ the Twilio socket

    async def _read_twilio(self) -> None:
        ws, call, loop_time = self._ws, self.call, self._loop.time
        while True:
            msg = await ws.receive()
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                now = loop_time()
                actions = call.receive_twilio(msg.data, now)
                if len(actions) == 1 and type(actions[0]) is SendUpstream and call.state is not CallState.CLOSED:
                    self._send_upstream(actions[0].text, now)  # a caller frame: the hot path, one action
                else:
                    self.execute(actions, now)
                if self._tap is not None:
                    self._tap.twilio_read(msg.data, now)
                continue
            if msg.type is WSMsgType.PING:  # RFC 6455 §5.5.2: answered with the same payload
                self._twilio_out.put_nowait(((_PONG, msg.data), self.now()))
                continue
            if msg.type is WSMsgType.PONG:
                if self._keepalive is not None:
                    self._keepalive.pong()
                continue
            if msg.type is WSMsgType.ERROR:
                log.warning("T< socket error: %s", ws.exception())
            break
        if self._tap is not None:
            self._tap.twilio_closed(self.now())
        self.execute(self.call.twilio_closed(self.now()))

    async def _write_twilio(self) -> None:
        ws = self._ws
        metrics = self._metrics
        while True:
            item, stamp = await self._twilio_out.get()
            if isinstance(item, tuple):
                kind, payload = item
                if (
                    not ws.closed
                    and await self._send_twilio(ws.ping(payload) if kind is _PING else ws.pong(payload)) is None
                ):
                    return
                continue
            if isinstance(item, CloseTwilio):
                if self._tap is not None:
                    self._tap.twilio_closed(self._loop.time())
                if self.call.end_reason is EndReason.TWILIO_STALLED and self._abort_twilio is not None:
                    self._abort_twilio()  # a peer that does not read would not read our close frame either
                    return
                # The reason is one of our own end-reason words (ASCII, < 123 bytes: RFC 6455 §5.5).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._send_timeout_s):
                        await ws.close(code=item.code, message=item.reason.encode("ascii"))
                return
            self._twilio_queued_bytes -= len(item.text)
            if ws.closed:
                continue
            sent_s = self._loop.time()
            sent = await self._send_twilio(ws.send_str(item.text))
            if sent is None:
                return
            if not sent:
                continue
            if self._tap is not None:
                self._tap.twilio_sent(item, sent_s)
            if metrics is not None:
                if item.kind == "media":
                    metrics.frame_sent("evi_to_caller", self._loop.time() - stamp)
                elif item.kind == "clear":
                    metrics.clear_to_silence.observe(self._loop.time() - stamp)

    async def _send_twilio(self, sending: Coroutine[Any, Any, None]) -> bool | None:
        """Write one frame to Twilio within the send timeout: True when written, False when the socket is gone
        (logged; the frame is dropped), None when Twilio stalled (the call is ending; the writer must stop)."""
        try:
            async with asyncio.timeout(self._send_timeout_s):
                await sending
        except ConnectionError:
            log.info("T> socket gone while sending")
            return False
        except TimeoutError:
            self._twilio_stalled(f"a frame to Twilio was not read within {self._send_timeout_s:g} s")
            return None
        return True

    def tick(self, now: float) -> None:
        """Called by the app-wide ticker whenever the core says the call needs a round (``Call.tick_due``)."""
        if self.call.state is CallState.CLOSED:
            return
        if self._keepalive is not None and (verdict := self._keepalive.poll(now)) is not None:
            if verdict is KeepaliveVerdict.PING:
                self._twilio_out.put_nowait(((_PING, b""), now))
            elif not self._ws.closed:
                # The socket is gone without a word: abort it; the reader then reports it closed (twilio_closed).
                log.warning("T< no pong within %g s of a ping: closing the socket", self._keepalive.timeout_s)
                if self._abort_twilio is not None:
                    self._abort_twilio()
        self.execute(self.call.tick(now), now)

    # ------------------------------------------------------------------ the upstream socket

    async def _run_upstream(self, session: SessionStart) -> None:
        try:
            upstream = await self._connect_upstream(session)
        except ConnectionError as exc:
            log.warning("E> %s", exc)
            self.execute(self.call.upstream_closed(self.now(), None, str(exc)))
            return
        self._upstream = upstream
        assert self._tg is not None
        writer = self._tg.create_task(self._write_upstream(upstream), name="upstream-writer")
        try:
            if self._upstream_close_requested:
                self._upstream_out.put_nowait(_CLOSE)
            self.execute(self.call.upstream_opened(self.now()))
            async for message in upstream.messages():
                now = self.now()
                if len(message) > OFF_LOOP_DECODE_BYTES:
                    await self._receive_big(message, now)
                else:
                    self.execute(self.call.receive_upstream(message, now), now)
                if self._tap is not None:
                    self._tap.upstream_read(message, now)
        except ConnectionError as exc:
            log.info("E< connection lost: %s", exc)
        finally:
            writer.cancel()
            self._upstream = None
            while not self._upstream_out.empty():  # frames for this socket must not reach a resumed one
                self._upstream_out.get_nowait()
            self._upstream_queued_bytes = 0
            with contextlib.suppress(Exception):
                await upstream.close()
        self.execute(self.call.upstream_closed(self.now(), upstream.close_code, upstream.close_reason))

    async def _receive_big(self, message: str | bytes, now: float) -> None:
        """A big frame spends its budget first, then is decoded off the loop (docs/operations.md §4); the next
        frame is read only after it, so the upstream's order is kept."""
        refused = self.call.upstream_size(len(message), now)
        if refused is not None:
            self.execute(refused, now)
            return
        try:
            event = await asyncio.to_thread(self.call.codec.decode, message)
        except UpstreamProtocolError as exc:
            self.execute(self.call.upstream_undecodable(exc, self.now()), now)
            return
        self.execute(self.call.upstream_event(event, self.now()), now)

    async def _write_upstream(self, upstream: Upstream) -> None:
        metrics = self._metrics
        while True:
            item = await self._upstream_out.get()
            if item is _CLOSE:
                await upstream.close(*self._upstream_close)
                return
            assert isinstance(item, tuple)
            text, stamp = item
            self._upstream_queued_bytes -= len(text)
            self._upstream_writing = True
            try:
                await upstream.send(text)  # bounded by the connection's send timeout (docs/operations.md §4)
            except ConnectionError as exc:
                log.warning("E> %s", exc)
                return
            finally:
                self._upstream_writing = False
            if metrics is not None:
                metrics.frame_sent("caller_to_evi", self._loop.time() - stamp)


async def tick_calls(calls: set[CallRunner]) -> None:
    """One drift-free 20 ms ticker for every call of the app (a task per call costs a wake-up per call).

    The core says which rounds a call needs (``Call.tick_due``): an active call is ticked every
    ``QUIET_TICK_FRAMES`` rounds, on a phase of its own so that those ticks spread over the rounds, and in between
    only when its playout has something due."""
    round_index = 0
    async for now in ticks(FRAME_MS / 1000):
        round_index += 1
        for runner in list(calls):
            if not runner.call.tick_due(round_index + runner.tick_phase, now):
                continue
            current_call.set(runner.call)  # the ticker's lines carry the call they are about
            try:
                runner.tick(now)
            except Exception:  # one call's bug must not stop the clock of the others
                log.exception("tick failed for call %s; closing it", runner.call.call_sid)
                runner.execute(runner.call.twilio_closed(now))


def end_of_call_line(stats: CallStats) -> str:
    """The one structured log line written when a call ends."""
    return json.dumps({"event": "call_ended", **stats.as_dict()}, default=str, separators=(",", ":"))
