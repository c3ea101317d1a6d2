"""The HTML load-test report: one self-contained page with inline SVG charts (no scripts, no external files).

Owns drawing a :class:`~gateway.loadtest.runner.LoadTestResult` for a person: the summary table, the
response-latency and barge-in-yield distributions, latency over the run against the number of active
calls, underruns and dropped frames per call, a timeline of who spoke when in the first calls, and a
table of every call. Charts are plain SVG built here; the page opens offline in any browser.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gateway.loadtest.metrics import METRICS, CallResult, metric_values, summarize
from gateway.loadtest.report import end_label
from gateway.loadtest.runner import LoadTestResult, webhook_url_for

__all__ = ["render_html", "write_html"]

_W, _H = 760, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 60, 60, 30, 42
_CALLER, _AGENT, _BAD, _INK, _GRID = "#2f6fc4", "#e07b2a", "#c62828", "#333", "#ddd"
_TIMELINE_CALLS = 30

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#222;margin:24px auto;max-width:900px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px}
p.meta{color:#555;margin:0 0 12px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child{text-align:left}
tr.bad td{color:#c62828}
svg{display:block;margin:6px 0 2px;background:#fff}
svg text{font:11px system-ui,sans-serif;fill:#333}
.note{color:#666;font-size:12px}
.key span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px;vertical-align:middle}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _nice_step(span: float, target_ticks: int = 5) -> float:
    raw = max(span, 1e-9) / target_ticks
    power = 10 ** math.floor(math.log10(raw))
    return float(next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw))


def _ticks(hi: float, target_ticks: int = 5, *, counts: bool = False) -> tuple[list[float], float]:
    """Ticks from 0 to a nice top at or above ``hi``; returns (ticks, top). ``counts`` keeps steps whole."""
    step = _nice_step(hi if hi > 0 else 1.0, target_ticks)
    if counts:
        step = float(max(1, math.ceil(step)))
    top = step * max(1, math.ceil((hi if hi > 0 else 1.0) / step))
    return [i * step for i in range(round(top / step) + 1)], top


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e4 else f"{value:.3g}"


def _frame(title: str, x_label: str, y_label: str, body: list[str], *, height: int = _H) -> str:
    return (
        f'<svg width="{_W}" height="{height}" viewBox="0 0 {_W} {height}" role="img" aria-label="{_e(title)}">'
        f'<text x="{_LEFT}" y="16" font-weight="bold">{_e(title)}</text>'
        f'<text x="{_LEFT + (_W - _LEFT - _RIGHT) / 2}" y="{height - 6}" text-anchor="middle">{_e(x_label)}</text>'
        f'<text transform="translate(14,{_TOP + (height - _TOP - _BOTTOM) / 2}) rotate(-90)" '
        f'text-anchor="middle">{_e(y_label)}</text>' + "".join(body) + "</svg>"
    )


def _axes(x_ticks: list[float], x_top: float, y_ticks: list[float], y_top: float, height: int = _H) -> list[str]:
    plot_w, plot_h = _W - _LEFT - _RIGHT, height - _TOP - _BOTTOM
    out = []
    for y in y_ticks:
        py = _TOP + plot_h - y / y_top * plot_h
        out.append(f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{py:.1f}" y2="{py:.1f}" stroke="{_GRID}"/>')
        out.append(f'<text x="{_LEFT - 6}" y="{py + 4:.1f}" text-anchor="end">{_label(y)}</text>')
    for x in x_ticks:
        px = _LEFT + x / x_top * plot_w
        out.append(f'<text x="{px:.1f}" y="{_TOP + plot_h + 16}" text-anchor="middle">{_label(x)}</text>')
    out.append(
        f'<path d="M{_LEFT},{_TOP}V{_TOP + plot_h}H{_LEFT + plot_w}" fill="none" stroke="{_INK}" stroke-width="1"/>'
    )
    return out


def _empty(title: str, why: str) -> str:
    return (
        f'<svg width="{_W}" height="60" viewBox="0 0 {_W} 60" role="img" aria-label="{_e(title)}">'
        f'<text x="{_LEFT}" y="16" font-weight="bold">{_e(title)}</text>'
        f'<text x="{_LEFT}" y="40" class="note">{_e(why)}</text></svg>'
    )


def histogram_svg(values: Sequence[float], title: str, unit: str, colour: str = _CALLER) -> str:
    """Bars of how many values fall in each bin, with the p50 and p95 marked."""
    if not values:
        return _empty(title, "no values")
    arr = np.asarray(values, dtype=np.float64)
    lo = min(0.0, float(arr.min()))
    hi = float(arr.max())
    width = _nice_step(max(hi - lo, 1.0), 24)
    # Bins are [k·width, (k+1)·width); the top edge lies above the largest value.
    first = math.floor(lo / width)
    edges = np.arange(first, math.floor(hi / width) + 2) * width
    counts, edges = np.histogram(arr, bins=edges)
    x_ticks, x_top = _ticks(float(edges[-1]))
    y_ticks, y_top = _ticks(float(counts.max()), 4, counts=True)
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    body = _axes(x_ticks, x_top, y_ticks, y_top)

    def px(x: float) -> float:
        return _LEFT + x / x_top * plot_w

    for count, left, right in zip(counts.tolist(), edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        if count:
            h = count / y_top * plot_h
            body.append(
                f'<rect x="{px(left) + 0.5:.1f}" y="{_TOP + plot_h - h:.1f}" '
                f'width="{max(px(right) - px(left) - 1, 1):.1f}" '
                f'height="{h:.1f}" fill="{colour}"><title>{_label(left)}–{_label(right)} {unit}: {count}</title></rect>'
            )
    for row, (name, q) in enumerate((("p50", 50), ("p95", 95))):
        v = float(np.percentile(arr, q))
        body.append(
            f'<line x1="{px(v):.1f}" x2="{px(v):.1f}" y1="{_TOP}" y2="{_TOP + plot_h}" stroke="{_INK}" '
            f'stroke-dasharray="4 3"/><text x="{px(v) + 3:.1f}" y="{_TOP + 10 + 13 * row}">{name} {v:.0f}</text>'
        )
    return _frame(title, unit, "count", body)


def latency_over_time_svg(result: LoadTestResult) -> str:
    """Each turn's response latency at the time it was measured, over the number of active calls."""
    title = "Response latency over the run, and active calls"
    points = [
        (t.wall_end_s, t.response_latency_ms, c.ok)
        for c in result.calls
        for t in c.turns
        if t.wall_end_s is not None and t.response_latency_ms is not None
    ]
    if not points:
        return _empty(title, "no response latencies measured")
    x_ticks, x_top = _ticks(max(result.duration_s, max(p[0] for p in points)))
    y_ticks, y_top = _ticks(max(p[1] for p in points))
    peak = max((n for _, n in result.concurrency_timeline), default=1)
    c_ticks, c_top = _ticks(float(max(peak, 1)), 4, counts=True)
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    body = _axes(x_ticks, x_top, y_ticks, y_top)
    step = [f"M{_LEFT},{_TOP + plot_h}"]
    timeline = result.concurrency_timeline
    # One call ending and the next starting a moment later is one step, not a spike.
    settled = [p for p, q in zip(timeline, [*timeline[1:], None], strict=True) if q is None or q[0] - p[0] > 0.05]
    for t_s, active in settled:
        x = _LEFT + t_s / x_top * plot_w
        step.append(f"H{x:.1f}V{_TOP + plot_h - active / c_top * plot_h:.1f}")
    step.append(f"H{_LEFT + plot_w}")
    body.append(f'<path d="{"".join(step)}" fill="{_AGENT}" fill-opacity="0.15" stroke="{_AGENT}"/>')
    for c in c_ticks:
        py = _TOP + plot_h - c / c_top * plot_h
        body.append(f'<text x="{_LEFT + plot_w + 6}" y="{py + 4:.1f}" fill="{_AGENT}">{_label(c)}</text>')
    body.append(
        f'<text transform="translate({_W - 12},{_TOP + plot_h / 2}) rotate(90)" '
        'text-anchor="middle">active calls</text>'
    )
    for t_s, latency, ok in points:
        body.append(
            f'<circle cx="{_LEFT + t_s / x_top * plot_w:.1f}" cy="{_TOP + plot_h - latency / y_top * plot_h:.1f}" '
            f'r="2.5" fill="{_CALLER if ok else _BAD}"><title>{t_s:.1f} s: {latency:.0f} ms</title></circle>'
        )
    return _frame(title, "seconds since start", "latency (ms)", body)


