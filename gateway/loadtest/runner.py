"""Load-test runner: places emulated Twilio calls at a gateway and plays each call's scenario.

Owns the schedule (``calls`` in total or for ``duration_s``, at most ``concurrency`` at once, the first
ones spread over ``ramp_up_s``), one :class:`~gateway.simulator.caller.TwilioCaller` per call (signed
webhook, 20 ms media on a monotonic clock, real-time playout, marks and clear honoured: a faithful peer,
docs/design.md "Test doubles ship with the product"), the turn-taking of each scenario against what the
caller hears, and measuring each call into a :class:`~gateway.loadtest.metrics.CallResult` when it ends.
The caller's audio is kept only as long as the call runs (optionally written to a stereo WAV), so long runs
stay small.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from gateway.errors import ConfigError, DialError
from gateway.loadtest.metrics import CallResult, TurnTiming, setup_times, turn_results
from gateway.loadtest.scenario import Scenario, Turn
from gateway.simulator.caller import CallerConfig, NetworkTrouble, SendDtmf, TwilioCaller
from gateway.simulator.recording import CallRecord, write_stereo_wav

__all__ = ["VOICE_PATH", "LoadTestConfig", "LoadTestResult", "Progress", "run_call", "run_loadtest", "webhook_url_for"]

log = logging.getLogger(__name__)

VOICE_PATH = "/twilio/voice"  # docs/design.md "Routes": the voice webhook
_DTMF_SPACING_MS = 100
_SLACK_S = 30.0
_GIVE_UP_DIAL_ERRORS = 10


def webhook_url_for(target: str) -> str:
    """The voice webhook URL for a gateway's public base URL (a full ``…/twilio/voice`` URL is kept)."""
    parts = urlsplit(target)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"target {target!r} must be the gateway's public http(s) URL, e.g. https://voice.example.com")
    if parts.query or parts.fragment:
        raise ConfigError(f"target {target!r} must not carry a query string or fragment")
    base = target.rstrip("/")
    return base if parts.path.rstrip("/").endswith(VOICE_PATH) else base + VOICE_PATH


@dataclass(frozen=True, slots=True)
class LoadTestConfig:
    """What to run. ``calls=None`` with ``duration_s=None`` plays each scenario once."""

    target: str
    scenarios: tuple[Scenario, ...]
    auth_token: str | None = None
    calls: int | None = None
    concurrency: int = 1
    ramp_up_s: float = 0.0
    duration_s: float | None = None
    seed: int = 0
    network: NetworkTrouble = NetworkTrouble()
    max_call_s: float = 300.0
    wav_dir: Path | None = None
    speech_threshold: int = 300

    def __post_init__(self) -> None:
        webhook_url_for(self.target)
        if not self.scenarios:
            raise ConfigError("a load test needs at least one scenario")
        if self.calls is not None and self.calls < 1:
            raise ConfigError(f"calls must be at least 1, got {self.calls}")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.ramp_up_s < 0:
            raise ConfigError(f"ramp-up must not be negative, got {self.ramp_up_s} s")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ConfigError(f"duration must be positive, got {self.duration_s} s")
        if self.max_call_s <= 0:
            raise ConfigError(f"max call length must be positive, got {self.max_call_s} s")

    @property
    def total_calls(self) -> int | None:
        """Calls to place: ``calls``, or one per scenario, or None (until ``duration_s``)."""
        if self.calls is not None:
            return self.calls
        return None if self.duration_s is not None else len(self.scenarios)


@dataclass
class Progress:
    """Live counters of a run, for the progress line."""

    started: int = 0
    finished: int = 0
    failed: int = 0
    active: int = 0
    latencies_ms: list[float] = field(default_factory=list)


@dataclass
class LoadTestResult:
    """Every call of a run, and how many calls were active over time (seconds since the start)."""

    config: LoadTestConfig
    calls: list[CallResult]
    duration_s: float
    concurrency_timeline: list[tuple[float, int]]
    stopped_early: str | None = None
    """Why no more calls were started before the planned number or duration, if so."""


