"""Locust user: the load test's emulated Twilio call, for more load than one machine gives.

A locustfile (``locust -f gateway/loadtest/locust_user.py``). Owns :class:`TwilioCallUser`, whose one task
places one emulated call through the load-test runner's own per-call coroutine (the same
:class:`~gateway.simulator.caller.TwilioCaller`, scenario turn-taking and measuring as ``gateway
loadtest``), the options that configure it (Locust custom arguments, set on the master and sent to every
worker), and what each finished call tells Locust's statistics: a ``call`` request named after its scenario
(call length, audio heard, the failure if any), and per spoken turn a ``turn`` request ``response latency``
and, for barge-ins, ``barge-in yield``, both on the caller's media clock (metrics.py).

Locust runs users as gevent greenlets on a monkey-patched standard library; the caller is asyncio and
must keep its 20 ms media clock. So each Locust process gets one :class:`CallEngine`: an asyncio event
loop in a real OS thread (started with the original ``_thread.start_new_thread``), where every call of that
process runs concurrently, exactly as in ``gateway loadtest``. The loop is created inside that thread, so on
the patched standard library its selector is gevent's, bound to the thread's own hub: name resolution,
TLS and locks inside the thread cooperate with that hub, never with Locust's. A user's greenlet hands
its call to the loop and sleeps on a libev async watcher, which the loop's thread may signal safely.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import aiohttp
import gevent  # type: ignore[import-untyped]
import gevent.event  # type: ignore[import-untyped]
import gevent.lock  # type: ignore[import-untyped]
import gevent.monkey  # type: ignore[import-untyped]
from locust import User, constant, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.event import EventHook
from locust.exception import StopUser
from locust.runners import STATE_CLEANUP, STATE_STOPPED, STATE_STOPPING, MasterRunner, WorkerRunner

from gateway.codecs.framing import ULAW_BYTES_PER_MS
from gateway.errors import CallFailure, ConfigError
from gateway.loadtest.command import prepare
from gateway.loadtest.metrics import CallResult
from gateway.loadtest.runner import LoadTestConfig, run_call

__all__ = [
    "CallEngine",
    "CallFailure",
    "LocustSample",
    "TwilioCallUser",
    "add_arguments",
    "loadtest_config",
    "report",
    "samples_of",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

REQUEST_CALL = "call"
REQUEST_TURN = "turn"
RESPONSE_LATENCY = "response latency"
BARGE_IN_YIELD = "barge-in yield"
_INDEX_STRIDE = 1_000_000
"""Call indexes of worker ``w`` are ``w * stride + n``: unique across workers (scenario and seed pick)."""
_START_TIMEOUT_S = 10.0
_CANCEL_WAIT_S = 5.0
_CLOSE_WAIT_S = 5.0
_DONE_POLL_S = 1.0


class _Hook(Protocol):
    """The typed face of Locust's (untyped) :class:`~locust.event.EventHook`."""

    def add_listener(self, handler: Callable[..., None]) -> Callable[..., None]: ...

    def fire(self, *, reverse: bool = False, **kwargs: Any) -> None: ...


def _hook(event: EventHook) -> _Hook:
    return cast(_Hook, event)


# ---------------------------------------------------------------------------------------------------
# What Locust is told
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocustSample:
    """One entry for Locust's request statistics; ``response_time_ms=None`` counts without a time."""

    request_type: str
    name: str
    response_time_ms: float | None
    response_length: int
    failure: str | None = None


