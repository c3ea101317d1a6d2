"""`GET /metrics` and `GET /readyz` of the served gateway after real calls over loopback, read with
prometheus_client's own text parser."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.adapters.app import STATE
from gateway.codecs.g711 import pcm16_to_ulaw
from gateway.errors import DialError
from gateway.simulator.caller import CallerConfig, TwilioCaller
from gateway.simulator.evi import EviSimulator
from gateway.simulator.harness import RunningGateway, running_gateway
from gateway.simulator.tool_server import ToolBehaviour, ToolServer
from gateway.simulator.wavgen import speechlike_pcm16
from gateway.testing import user_final
from gateway.wire import evi_messages as evi

SECRET = "tool-signing-secret"


async def scrape(gw: RunningGateway) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of /metrics: family sample name → sorted labels → value."""
    async with aiohttp.ClientSession() as http, http.get(gw.base_url + "/metrics") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str) -> float:
    """One sample's value; 0 when the family holds no such sample (and KeyError when the family is absent)."""
    return samples[name].get(tuple(sorted(labels.items())), 0.0)


def numbers_file(folder: Path, tools: ToolServer) -> Path:
    path = folder / "numbers.toml"
    path.write_text(f'[[tool]]\nname = "lookup_order"\nurl = "{tools.url("lookup_order")}"\n', encoding="utf-8")
    return path


def caller(gw: RunningGateway, call_sid: str = "CA" + "1" * 32) -> TwilioCaller:
    audio = pcm16_to_ulaw(speechlike_pcm16(600, 8000, seed=3))
    return TwilioCaller(
        CallerConfig(
            webhook_url=gw.webhook_url,
            auth_token=gw.auth_token,
            audio_ulaw=audio,
            hangup_after_ms=60_000,
            call_sid=call_sid,
        )
    )


async def test_one_call_makes_each_family_true(tmp_path: Path) -> None:
    """A call with a turn, a tool call, a barge-in and an EVI error shows each in /metrics while it runs;
    when the caller hangs up the call is counted by end reason and duration, and a call over the limit is
    counted as a busy refusal."""
    tools = {"lookup_order": ToolBehaviour(content="shipped")}
    async with EviSimulator() as sim, ToolServer(SECRET.encode(), tools) as tool_server:
        path = numbers_file(tmp_path, tool_server)
        async with (
            running_gateway(sim.url, numbers_file=str(path), tool_signing_secret=SECRET, max_concurrent_calls=1) as gw,
            caller(gw) as first,
        ):
            before = await scrape(gw)
            assert value(before, "gateway_active_calls") == 0
            await first.dial()
            session = await sim.wait_session()
            await session.wait_message("session_settings")
            await session.send_message(user_final("where is my order"))
            await session.say(speechlike_pcm16(3000, 24000, seed=5), 24000)
            assert await first.wait_for(lambda r: r.heard_audio_ms >= 400, 10)
            await session.interrupt()
            assert await first.wait_for(lambda r: len(r.clears) == 1, 5)
            await session.send_message(
                evi.ToolCallMessage(
                    name="lookup_order",
                    parameters=json.dumps({"order_id": "A1"}),
                    tool_call_id="t1",
                    response_required=True,
                    tool_type="function",
                )
            )
            await session.wait_message("tool_response", 5)
            await session.send_message(evi.WebSocketError(code="E0710", slug="x", message="oops", type="error"))
            async with caller(gw, "CA" + "2" * 32) as second:
                with pytest.raises(DialError):
                    await second.dial()  # the busy answer holds no <Stream>

            live = await scrape(gw)
            assert value(live, "gateway_active_calls") == 1
            assert value(live, "gateway_tool_calls_total", tool="lookup_order", outcome="ok") == 1
            assert value(live, "gateway_barge_ins_total") == 1
            assert value(live, "gateway_evi_errors_total", code="E0710") == 1
            assert value(live, "gateway_response_latency_seconds_count") == 1
            assert value(live, "gateway_clear_to_silence_seconds_count") == 1
            assert value(live, "gateway_admission_refusals_total", reason="busy") == 1
            assert value(live, "gateway_added_latency_seconds_count", direction="caller_to_evi") > 10
            assert value(live, "gateway_added_latency_seconds_count", direction="evi_to_caller") >= 2  # 200 ms messages
            assert live.get("gateway_calls_total", {}) == {}  # no call has ended yet
            await first.hang_up()
            assert await _until(lambda: not gw.app[STATE].active_calls)

            after = await scrape(gw)
            assert value(after, "gateway_active_calls") == 0
            assert value(after, "gateway_calls_total", end_reason="twilio_stop") == 1
            assert value(after, "gateway_call_duration_seconds_count") == 1
            assert value(after, "gateway_tool_calls_total", tool="lookup_order", outcome="ok") == 1  # not twice