async def run_loadtest(
    config: LoadTestConfig, *, progress: Progress | None = None, on_change: Callable[[Progress], None] | None = None
) -> LoadTestResult:
    """Run the load test; never raises for a failed call (each one is recorded in the result)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    progress = progress or Progress()
    timeline: list[tuple[float, int]] = [(0.0, 0)]
    results: list[CallResult] = []
    slots = asyncio.Semaphore(config.concurrency)
    total = config.total_calls
    deadline = None if config.duration_s is None else t0 + config.duration_s
    dial_errors = [0]  # consecutive calls that could not even be set up
    give_up_after = max(_GIVE_UP_DIAL_ERRORS, config.concurrency)
    stopped_early: str | None = None

    def changed(delta_active: int) -> None:
        progress.active += delta_active
        timeline.append((loop.time() - t0, progress.active))
        if on_change is not None:
            on_change(progress)

    async def one(index: int, session: aiohttp.ClientSession) -> None:
        try:
            result = await run_call(config, index, t0, session)
        finally:
            slots.release()
        results.append(result)
        dial_errors[0] = dial_errors[0] + 1 if result.end == "dial_error" else 0
        progress.finished += 1
        progress.failed += not result.ok
        progress.latencies_ms.extend(t.response_latency_ms for t in result.turns if t.response_latency_ms is not None)
        changed(-1)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session, asyncio.TaskGroup() as group:
        index = 0
        while total is None or index < total:
            if index < config.concurrency and config.ramp_up_s > 0:
                await asyncio.sleep(max(0.0, t0 + config.ramp_up_s * index / config.concurrency - loop.time()))
            if deadline is not None:
                try:
                    async with asyncio.timeout(max(0.0, deadline - loop.time())):
                        await slots.acquire()
                except TimeoutError:
                    break
            else:
                await slots.acquire()
            if deadline is not None and loop.time() >= deadline:
                slots.release()
                break
            if dial_errors[0] >= give_up_after:
                slots.release()
                stopped_early = f"stopped after {dial_errors[0]} calls in a row could not be set up"
                break
            progress.started += 1
            changed(+1)
            group.create_task(one(index, session), name=f"loadtest-call-{index}")
            index += 1
    results.sort(key=lambda r: r.index)
    return LoadTestResult(config, results, loop.time() - t0, timeline, stopped_early)


def _call_config(config: LoadTestConfig, index: int, scenario: Scenario) -> CallerConfig:
    hangup_ms = round(config.max_call_s * 1000)
    if scenario.hangup_after_ms is not None:
        hangup_ms = min(hangup_ms, scenario.hangup_after_ms)
    seed = config.seed * 1_000_003 + index
    return CallerConfig(
        webhook_url=webhook_url_for(config.target),
        auth_token=config.auth_token,
        hangup_after_ms=hangup_ms,
        network=dataclasses.replace(config.network, seed=seed),
        speech_threshold=config.speech_threshold,
    )


async def run_call(config: LoadTestConfig, index: int, t0: float, session: aiohttp.ClientSession) -> CallResult:
    """Place call ``index`` (scenario ``index % len(scenarios)``) on ``session`` and measure it; ``t0`` is the
    loop time the run began at. Never raises for a failed call (see ``CallResult.failure``)."""
    loop = asyncio.get_running_loop()
    scenario = config.scenarios[index % len(config.scenarios)]
    caller_config = _call_config(config, index, scenario)
    seed = caller_config.network.seed
    result = CallResult(
        index=index,
        scenario=scenario.name,
        call_sid=caller_config.call_sid,
        seed=seed,
        started_s=loop.time() - t0,
        ended_s=0.0,
        ok=False,
        end="error",
    )
    timings: list[TurnTiming] = []
    caller = TwilioCaller(caller_config, session=session)
    limit_s = config.max_call_s + caller_config.webhook_timeout_s + caller_config.connect_timeout_s + _SLACK_S
    try:
        async with caller, asyncio.timeout(limit_s):
            await caller.dial()
            await _play(caller, scenario, timings)
            if not caller.is_closed:
                await caller.hang_up()
        result.end = "caller_hangup" if caller.record.closed_by == "caller" else "gateway_closed"
    except DialError as exc:
        result.end, result.dial_stage, result.dial_status = "dial_error", exc.stage, exc.status
        result.failure = str(exc)
    except TimeoutError:
        result.end, result.failure = "timeout", f"call did not finish within {limit_s:.0f} s"
    except Exception as exc:  # one broken call must not stop the run; it is reported
        log.exception("load-test call %d failed", index)
        result.end, result.failure = "error", f"{type(exc).__name__}: {exc}"
    result.ended_s = loop.time() - t0
    _measure(result, caller.record, scenario, timings, t0)
    if config.wav_dir is not None and result.end != "dial_error":
        path = config.wav_dir / f"call-{index:05d}-{scenario.name}.wav"
        try:
            write_stereo_wav(path, bytes(caller.record.sent_ulaw), bytes(caller.record.heard_ulaw))
        except OSError as exc:
            log.warning("could not write %s: %s", path, exc.strerror or exc)
    return result


def _measure(result: CallResult, rec: CallRecord, scenario: Scenario, timings: list[TurnTiming], t0: float) -> None:
    first_utterance = next((t.utterance.start_ms for t in timings if t.utterance is not None), None)
    result.setup = setup_times(rec, first_utterance)
    result.turns = turn_results(rec, timings, wall_offset_s=t0)
    result.close_code = rec.close_code
    result.media_ms = rec.media_time_ms
    result.heard_audio_ms = rec.heard_audio_ms
    result.cleared_audio_ms = rec.cleared_audio_ms
    result.frames_sent = rec.media_frames_sent
    result.frames_dropped = rec.frames_dropped
    result.max_send_delay_ms = rec.max_send_delay_ms
    result.max_tick_late_ms = rec.max_tick_late_ms
    dry = rec.underruns
    result.underruns = len(dry)
    result.underrun_ms = sum(g.duration_ms for g in dry)
    result.max_underrun_ms = max((g.duration_ms for g in dry), default=0.0)
    result.clears = len(rec.clears)
    result.protocol_violations = list(rec.protocol_violations)
    result.caller_speech = [(s.start_ms, s.end_ms) for s in rec.caller_utterances]
    result.agent_speech = [(s.start_ms, s.end_ms) for s in rec.agent_speech_segments]
    if result.failure is None:
        # The caller hanging up early is the scenario's own hangup_after_ms; the gateway doing so is a failure.
        if len(timings) < len(scenario.turns) and rec.closed_by == "gateway":
            turns = f"{len(timings)} of {len(scenario.turns)} turns"
            result.failure = f"the gateway closed the call (code {rec.close_code}) after {turns}"
        elif rec.protocol_violations:
            result.failure = f"gateway broke the Media Streams protocol: {rec.protocol_violations[0]}"
    result.ok = result.failure is None


async def _play(caller: TwilioCaller, scenario: Scenario, timings: list[TurnTiming]) -> None:
    """Play the turns, reacting to what the caller hears; stop early if the call ends."""
    previous_end_ms = 0.0
    for turn in scenario.turns:
        if caller.is_closed:
            return
        note = await _wait_for_cue(caller, scenario, turn, previous_end_ms)
        for i, digit in enumerate(turn.dtmf):
            if i:
                await caller.wait_media_ms(caller.media_time_ms + _DTMF_SPACING_MS, 5.0)
            caller.send(SendDtmf(digit))
        utterance = None
        if turn.audio_ulaw:
            said_before = len(caller.record.caller_utterances)
            caller.speak(turn.audio_ulaw)
            spoken = await caller.wait_spoken(turn.audio_ms / 1000 + _SLACK_S)
            if not spoken or len(caller.record.caller_utterances) == said_before:
                return  # the call ended before the caller finished this utterance
            utterance = caller.record.caller_utterances[-1]
            previous_end_ms = utterance.end_ms
            if not await caller.wait_media_ms(previous_end_ms, _SLACK_S):
                return
        else:
            previous_end_ms = caller.media_time_ms
        timings.append(TurnTiming(turn.index, turn.kind, turn.dtmf, utterance, note))
    if caller.is_closed:
        return
    if scenario.hangup_after_last_turn_ms is not None:
        await caller.wait_media_ms(previous_end_ms + scenario.hangup_after_last_turn_ms, _far(scenario))
    else:
        await _wait_reply_done(caller, scenario, previous_end_ms, scenario.response_timeout_ms)


def _far(scenario: Scenario) -> float:
    return scenario.response_timeout_ms / 1000 + _SLACK_S * 10


async def _wait_reply_done(caller: TwilioCaller, scenario: Scenario, since_ms: float, timeout_ms: int) -> bool:
    """Wait for the agent to start a reply after ``since_ms`` and then fall quiet; False if it never began."""
    segment = await caller.wait_agent_speaking(timeout_ms / 1000, since_ms=since_ms)
    if segment is None:
        return False
    await caller.wait_agent_silent(scenario.agent_silence_ms, _far(scenario))
    return True


async def _wait_for_cue(caller: TwilioCaller, scenario: Scenario, turn: Turn, previous_end_ms: float) -> str | None:
    """Wait until this turn should start talking; a note says when the agent did not do its part."""
    first = turn.index == 0 or previous_end_ms == 0.0
    timeout_ms = scenario.greeting_timeout_ms if first else scenario.response_timeout_ms
    note = None
    if turn.barge_in_after_ms is not None:
        segment = await caller.wait_agent_speaking(timeout_ms / 1000, since_ms=previous_end_ms)
        if segment is None:
            return f"agent did not start speaking within {timeout_ms} ms; no barge-in"
        target_ms = max(segment.start_ms, previous_end_ms) + turn.barge_in_after_ms
        # speak() lands exactly at the media time it is called at (the next tick sends it).
        await caller.wait_media_ms(target_ms, _far(scenario))
        return None
    if turn.wait_for_agent and not await _wait_reply_done(caller, scenario, previous_end_ms, timeout_ms):
        note = None if first else f"agent did not answer within {timeout_ms} ms"
        start_ms = caller.media_time_ms
    else:
        start_ms = caller.media_time_ms if turn.wait_for_agent else previous_end_ms
    if turn.pause_before_ms:
        await caller.wait_media_ms(start_ms + turn.pause_before_ms, _far(scenario))
    return note