def samples_of(result: CallResult) -> list[LocustSample]:
    """The call, then each spoken turn's response latency and each barge-in's yield (metrics.py).

    A spoken turn with no reply heard before the caller spoke again or hung up is a failed
    ``response latency``; a barge-in that found the agent silent, or that the agent never yielded to, a
    failed ``barge-in yield``. Failures with nothing measured carry no time, so percentiles stay honest.
    """
    call = LocustSample(
        REQUEST_CALL,
        result.scenario,
        max(0.0, (result.ended_s - result.started_s) * 1000),
        round(result.heard_audio_ms * ULAW_BYTES_PER_MS),
        None if result.ok else result.failure or result.end,
    )
    samples = [call]
    for turn in result.turns:
        if turn.utterance_end_ms is None:
            continue  # keypresses only: nothing was said to answer
        if turn.response_latency_ms is not None:
            samples.append(LocustSample(REQUEST_TURN, RESPONSE_LATENCY, turn.response_latency_ms, 0))
        else:
            why = turn.note or f"no reply heard after turn {turn.index + 1} of scenario {result.scenario!r}"
            samples.append(LocustSample(REQUEST_TURN, RESPONSE_LATENCY, None, 0, why))
        if turn.kind != "barge_in":
            continue
        if turn.barge_in_yield_ms is not None:
            samples.append(LocustSample(REQUEST_TURN, BARGE_IN_YIELD, turn.barge_in_yield_ms, 0))
        elif turn.barge_in_missed:
            what = f"barge-in at turn {turn.index + 1} of scenario {result.scenario!r} found the agent silent"
            samples.append(LocustSample(REQUEST_TURN, BARGE_IN_YIELD, None, 0, what))
        else:
            what = f"the agent never yielded to the barge-in at turn {turn.index + 1} of {result.scenario!r}"
            samples.append(LocustSample(REQUEST_TURN, BARGE_IN_YIELD, None, 0, what))
    return samples


def report(request: EventHook, result: CallResult) -> None:
    """Fire Locust's ``request`` event once per sample of ``result``."""
    context = {"call_sid": result.call_sid, "scenario": result.scenario, "index": result.index}
    for sample in samples_of(result):
        _hook(request).fire(
            request_type=sample.request_type,
            name=sample.name,
            response_time=sample.response_time_ms,
            response_length=sample.response_length,
            exception=None if sample.failure is None else CallFailure(sample.failure),
            context=context,
        )


# ---------------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------------


def add_arguments(parser: LocustArgumentParser) -> None:
    """The load test's options as Locust custom arguments (the master sends them to every worker)."""
    parser.add_argument(
        "--recordings",
        default="",
        env_var="LOCUST_RECORDINGS",
        help="folder of caller recordings and scenarios; the same path must exist on every worker",
    )
    parser.add_argument(
        "--auth-token",
        default="",
        is_secret=True,
        help="Twilio auth token to sign with (default: $TWILIO_AUTH_TOKEN of each worker, which stays off the wire)",
    )
    parser.add_argument(
        "--calls-per-user",
        type=int,
        default=0,
        help="each user places this many calls, then stops; the run ends when every user is done (0: no limit)",
    )
    parser.add_argument("--max-call-s", type=float, default=300.0, help="hang up any call after this long")
    parser.add_argument("--seed", type=int, default=0, help="seed for injected network trouble")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="random extra delay per frame, 0..MS")
    parser.add_argument("--burst", default="", help="EVERY_MS:HOLD_MS: every EVERY_MS hold frames for HOLD_MS")
    parser.add_argument("--drop-ratio", type=float, default=0.0, help="drop this fraction of frames at random")
    parser.add_argument("--drop-every", default="", help="N[:RUN]: drop RUN (default 1) frames of every N")
    parser.add_argument("--drop-keeps-chunk", action="store_true", default=False, help="media.chunk counts frames sent")
    parser.add_argument("--wav-dir", default="", help="write one stereo WAV per call here, on each worker")


def loadtest_config(options: argparse.Namespace, host: str | None) -> LoadTestConfig:
    """The per-call config from Locust's options and ``--host``, checked exactly as ``gateway loadtest``
    checks its own; raises :class:`ConfigError` naming what is wrong."""
    recordings = getattr(options, "recordings", "")
    if not recordings:
        raise ConfigError("no recordings: pass --recordings FOLDER (a path that exists on every worker)")
    args = argparse.Namespace(
        recordings=Path(recordings),
        target=host or None,
        auth_token=options.auth_token or None,
        calls=None,
        concurrency=1,
        ramp_up_s=0.0,
        duration_s=None,
        seed=options.seed,
        max_call_s=options.max_call_s,
        jitter_ms=options.jitter_ms,
        burst=options.burst or None,
        drop_ratio=options.drop_ratio,
        drop_every=options.drop_every or None,
        drop_keeps_chunk=options.drop_keeps_chunk,
        wav_dir=Path(options.wav_dir) if options.wav_dir else None,
        json_out=None,
        html_out=None,
    )
    return prepare(args)


