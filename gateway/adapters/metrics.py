"""Prometheus metrics of one gateway app at ``GET /metrics`` (operations.md §1).

One registry per app (tests run many apps in one process). Four sources feed it:

- the core's observations (:mod:`gateway.core.observe`), taken from every live call at each scrape and from
  a call when it ends, so a long call's latencies and tool calls show while it runs;
- each call's :class:`~gateway.core.stats.CallStats` when it ends (end reason, duration, gaps, underruns);
- the adapter's own timings per frame (:meth:`GatewayMetrics.frame_sent`), kept in a lock-free histogram
  because they come 100 times a second per call;
- the pauses of Python's cyclic garbage collector (:class:`GcPauses`, a ``gc.callbacks`` hook installed while
  the app runs): no frame moves during one, so a long one shows as latency on every call.

Gauges that are facts of the app (active calls, draining, admission, recordings) are read at scrape time by
a collector, never copied.
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.core.observe import Observation
from gateway.core.stats import CallStats

__all__ = ["CONTENT_TYPE", "FRAME_BUCKETS_S", "AppFacts", "GatewayMetrics", "GcPauses"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FRAME_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
"""Buckets of the per-frame added latency: the goal is well under 10 ms."""
_TURN_BUCKETS_S = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0)
_DURATION_BUCKETS_S = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)


@dataclass(frozen=True, slots=True)
class AppFacts:
    """What the app knows now, read at each scrape."""

    active_calls: int
    pending_streams: int
    reserved_slots: int
    draining: bool
    numbers_reload_failed: bool
    counters: Mapping[str, int]
    """Monotonic counts kept elsewhere (recordings written, webhooks failed, …), exported as ``gateway_<name>``."""


class _FrameHistogram:
    """A histogram with a lock-free, allocation-free ``observe`` (one bisect and two additions)."""

    def __init__(self, buckets_s: tuple[float, ...]) -> None:
        self.buckets_s = buckets_s
        self.counts = [0] * (len(buckets_s) + 1)
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets_s, seconds)] += 1
        self.sum_s += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, count in zip((*map(str, self.buckets_s), "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, float(total)))
        return out


class GcPauses:
    """The pause of every cyclic garbage collection, by generation, as a ``gc.callbacks`` hook.

    Install it with :meth:`install` and take it out with :meth:`remove`; a collection under way when it is
    installed is not counted."""

    def __init__(self) -> None:
        self.by_generation = {generation: _FrameHistogram(FRAME_BUCKETS_S) for generation in range(3)}
        self._started_s: float | None = None

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started_s = time.perf_counter()
        elif self._started_s is not None:
            self.by_generation[info["generation"]].observe(time.perf_counter() - self._started_s)
            self._started_s = None

    def install(self) -> None:
        gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


def _tasks_alive() -> int | None:
    """Tasks not yet done on the running event loop (a leak shows as growth at idle); None outside a loop."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return None


