"""The scenarios of ``gateway bench faults``: what each one does to the gateway, and what it tried.

Every scenario runs against the served gateway in its own process (:mod:`gateway.loadtest.faults`), is bounded
by its plan's time, and returns an :class:`Outcome`: how much it tried, notes for the table, and details for
the JSON. Canaries, crash and leak checks are the orchestrator's; the soak measures the gateway itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from gateway.errors import DialError
from gateway.loadtest.faults_peers import (
    HALF_OPEN_VARIANTS,
    SPEECH_ULAW,
    RawStream,
    Target,
    half_open,
    slow_webhook,
    stream_of,
    watch_half_open,
)
from gateway.loadtest.faults_report import FD_SLACK, RSS_SECOND_HALF_MIB, TASK_SLACK, Sample
from gateway.simulator.caller import CallerConfig, NetworkTrouble, TwilioCaller
from gateway.simulator.mutator import ENDING_TWILIO_KINDS, TwilioMutator

__all__ = ["LINE_NUMBERS", "SCENARIOS", "Outcome", "PhaseContext", "Plan", "soak_call"]

LINE_NUMBERS = {
    line: f"+1555000{1001 + i}"
    for i, line in enumerate(("canary", "soak", "talker", "talker_long", "evi_mutate", "evi_drop", "evi_stall",
                              "evi_stall_mid", "evi_noread", "evi_slowread", "evi_garbage"))
}  # fmt: skip
"""The called number of each behaviour of the EVI side (the numbers file gives it as the line's config_id)."""
EVI_FAULT_LINES = ("evi_drop", "evi_stall", "evi_stall_mid", "evi_noread", "evi_slowread", "evi_garbage")
FUZZ_PACE_S = 0.005
"""One mutated frame per 5 ms per socket: with about a third parseable as media, caller audio stays near real
time (docs/operations.md §4: past real time plus a burst, it is refused, and a flood ends the call)."""
FUZZ_FRAMES_PER_CALL = 400
MAX_DIAL_ERRORS = 100
"""A scenario whose calls cannot be placed this often stops early (the gateway is gone or refuses them)."""


@dataclass(frozen=True, slots=True)
class Plan:
    """How much each scenario does (``--quick`` or the full run)."""

    twilio_messages: int
    twilio_sockets: int
    evi_messages: int
    evi_callers: int
    evi_call_s: float
    fault_callers: int
    fault_call_s: float
    fault_rounds: int
    twilio_fault_calls: int
    half_open_sockets: int
    half_open_hold_s: float
    slow_webhooks: int
    slow_byte_delay_s: float
    soak_calls: int
    soak_concurrency: int
    canaries: int
    phase_bound_s: float

    @classmethod
    def quick(cls) -> Plan:
        return cls(3000, 6, 1500, 4, 3.0, 1, 6.0, 1, 1, 30, 6.0, 3, 0.01, 100, 8, 2, 60.0)

    @classmethod
    def full(cls) -> Plan:
        return cls(70_000, 16, 35_000, 8, 8.0, 2, 10.0, 3, 3, 200, 12.0, 12, 0.03, 1000, 8, 3, 240.0)


@dataclass
class PhaseContext:
    """What a scenario may use."""

    target: Target
    http: aiohttp.ClientSession
    plan: Plan
    seed: int
    evi_stats: Callable[[], Awaitable[dict[str, Any]]]
    sample: Callable[[], Awaitable[Sample]]
    wait_idle: Callable[[], Awaitable[tuple[Sample, list[str]]]]


@dataclass
class Outcome:
    """What a scenario tried and saw."""

    tried: int
    unit: str
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    disturbed: int = 0
    calls: int = 0
    disturbed_why: list[str] = field(default_factory=list)
    leak_why: list[str] = field(default_factory=list)
    samples: dict[str, Sample] = field(default_factory=dict)


def _top(counter: Counter[str], n: int = 6) -> str:
    return ", ".join(f"{key} ×{count}" for key, count in counter.most_common(n)) or "none"


async def _dial(ctx: PhaseContext, line: str, errors: Counter[str], **kw: Any) -> RawStream | None:
    try:
        return await RawStream.dial(ctx.http, ctx.target, LINE_NUMBERS[line], **kw)
    except DialError as exc:
        errors[f"{exc.stage} {exc.status or ''}".strip()] += 1
        await asyncio.sleep(0.2)
        return None


# ---------------------------------------------------------------------------------- 1. mutated Twilio frames


async def twilio_mutate(ctx: PhaseContext) -> Outcome:
    """Sockets through the served gateway send mutated Media Stream frames after a valid start (3 % of calls
    start with a mutated ``start`` instead), paced, up to :data:`FUZZ_FRAMES_PER_CALL` per call."""
    plan, loop = ctx.plan, asyncio.get_running_loop()
    left = [plan.twilio_messages]
    kinds: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    unexpected: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    sent_total = [0]

    async def one_call(worker: int, n: int) -> None:
        stream = await _dial(ctx, "talker", errors)
        if stream is None:
            return
        mutator = TwilioMutator(f"{ctx.seed}:twilio:{worker}:{n}", stream_sid=stream.stream_sid,
                                account_sid=stream.account_sid, call_sid=stream.call_sid)  # fmt: skip
        stream.on_mark = mutator.note_mark
        bad_start = mutator.rng.random() < 0.03
        await stream.begin(mutator.bad_start(stream.start_text()) if bad_start else None)
        sent, last, ending = (1, "bad_start", False) if bad_start else (0, "start", False)
        t0 = loop.time()
        while not bad_start and sent < FUZZ_FRAMES_PER_CALL and left[0] > 0 and not stream.closed.is_set():
            frame = mutator.next()
            if not await stream.send_frame(frame):
                break
            sent, last, left[0] = sent + 1, frame.kind, left[0] - 1
            ending = ending or frame.kind in ENDING_TWILIO_KINDS
            await asyncio.sleep(max(0.0, t0 + sent * FUZZ_PACE_S - loop.time()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stream.closed.wait(), 2.0 if bad_start else 0.05)
        ended_by_gateway = stream.closed.is_set()
        await stream.hang_up()
        outcomes[stream.outcome()] += 1
        kinds.update(mutator.counts)
        kinds["bad_start"] += bad_start
        sent_total[0] += sent
        if ended_by_gateway and not bad_start and not ending:
            unexpected[f"{stream.close_code} after {last}"] += 1
        if bad_start and not ended_by_gateway:
            unexpected["bad start not refused"] += 1

    async def worker(index: int) -> None:
        n = 0
        while left[0] > 0 and errors.total() < MAX_DIAL_ERRORS:
            n += 1
            await one_call(index, n)

    await asyncio.gather(*(worker(i) for i in range(plan.twilio_sockets)))
    calls = sum(outcomes.values())
    notes = [f"{calls} calls; ends: {_top(outcomes)}"]
    if unexpected:
        notes.append(f"ended by the gateway after a frame it should ignore: {_top(unexpected)}")
    if errors:
        notes.append(f"dial errors: {_top(errors)}")
    details = {"calls": calls, "kinds": dict(kinds), "outcomes": dict(outcomes), "unexpected_ends": dict(unexpected),
               "dial_errors": dict(errors)}  # fmt: skip
    return Outcome(sent_total[0], "messages", notes, details)


# ------------------------------------------------------------------------------------ 2. mutated EVI messages


async def evi_mutate(ctx: PhaseContext) -> Outcome:
    """Normal callers on the ``evi_mutate`` line, whose EVI chats answer with mutated server messages, until the
    EVI side has sent the planned number."""
    plan = ctx.plan
    base = (await ctx.evi_stats())["mutated"]
    done = asyncio.Event()
    outcomes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    heard: list[int] = []

    async def caller() -> None:
        while not done.is_set() and errors.total() < MAX_DIAL_ERRORS:
            stream = await _dial(ctx, "evi_mutate", errors)
            if stream is None:
                continue
            await stream.begin()
            await stream.talk(plan.evi_call_s, stop=done)
            await stream.hang_up()
            outcomes[stream.outcome()] += 1
            heard.append(stream.media_received)

    async def monitor() -> dict[str, Any]:
        while True:
            stats = await ctx.evi_stats()
            if stats["mutated"] - base >= plan.evi_messages or errors.total() >= MAX_DIAL_ERRORS:
                done.set()
                return stats
            await asyncio.sleep(0.3)

    callers = [asyncio.create_task(caller()) for _ in range(plan.evi_callers)]
    try:
        stats = await monitor()
    finally:
        done.set()
        await asyncio.gather(*callers)
    stats = await ctx.evi_stats()
    tried = stats["mutated"] - base
    notes = [f"{sum(outcomes.values())} calls; ends: {_top(outcomes)}",
             f"calls that heard media: {sum(1 for h in heard if h)}/{len(heard)}"]  # fmt: skip
    if errors:
        notes.append(f"dial errors: {_top(errors)}")
    return Outcome(tried, "messages", notes, {"outcomes": dict(outcomes), "evi": stats, "dial_errors": dict(errors)})


# ------------------------------------------------------------------------------------------ 3. EVI faults


async def evi_faults(ctx: PhaseContext) -> Outcome:
    """Talking callers on lines whose EVI drops, closes, stalls, stops reading, reads slowly or answers garbage."""
    plan = ctx.plan
    before = await ctx.evi_stats()
    outcomes: dict[str, Counter[str]] = {line: Counter() for line in EVI_FAULT_LINES}
    heard: Counter[str] = Counter()
    errors: Counter[str] = Counter()

    async def caller(line: str) -> None:
        stream = await _dial(ctx, line, errors)
        if stream is None:
            return
        await stream.begin()
        await stream.talk(plan.fault_call_s)
        await stream.hang_up()
        outcomes[line][stream.outcome()] += 1
        heard[line] += stream.media_received > 0

    for _ in range(plan.fault_rounds):
        await asyncio.gather(*(caller(line) for line in EVI_FAULT_LINES for _ in range(plan.fault_callers)))
    after = await ctx.evi_stats()

    def delta(key: str, line: str) -> int:
        return int(after[key].get(line, 0)) - int(before[key].get(line, 0))

    faulted = {line: delta("sessions", line) - delta("resumed", line) for line in EVI_FAULT_LINES}
    notes = [f"{line}: {faulted[line]} chats, {delta('resumed', line)} resumed, ends {_top(outcomes[line], 3)}"
             for line in EVI_FAULT_LINES]  # fmt: skip
    if errors:
        notes.append(f"dial errors: {_top(errors)}")
    details = {"faulted": faulted, "outcomes": {k: dict(v) for k, v in outcomes.items()}, "heard": dict(heard)}
    return Outcome(sum(faulted.values()), "EVI chats", notes, details)


# --------------------------------------------------------------------------------------- 4. Twilio faults


TWILIO_FAULTS = ("loss_every_10", "loss_random", "jitter", "burst", "seq_gaps", "flood", "no_read", "slow_read",
                 "silent")  # fmt: skip


async def _emulated(ctx: PhaseContext, variant: str, n: int, call_s: float) -> str:
    """A TwilioCaller on a troubled network (twilio-media-streams.md §1.3: 31930 drops, jitter, bursts)."""
    network = {
        "loss_every_10": NetworkTrouble(drop_every_n=10, drop_run=3),
        "loss_random": NetworkTrouble(drop_ratio=0.2, chunk_skips=False, seed=ctx.seed + n),
        "jitter": NetworkTrouble(extra_jitter_ms=150, seed=ctx.seed + n),
        "burst": NetworkTrouble(burst_every_ms=2000, burst_hold_ms=1000),
    }[variant]
    config = CallerConfig(webhook_url=ctx.target.webhook_url, auth_token=ctx.target.auth_token,
                          to_number=LINE_NUMBERS["talker"], audio_ulaw=SPEECH_ULAW * int(call_s + 1),
                          hangup_after_ms=int(call_s * 1000), network=network)  # fmt: skip
    async with TwilioCaller(config, session=ctx.http) as caller:
        try:
            await caller.dial()
        except DialError as exc:
            return f"dial failed ({exc.stage})"
        await caller.wait_closed(call_s + 10)
    record = caller.record
    bad = f", {len(record.protocol_violations)} protocol violations" if record.protocol_violations else ""
    heard = "heard" if record.heard_audio_ms > 0 else "heard nothing"
    ended = "hung up" if record.closed_by == "caller" else f"{record.close_code} by {record.closed_by}"
    return f"{ended}, {heard}{bad}"


async def _raw_fault(ctx: PhaseContext, variant: str, n: int, call_s: float, errors: Counter[str]) -> str:
    line = "talker_long" if variant in ("no_read", "slow_read") else "talker"
    stream = await _dial(ctx, line, errors, rcvbuf_bytes=2048 if variant == "no_read" else None,
                         max_queue=1 if variant == "slow_read" else 64)  # fmt: skip
    if stream is None:
        return "dial failed"
    rng = random.Random(f"{ctx.seed}:{variant}:{n}")
    await stream.begin(read_delay_s=0.25 if variant == "slow_read" else 0.0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    match variant:
        case "seq_gaps":
            frames = 0
            while loop.time() - t0 < call_s and not stream.closed.is_set():
                skip = rng.choice([0] * 8 + [1, 3, 10, 50])
                at = (frames * 160) % len(SPEECH_ULAW)
                await stream.send(stream.media(SPEECH_ULAW[at : at + 160], skip_frames=skip,
                                               skip_sequence=rng.choice([0, 0, 0, 1, 7])))  # fmt: skip
                for _ in range(1 + skip):  # playback goes on at real time through the hole
                    await stream.play_tick()
                frames += 1 + skip
                await asyncio.sleep(max(0.0, t0 + frames * 0.02 - loop.time()))
        case "flood":
            for _ in range(750):  # 15 s of audio at once: past the burst and the flood limit
                if not await stream.send(stream.media(SPEECH_ULAW[:160])):
                    break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stream.closed.wait(), call_s)
        case "no_read":
            stream.ws.transport.pause_reading()
            await stream.talk(call_s)
        case "silent":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stream.closed.wait(), call_s)
        case _:
            await stream.talk(call_s)
    if variant == "no_read":
        stream.ws.transport.abort()  # it would never read the gateway's close
        await asyncio.sleep(0.1)
    await stream.hang_up()
    return stream.outcome()


async def twilio_faults(ctx: PhaseContext) -> Outcome:
    """Callers losing frames (31930 gaps), jittering, bursting, flooding, not reading, reading slowly, silent."""
    plan = ctx.plan
    errors: Counter[str] = Counter()
    outcomes: dict[str, Counter[str]] = {v: Counter() for v in TWILIO_FAULTS}
    call_s = plan.fault_call_s

    async def one(variant: str, n: int) -> None:
        if variant in ("loss_every_10", "loss_random", "jitter", "burst"):
            outcome = await _emulated(ctx, variant, n, call_s)
        else:
            outcome = await _raw_fault(ctx, variant, n, call_s, errors)
        outcomes[variant][outcome] += 1

    await asyncio.gather(*(one(v, n) for v in TWILIO_FAULTS for n in range(plan.twilio_fault_calls)))
    notes = [f"{v}: {_top(outcomes[v], 3)}" for v in TWILIO_FAULTS]
    if errors:
        notes.append(f"dial errors: {_top(errors)}")
    tried = sum(sum(c.values()) for c in outcomes.values())
    return Outcome(tried, "calls", notes, {"outcomes": {k: dict(v) for k, v in outcomes.items()}})


# ------------------------------------------------------------------------- 5. half-open upgrades, slow webhooks


async def half_open_phase(ctx: PhaseContext) -> Outcome:
    """Half-open requests (TCP only, part of a request line or of the upgrade's headers, a slowloris, part of a
    webhook body), upgrades that never send ``start``, and webhooks whose body comes a byte at a time."""
    plan = ctx.plan
    hold_s = plan.half_open_hold_s
    errors: Counter[str] = Counter()
    variants = [HALF_OPEN_VARIANTS[i % len(HALF_OPEN_VARIANTS)] for i in range(plan.half_open_sockets)]
    conns = []
    for variant in variants:
        try:
            conns.append(await half_open(ctx.target, variant))
        except (OSError, TimeoutError) as exc:
            errors[type(exc).__name__] += 1
    silent: list[RawStream] = []
    for _ in range(min(8, plan.half_open_sockets)):
        stream = await _dial(ctx, "talker", errors)
        if stream is not None:
            silent.append(stream)

    async def silent_upgrade(stream: RawStream) -> str:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(hold_s):
                with contextlib.suppress(Exception):
                    await stream.ws.recv()
        outcome = f"{stream.ws.close_code} by gateway" if stream.ws.close_code is not None else "still open"
        await stream.close()
        return outcome

    async def slow(n: int) -> str:
        abandon = n % 4 == 3
        try:
            answer = await slow_webhook(ctx.target, LINE_NUMBERS["talker"], plan.slow_byte_delay_s, abandon=abandon)
        except ConnectionResetError:
            return "cut off by the gateway (body past GATEWAY_WEBHOOK_BODY_TIMEOUT_S)"
        except (OSError, TimeoutError) as exc:
            return f"failed: {type(exc).__name__}"
        if abandon:
            return "abandoned half-way"
        if answer.status != 200:
            return f"HTTP {answer.status}"
        stream = await _dial(ctx, "talker", errors, answered=stream_of(answer, ctx.target), call_sid=answer.call_sid)
        if stream is None:
            return "answered 200, stream refused"
        await stream.begin()
        await stream.talk(0.5)
        await stream.hang_up()
        return f"answered 200, call {stream.outcome()}"

    async def peak() -> Sample:
        await asyncio.sleep(hold_s / 2)
        return await ctx.sample()

    watched = asyncio.gather(*(watch_half_open(c, hold_s) for c in conns))
    upgrades = asyncio.gather(*(silent_upgrade(s) for s in silent))
    slows = asyncio.gather(*(slow(n) for n in range(plan.slow_webhooks)))
    middle, _, upgrade_outcomes, slow_outcomes = await asyncio.gather(peak(), watched, upgrades, slows)
    closed_first: Counter[str] = Counter(c.variant for c in conns if c.closed_by_gateway_s is not None)
    held: Counter[str] = Counter(c.variant for c in conns if c.closed_by_gateway_s is None)
    notes = [
        f"half-open requests closed by the gateway within {hold_s:g} s: {sum(closed_first.values())}/{len(conns)}"
        f" (still held: {_top(held, 5)}); gateway fds at mid-hold {middle.fds}",
        f"upgrades that never sent start: {_top(Counter(upgrade_outcomes), 3)}",
        f"webhooks sent a byte per {plan.slow_byte_delay_s * 1000:g} ms: {_top(Counter(slow_outcomes), 4)}",
    ]
    if errors:
        notes.append(f"errors: {_top(errors)}")
    details = {"closed_by_gateway": dict(closed_first), "held": dict(held), "mid_hold_fds": middle.fds,
               "silent_upgrades": upgrade_outcomes, "slow_webhooks": slow_outcomes}  # fmt: skip
    # docs/operations.md §4: the gateway closes a connection without a request in progress after
    # GATEWAY_HTTP_IDLE_TIMEOUT_S, and a body not whole within GATEWAY_WEBHOOK_BODY_TIMEOUT_S gets 408 and its
    # connection closed 2 s later (2 s each here), so one still open at the end of the hold is held without bound.
    leak_why = [f"half-open connections still held after {hold_s:g} s: {_top(held, 5)}"] if held else []
    return Outcome(len(conns) + len(silent) + plan.slow_webhooks, "connections", notes, details, leak_why=leak_why)


# --------------------------------------------------------------------------------------------------- 6. soak


async def soak_call(ctx: PhaseContext) -> str | None:
    """One normal call: hear the agent's greeting, hang up. None when it went normally, else why not."""
    config = CallerConfig(webhook_url=ctx.target.webhook_url, auth_token=ctx.target.auth_token,
                          to_number=LINE_NUMBERS["soak"], audio_ulaw=b"", hangup_after_ms=60_000,
                          webhook_timeout_s=10, connect_timeout_s=5)  # fmt: skip
    async with TwilioCaller(config, session=ctx.http) as caller:
        try:
            await caller.dial()
        except DialError as exc:
            return f"dial failed ({exc.stage} {exc.status or ''})".strip()
        heard = await caller.wait_for(lambda r: r.heard_audio_ms >= 200, 10)
        closed_early = caller.is_closed
        await caller.hang_up()
    if closed_early:
        return f"ended by the gateway ({caller.record.close_code})"
    if not heard:
        return "heard no agent audio within 10 s"
    if caller.record.protocol_violations:
        return f"protocol violation: {caller.record.protocol_violations[0]}"
    return None


async def soak(ctx: PhaseContext) -> Outcome:
    """Normal calls at small concurrency; the gateway idle-sampled at the start, after half, and at the end."""
    plan = ctx.plan
    failures: Counter[str] = Counter()
    samples: dict[str, Sample] = {"start": (await ctx.wait_idle())[0]}
    done = 0

    async def batch(count: int) -> None:
        nonlocal done
        queue = list(range(count))

        async def worker() -> None:
            nonlocal done
            while queue:
                queue.pop()
                why = await soak_call(ctx)
                done += 1
                if why is not None:
                    failures[why] += 1

        await asyncio.gather(*(worker() for _ in range(plan.soak_concurrency)))

    half = plan.soak_calls // 2
    await batch(half)
    samples["middle"], why_middle = await ctx.wait_idle()
    await batch(plan.soak_calls - half)
    samples["end"], why_end = await ctx.wait_idle()
    start, middle, end = samples["start"], samples["middle"], samples["end"]
    leak_why = [f"at the end: {w}" for w in why_end]
    if end.fds - start.fds > FD_SLACK:
        leak_why.append(f"fds {start.fds} → {end.fds} over {plan.soak_calls} calls")
    if start.tasks is not None and end.tasks is not None and end.tasks - start.tasks > TASK_SLACK:
        leak_why.append(f"tasks {start.tasks} → {end.tasks}")
    if end.rss_mib - middle.rss_mib > RSS_SECOND_HALF_MIB:
        leak_why.append(f"RSS grew {end.rss_mib - middle.rss_mib:.1f} MiB over the second half "
                        f"(bound {RSS_SECOND_HALF_MIB:g})")  # fmt: skip
    notes = [
        f"RSS start/middle/end {start.rss_mib:.1f}/{middle.rss_mib:.1f}/{end.rss_mib:.1f} MiB "
        f"(second half {end.rss_mib - middle.rss_mib:+.1f}, bound {RSS_SECOND_HALF_MIB:g}); fds "
        f"{start.fds}/{middle.fds}/{end.fds}; tasks {start.tasks}/{middle.tasks}/{end.tasks}",
    ]
    if why_middle:
        notes.append(f"not idle after the first half: {'; '.join(why_middle)}")
    if failures:
        notes.append(f"failed calls: {_top(failures)}")
    details = {"samples": {k: asdict(v) for k, v in samples.items()}, "failures": dict(failures)}
    return Outcome(done, "calls", notes, details, disturbed=sum(failures.values()), calls=done,
                   disturbed_why=list(failures), leak_why=leak_why, samples=samples)  # fmt: skip


SCENARIOS: tuple[tuple[str, str, Callable[[PhaseContext], Awaitable[Outcome]]], ...] = (
    ("twilio-mutate", "mutated Twilio frames", twilio_mutate),
    ("evi-mutate", "mutated EVI messages", evi_mutate),
    ("evi-faults", "EVI drops, stalls, slow reads, garbage", evi_faults),
    ("twilio-faults", "Twilio slow reads, bursts, lost frames", twilio_faults),
    ("half-open", "half-open upgrades, slow webhooks", half_open_phase),
    ("soak", "sequential normal calls", soak),
)
"""Name, title and body of each scenario, in run order (the soak runs without canaries)."""