# ---------------------------------------------------------------------------------------------------
# The asyncio side
# ---------------------------------------------------------------------------------------------------


class _Wakeup:
    """Wakes one waiting greenlet from any OS thread (a libev async watcher; ``send`` is thread-safe)."""

    def __init__(self) -> None:
        self._done = gevent.event.Event()
        self._watcher = gevent.get_hub().loop.async_()
        self._watcher.start(self._done.set)

    def send(self) -> None:
        """Wake the waiter; callable from any thread, harmless after :meth:`close`."""
        self._watcher.send()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block this greenlet (only) until :meth:`send`; False on timeout."""
        return bool(self._done.wait(timeout_s))

    def close(self) -> None:
        """Stop the watcher."""
        self._watcher.close()


class CallEngine:
    """One asyncio event loop in a real OS thread, running this process's calls side by side.

    :meth:`run_call` blocks only the calling greenlet. One ``aiohttp`` session serves every call, as in
    ``gateway loadtest``; the loop's clock is the calls' shared ``t0``.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._t0 = 0.0
        self._problem: BaseException | None = None
        self._stopped = _Wakeup()
        started = _Wakeup()
        start_new_thread = gevent.monkey.get_original("_thread", "start_new_thread")
        start_new_thread(self._thread_main, (started,))
        try:
            if not started.wait(_START_TIMEOUT_S):
                raise RuntimeError(f"the call engine's event loop did not start within {_START_TIMEOUT_S:g} s")
        finally:
            started.close()
        if self._problem is not None:
            raise RuntimeError(f"the call engine's event loop failed to start: {self._problem!r}")

    def _thread_main(self, started: _Wakeup) -> None:
        # Created in this thread: on gevent's patched stdlib its selector rides this thread's own hub.
        loop = asyncio.new_event_loop()
        try:
            session = loop.run_until_complete(_open_session())
        except BaseException as exc:  # reported to the greenlet waiting in __init__
            loop.close()
            self._problem = exc
            started.send()
            return
        self._t0, self._session, self._loop = loop.time(), session, loop
        started.send()
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(session.close())
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                self._stopped.send()

    @property
    def running(self) -> bool:
        """Whether the loop is up and accepting calls."""
        return self._loop is not None and not self._loop.is_closed()

    def run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``make()`` on the loop and return its result; if this greenlet is killed (Locust stopping
        the user), the coroutine is cancelled before the kill goes on."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("the call engine is closed")
        wakeup = _Wakeup()
        tasks: list[asyncio.Task[T]] = []

        def begin() -> None:
            job = loop.create_task(make())
            job.add_done_callback(lambda _: wakeup.send())
            tasks.append(job)

        def cancel() -> None:
            for job in tasks:
                job.cancel()

        loop.call_soon_threadsafe(begin)
        try:
            wakeup.wait()
        except BaseException:  # GreenletExit when the user is stopped: end the call in flight, then go on
            loop.call_soon_threadsafe(cancel)
            wakeup.wait(_CANCEL_WAIT_S)
            raise
        finally:
            wakeup.close()
        return tasks[0].result()

    def run_call(self, config: LoadTestConfig, index: int) -> CallResult:
        """Place call ``index`` exactly as ``gateway loadtest`` does, and return what it measured."""
        session = self._session
        if session is None:
            raise RuntimeError("the call engine is closed")
        return self.run(lambda: run_call(config, index, self._t0, session))

    def close(self) -> None:
        """Stop the loop (closing the session) and wait a little for the thread to finish."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(loop.stop)
        self._stopped.wait(_CLOSE_WAIT_S)
        self._stopped.close()


async def _open_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


# ---------------------------------------------------------------------------------------------------
# Locust glue: one engine and one config per process
# ---------------------------------------------------------------------------------------------------


@dataclass
class _Process:
    """This Locust process's engine, its current run's config (or why there is none), and call numbers."""

    environment: Environment | None = None
    engine: CallEngine | None = None
    engine_lock: Any = field(default_factory=lambda: gevent.lock.Semaphore())
    config: LoadTestConfig | None = None
    problem: str | None = None
    numbers: itertools.count[int] = field(default_factory=itertools.count)


_PROCESS = _Process()


def _configure(environment: Environment) -> None:
    options = environment.parsed_options or argparse.Namespace()
    try:
        _PROCESS.config, _PROCESS.problem = loadtest_config(options, environment.host), None
    except ConfigError as exc:
        _PROCESS.config, _PROCESS.problem = None, str(exc)
        log.error("gateway calls cannot start: %s", exc)


def _engine() -> CallEngine:
    with _PROCESS.engine_lock:  # starting the loop yields to other users, who must wait for this one
        if _PROCESS.engine is None or not _PROCESS.engine.running:
            _PROCESS.engine = CallEngine()
        return _PROCESS.engine


@_hook(events.init_command_line_parser).add_listener
def _on_parser(parser: LocustArgumentParser, **_: Any) -> None:
    add_arguments(parser)


@_hook(events.init).add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    _PROCESS.environment = environment


@_hook(events.spawning_complete).add_listener
def _on_spawning_complete(**_: Any) -> None:
    environment = _PROCESS.environment
    if environment is None or isinstance(environment.runner, WorkerRunner):
        return
    if getattr(environment.parsed_options, "calls_per_user", 0) > 0:
        gevent.spawn(_end_when_users_are_done, environment)


def _end_when_users_are_done(environment: Environment) -> None:
    """Poll the user count (the master's comes with each worker's stats report, so those stats are in);
    at zero, quit a headless run or stop one driven from the web UI."""
    runner = environment.runner
    while runner is not None and runner.state not in (STATE_STOPPING, STATE_STOPPED, STATE_CLEANUP):
        gevent.sleep(_DONE_POLL_S)
        if runner.user_count == 0:
            log.info("every user is done (--calls-per-user): ending the run")
            if getattr(environment.parsed_options, "headless", False):
                runner.quit()
            else:
                runner.stop()
            return


@_hook(events.test_start).add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    # On a worker this runs after the master's options have arrived; the master places no calls.
    if not isinstance(environment.runner, MasterRunner):
        _configure(environment)


@_hook(events.quitting).add_listener
def _on_quitting(environment: Environment, **_: Any) -> None:
    if _PROCESS.engine is not None:
        _PROCESS.engine.close()
        _PROCESS.engine = None


class TwilioCallUser(User):
    """A caller who places one emulated Twilio call per task, back to back, at ``--host``."""

    wait_time = constant(0)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.calls_placed = 0

    @task
    def call(self) -> None:
        """Place one call and report it and its turns to Locust's statistics."""
        if _PROCESS.config is None and _PROCESS.problem is None:
            _configure(self.environment)
        config = _PROCESS.config
        if config is None:
            _hook(self.environment.events.request).fire(
                request_type=REQUEST_CALL,
                name="configuration",
                response_time=None,
                response_length=0,
                exception=ConfigError(_PROCESS.problem or "no configuration"),
                context={},
            )
            raise StopUser()
        engine = _engine()
        worker = int(getattr(self.environment.runner, "worker_index", 0) or 0)
        index = max(worker, 0) * _INDEX_STRIDE + next(_PROCESS.numbers)
        result = engine.run_call(config, index)
        report(self.environment.events.request, result)
        self.calls_placed += 1
        quota = int(getattr(self.environment.parsed_options, "calls_per_user", 0) or 0)
        if 0 < quota <= self.calls_placed:
            raise StopUser()