def per_call_bars_svg(calls: Sequence[CallResult], title: str, values: Sequence[float], y_label: str) -> str:
    """One bar per call (failed calls in red)."""
    if not calls:
        return _empty(title, "no calls")
    if not any(values):
        return _empty(title, f"none: 0 in every one of {len(calls)} calls")
    y_ticks, y_top = _ticks(max(values), 4, counts=True)
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    body = _axes([], 1.0, y_ticks, y_top)
    bar_w = plot_w / len(calls)
    drawn_w = min(max(bar_w - 1, 0.8), 40.0)
    label_every = _nice_step(float(len(calls)), 10) if len(calls) > 10 else 1
    for i in range(0, len(calls), max(1, round(label_every))):
        x = _LEFT + (i + 0.5) * bar_w
        body.append(f'<text x="{x:.1f}" y="{_TOP + plot_h + 16}" text-anchor="middle">{calls[i].index}</text>')
    for i, (call, value) in enumerate(zip(calls, values, strict=True)):
        h = value / y_top * plot_h
        body.append(
            f'<rect x="{_LEFT + (i + 0.5) * bar_w - drawn_w / 2:.1f}" y="{_TOP + plot_h - h:.1f}" '
            f'width="{drawn_w:.1f}" '
            f'height="{h:.1f}" fill="{_CALLER if call.ok else _BAD}">'
            f"<title>call {call.index} ({_e(call.scenario)}): {value:g}</title></rect>"
        )
    return _frame(title, "call", y_label, body)