async def test_garbage_collector_pauses_are_timed_while_the_app_runs() -> None:
    """Each full collection while the app runs adds one generation-2 pause to ``gateway_gc_pause_seconds``;
    the hook leaves ``gc.callbacks`` when the app stops."""
    async with EviSimulator() as sim, running_gateway(sim.url) as gw:
        before = await scrape(gw)
        for _ in range(3):
            gc.collect()
        after = await scrape(gw)
        pauses = gw.app[STATE].metrics
        assert pauses is not None and pauses.gc_pauses in gc.callbacks
    counted = value(after, "gateway_gc_pause_seconds_count", generation="2")
    assert counted - value(before, "gateway_gc_pause_seconds_count", generation="2") >= 3
    assert value(after, "gateway_gc_pause_seconds_sum", generation="2") > 0
    assert pauses.gc_pauses not in gc.callbacks


async def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not condition():
        if loop.time() > end:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_readyz_is_503_while_draining_and_after_a_failed_reload(tmp_path: Path) -> None:
    """Readiness follows the app: ready, then 503 while draining; a failed numbers reload is 503 too, and a
    good reload makes it ready again; /healthz stays 200 throughout."""
    from gateway.adapters.serving import reload_numbers

    path = tmp_path / "numbers.toml"
    path.write_text('[default]\nbusy_message = "Busy."\n', encoding="utf-8")
    async with EviSimulator() as sim, running_gateway(sim.url, numbers_file=str(path)) as gw:
        state = gw.app[STATE]
        async with aiohttp.ClientSession() as http:

            async def status(route: str) -> int:
                async with http.get(gw.base_url + route) as resp:
                    return resp.status

            assert (await status("/readyz"), await status("/healthz")) == (200, 200)
            path.write_text("[default]\nbusy_message = 7\n", encoding="utf-8")
            assert not await reload_numbers(state)
            assert state.lines.line_for(None).busy_message == "Busy."  # the old file stays in use
            assert (await status("/readyz"), await status("/healthz")) == (503, 200)
            path.write_text('[default]\nbusy_message = "Still busy."\n', encoding="utf-8")
            assert await reload_numbers(state)
            assert state.lines.line_for(None).busy_message == "Still busy."
            assert await status("/readyz") == 200
            state.draining = True
            assert (await status("/readyz"), await status("/healthz")) == (503, 200)


def test_label_values_from_peers_are_bounded() -> None:
    """Tool names EVI made up and error codes of odd shape collapse to one label value each, so a peer cannot
    grow the families without bound."""
    from gateway.adapters.metrics import AppFacts, GatewayMetrics
    from gateway.core.observe import Observations

    metrics = GatewayMetrics(lambda: AppFacts(0, 0, 0, False, False, {}))
    observed = Observations()
    for n in range(50):
        observed.tool_call(f"made_up_{n}", "unknown_tool")
        observed.upstream_error(f"not a code {n}")
    observed.upstream_error("E0710")
    metrics.observe(observed.take())
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    assert samples["gateway_tool_calls_total"] == {(("outcome", "unknown_tool"), ("tool", "(unknown)")): 50}
    assert samples["gateway_evi_errors_total"] == {(("code", "(other)"),): 50, (("code", "E0710"),): 1}