class _Live(Collector):
    """Families computed at scrape time: the app's gauges and the per-frame histograms."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        facts = metrics.facts()
        for name, help_text, value in (
            ("gateway_active_calls", "Calls in progress (streams bridged to EVI).", facts.active_calls),
            ("gateway_pending_streams", "Media Stream sockets waiting for a valid start.", facts.pending_streams),
            (
                "gateway_reserved_slots",
                "Slots held for calls whose stream is due.",
                facts.reserved_slots,
            ),
            ("gateway_draining", "1 while the gateway drains after SIGTERM.", int(facts.draining)),
            (
                "gateway_numbers_reload_failed",
                "1 if the last numbers reload failed.",
                int(facts.numbers_reload_failed),
            ),
        ):
            yield GaugeMetricFamily(name, help_text, value=value)
        yield GaugeMetricFamily(
            "gateway_gc_frozen_objects",
            "Objects frozen out of the garbage collector's view at startup.",
            value=gc.get_freeze_count(),
        )
        tasks = _tasks_alive()
        if tasks is not None:
            yield GaugeMetricFamily("gateway_asyncio_tasks", "asyncio tasks alive on the event loop.", value=tasks)
        for name, value in sorted(facts.counters.items()):
            yield CounterMetricFamily(f"gateway_{name}", f"{name.replace('_', ' ').capitalize()}.", value=value)
        added = HistogramMetricFamily(
            "gateway_added_latency_seconds",
            "Per frame: from reading the input that produced it to writing it to the other socket.",
            labels=["direction"],
        )
        for direction, histogram in metrics.frames.items():
            added.add_metric([direction], histogram.cumulative(), sum_value=histogram.sum_s)
        yield added
        pauses = HistogramMetricFamily(
            "gateway_gc_pause_seconds",
            "Pauses of the cyclic garbage collector, by generation: no frame moves during one.",
            labels=["generation"],
        )
        for generation, histogram in metrics.gc_pauses.by_generation.items():
            pauses.add_metric([str(generation)], histogram.cumulative(), sum_value=histogram.sum_s)
        yield pauses


class GatewayMetrics:
    """The app's registry and every family in it; ``render()`` is the ``/metrics`` body."""

    def __init__(self, facts: Callable[[], AppFacts]) -> None:
        self.facts = facts
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.frames = {d: _FrameHistogram(FRAME_BUCKETS_S) for d in ("caller_to_evi", "evi_to_caller")}
        self.gc_pauses = GcPauses()
        self.calls = Counter("gateway_calls", "Calls ended, by end reason.", ["end_reason"], registry=r)
        self.duration = Histogram(
            "gateway_call_duration_seconds", "Length of ended calls.", buckets=_DURATION_BUCKETS_S, registry=r
        )
        self.response_latency = Histogram(
            "gateway_response_latency_seconds",
            "Per turn: EVI's final user_message to the first agent audio sent to Twilio.",
            buckets=_TURN_BUCKETS_S,
            registry=r,
        )
        self.clear_to_silence = Histogram(
            "gateway_clear_to_silence_seconds",
            "Per barge-in: the interruption read to the clear written to Twilio.",
            buckets=FRAME_BUCKETS_S,
            registry=r,
        )
        self.gaps = Counter("gateway_inbound_gaps_filled", "Gaps in caller audio filled with silence.", registry=r)
        self.gap_s = Counter("gateway_inbound_gap_filled_seconds", "Caller audio filled in, in seconds.", registry=r)
        self.underruns = Counter(
            "gateway_playout_underruns",
            "Agent audio ran dry mid-response, by cause: upstream (its audio came late) or pacing (ours did).",
            ["cause"],
            registry=r,
        )
        self.barge_ins = Counter("gateway_barge_ins", "Callers talking over the agent (its audio cut).", registry=r)
        self.evi_errors = Counter("gateway_evi_errors", "EVI error messages, by code.", ["code"], registry=r)
        self.reconnects = Counter(
            "gateway_evi_reconnects", "Resumes of dropped EVI sessions, by outcome.", ["outcome"], registry=r
        )
        self.tool_calls = Counter("gateway_tool_calls", "Tool calls, by outcome.", ["tool", "outcome"], registry=r)
        self.transfers = Counter("gateway_transfers", "Transfers to a person, by outcome.", ["outcome"], registry=r)
        self.refusals = Counter("gateway_admission_refusals", "Calls not admitted, by reason.", ["reason"], registry=r)
        reasons = (
            "busy",
            "overflow",
            "draining",
            "upgrade_at_capacity",
            "start_at_capacity",
            "too_many_pending_streams",
        )
        for reason in reasons:
            self.refusals.labels(reason)  # present at zero, so a dashboard sees the family before a refusal
        r.register(_Live(self))

    def render(self) -> bytes:
        """The Prometheus text exposition of every family."""
        return generate_latest(self.registry)

    def frame_sent(self, direction: str, seconds: float) -> None:
        """One frame's added latency (``caller_to_evi`` or ``evi_to_caller``)."""
        self.frames[direction].observe(seconds)

    def observe(self, observations: Iterable[Observation]) -> None:
        """Feed what the core observed (see gateway.core.observe)."""
        for o in observations:
            labels = dict(o.labels)
            match o.kind:
                case "response_latency_s":
                    self.response_latency.observe(o.value)
                case "tool_call":
                    # A name EVI made up is not a label value: unknown tools would grow the family without bound.
                    tool = "(unknown)" if labels["outcome"] == "unknown_tool" else labels["tool"][:64]
                    self.tool_calls.labels(tool, labels["outcome"][:64]).inc()
                case "upstream_error":
                    code = labels["code"]
                    self.evi_errors.labels(code if len(code) == 5 and code.isalnum() else "(other)").inc()
                case "resume":
                    self.reconnects.labels(labels["outcome"]).inc()
                case "barge_in":
                    self.barge_ins.inc()
                case "transfer":
                    self.transfers.labels(labels["outcome"]).inc()

    def call_ended(self, stats: CallStats) -> None:
        """Count a call that ended, from its final statistics."""
        self.calls.labels(stats.end_reason or "unknown").inc()
        self.duration.observe(stats.duration_s)
        if stats.inbound is not None:
            self.gaps.inc(stats.inbound.gaps)
            self.gap_s.inc(stats.inbound.gap_ms_filled / 1000)
        if stats.playout is not None:
            late = stats.playout.underruns_paced_late
            self.underruns.labels("upstream").inc(stats.playout.underruns - late)
            self.underruns.labels("pacing").inc(late)