def timeline_svg(calls: Sequence[CallResult]) -> str:
    """Who spoke when, per call, on the media clock: caller utterances over agent speech."""
    title = f"Who spoke when (first {min(len(calls), _TIMELINE_CALLS)} calls)"
    shown = [c for c in calls if c.end != "dial_error"][:_TIMELINE_CALLS]
    if not shown:
        return _empty(title, "no connected calls")
    lane = 16
    height = _TOP + _BOTTOM + lane * len(shown)
    x_ticks, x_top = _ticks(max(c.media_ms for c in shown) / 1000 or 1.0, 8)
    plot_w = _W - _LEFT - _RIGHT
    body = _axes(x_ticks, x_top, [], 1.0, height)
    for row, call in enumerate(shown):
        y = _TOP + row * lane
        body.append(f'<text x="{_LEFT - 6}" y="{y + 11}" text-anchor="end">#{call.index}</text>')
        for spans, colour, dy, h in ((call.agent_speech, _AGENT, 2, 12), (call.caller_speech, _CALLER, 5, 6)):
            for start_ms, end_ms in spans:
                x = _LEFT + start_ms / 1000 / x_top * plot_w
                w = max((end_ms - start_ms) / 1000 / x_top * plot_w, 0.8)
                body.append(f'<rect x="{x:.1f}" y="{y + dy}" width="{w:.1f}" height="{h}" fill="{colour}"/>')
    return _frame(title, "seconds of call (media clock)", "", body, height=height)


def _summary_rows(result: LoadTestResult) -> str:
    rows = []
    for key, st in summarize(result.calls).items():
        cells = "".join(f"<td>{'-' if v is None else f'{v:.0f}'}</td>" for v in (st.p50, st.p95, st.p99, st.max))
        rows.append(f"<tr><td>{_e(METRICS[key])}</td><td>{st.n}</td>{cells}</tr>")
    return "".join(rows)


def _call_rows(calls: Sequence[CallResult]) -> str:
    rows = []
    for c in calls:
        latencies = [t.response_latency_ms for t in c.turns if t.response_latency_ms is not None]
        yields = [t.barge_in_yield_ms for t in c.turns if t.barge_in_yield_ms is not None]
        median = f"{float(np.median(latencies)):.0f}" if latencies else "-"
        rows.append(
            f'<tr class="{"" if c.ok else "bad"}"><td>{c.index}</td><td>{_e(c.scenario)}</td>'
            f"<td>{_e(end_label(c))}</td><td>{len(c.turns)}</td><td>{median}</td>"
            f"<td>{', '.join(f'{y:.0f}' for y in yields) or '-'}</td><td>{c.underruns}</td>"
            f"<td>{c.frames_dropped}</td><td>{_e(c.failure or '')}</td></tr>"
        )
    return "".join(rows)


def render_html(result: LoadTestResult) -> str:
    """The report page, complete and self-contained."""
    calls = result.calls
    ok = sum(c.ok for c in calls)
    cfg = result.config
    charts = [
        histogram_svg(metric_values(calls, "response_latency_ms"), "Response latency", "ms"),
        histogram_svg(metric_values(calls, "barge_in_yield_ms"), "Barge-in yield", "ms", _AGENT),
        latency_over_time_svg(result),
        per_call_bars_svg(calls, "Underruns per call", [float(c.underruns) for c in calls], "underruns"),
    ]
    if cfg.network.active:
        dropped = [float(c.frames_dropped) for c in calls]
        charts.append(per_call_bars_svg(calls, "Frames dropped per call (injected)", dropped, "frames"))
    charts.append(timeline_svg(calls))
    head = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>gateway loadtest report</title>"
        f"<style>{_CSS}</style></head><body>"
    )
    meta = (
        f"<h1>gateway loadtest</h1><p class=meta>{_e(webhook_url_for(cfg.target))} · {len(calls)} calls, "
        f"{ok} ok, {len(calls) - ok} failed · {result.duration_s:.1f} s · concurrency {cfg.concurrency} · "
        f"seed {cfg.seed}</p>"
    )
    summary = (
        "<h2>Summary</h2><table><tr><th>metric</th><th>n</th><th>p50</th><th>p95</th><th>p99</th><th>max</th></tr>"
        f"{_summary_rows(result)}</table>"
        "<p class=\"note\">Times on the caller's media clock (20 ms ticks). Response latency: end of the caller's "
        "utterance → first agent audio heard. Barge-in yield: caller starts talking over the agent → agent audio "
        "stops. Underruns: silences shorter than a pause inside the agent's speech.</p>"
    )
    key = (
        f'<p class="key note"><span style="background:{_CALLER}"></span>caller / ok call'
        f'<span style="background:{_AGENT}"></span>agent / active calls'
        f'<span style="background:{_BAD}"></span>failed call</p>'
    )
    table = (
        "<h2>Calls</h2><table><tr><th>#</th><th>scenario</th><th>ended</th><th>turns</th><th>p50 latency</th>"
        f"<th>yields (ms)</th><th>underruns</th><th>dropped</th><th>failure</th></tr>{_call_rows(calls)}</table>"
    )
    return head + meta + summary + "<h2>Charts</h2>" + key + "".join(charts) + table + "</body></html>\n"


def write_html(result: LoadTestResult, path: str | Path) -> None:
    """Write :func:`render_html` to ``path``."""
    Path(path).write_text(render_html(result), encoding="utf-8")
