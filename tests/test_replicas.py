"""Several replicas behind a load balancer (deployment.md §3), each a real `gateway serve` process.

Two gateway processes sit behind a TCP load balancer with no affinity, both with ``GATEWAY_PUBLIC_URL`` set to
the balancer, and share one EVI simulator. The balancer sends each new connection to the backend the test
names, so a call's webhook can reach one replica and its Media Stream the other, as Twilio's separate requests
may. Every wait is bounded, and the processes are killed however a test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import subprocess
import sys
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from gateway.adapters.app import MEDIA_PATH, VOICE_PATH, make_app
from gateway.codecs.g711 import pcm16_to_ulaw
from gateway.settings import load_settings
from gateway.simulator.caller import CallerConfig, TwilioCaller
from gateway.simulator.evi import EviSimulator
from gateway.simulator.wavgen import speechlike_pcm16
from gateway.wire import twilio_media as tw
from gateway.wire.twilio_signature import sign_request

AUTH_TOKEN = secrets.token_hex(16)
SECRET = secrets.token_hex(32)
EVI_KEY = "replica-test-key"
START_TIMEOUT_S = 60.0
WAIT_S = 15.0


class Balancer:
    """A TCP load balancer on 127.0.0.1: each new connection goes to the backend index next in ``plan``."""

    def __init__(self) -> None:
        self.backends: list[tuple[str, int]] = []
        self.plan: deque[int] = deque()
        self.routed: list[int] = []
        """The backend each connection went to, in order of arrival."""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.plan.popleft() if self.plan else 0
        self.routed.append(index)
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.backends[index])
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until end of stream, then close the other side (no half-open connections to tidy up)."""
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        sink.close()


@dataclass
class Replica:
    """One `gateway serve` process: its own address and its log."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    base_url: str = ""
    address: tuple[str, int] = ("127.0.0.1", 0)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    async def health(self, http: aiohttp.ClientSession) -> dict[str, int]:
        async with http.get(self.base_url + "/healthz", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            body: dict[str, int] = await resp.json()
            return body


def _spawn(tmp_path: Path, name: str, public_url: str, evi_url: str, secret: str | None) -> Replica:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "HUME_", "TWILIO_"))}
    environ |= {
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "HUME_API_KEY": EVI_KEY,
        "GATEWAY_EVI_URL": evi_url,
        "GATEWAY_PUBLIC_URL": public_url,
    }
    if secret is not None:
        environ["GATEWAY_STREAM_TOKEN_SECRET"] = secret
    log_path = tmp_path / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", "0"], env=environ, stdout=subprocess.PIPE, stderr=log
        )
    return Replica(proc, log_path)


async def _listening(replica: Replica) -> None:
    """Wait (bounded) for the process's ``gateway listening on http://127.0.0.1:PORT`` line."""
    assert replica.proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(replica.proc.stdout.readline), START_TIMEOUT_S)
    found = re.search(rb"listening on (http://([\d.]+):(\d+))", line)
    assert found, f"no listening line: {line!r}; log: {replica.log()}"
    replica.base_url = found.group(1).decode()
    replica.address = (found.group(2).decode(), int(found.group(3)))


async def _stop(replica: Replica) -> None:
    if replica.proc.poll() is None:
        replica.proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        await asyncio.to_thread(replica.proc.wait, 10)
    if replica.proc.stdout is not None:
        replica.proc.stdout.close()


@asynccontextmanager
async def two_replicas(
    tmp_path: Path, secrets_: tuple[str, str]
) -> AsyncIterator[tuple[Balancer, Replica, Replica, EviSimulator]]:
    """Replicas A and B behind one balancer, sharing one EVI simulator; A gets ``secrets_[0]``, B ``secrets_[1]``."""
    balancer = Balancer()
    replicas: list[Replica] = []
    async with EviSimulator(api_key=EVI_KEY) as sim:
        await balancer.start()
        try:
            for name, secret in zip("AB", secrets_, strict=True):
                replicas.append(_spawn(tmp_path, name, balancer.url, sim.url, secret))
            await asyncio.gather(*(_listening(r) for r in replicas))
            balancer.backends = [r.address for r in replicas]
            yield balancer, replicas[0], replicas[1], sim
        finally:
            for replica in replicas:
                await _stop(replica)
            await balancer.close()


def _caller(balancer: Balancer, http: aiohttp.ClientSession) -> TwilioCaller:
    """A caller dialling through the balancer; talks for a second, then stays on the line."""
    audio = pcm16_to_ulaw(speechlike_pcm16(1000, 8000, seed=7))
    config = CallerConfig(
        webhook_url=balancer.url + VOICE_PATH, auth_token=AUTH_TOKEN, audio_ulaw=audio, hangup_after_ms=60_000
    )
    return TwilioCaller(config, session=http)


def _fresh_connections() -> aiohttp.ClientSession:
    """Like Twilio's, the webhook and the stream arrive on connections of their own (none kept alive)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def _replay(
    balancer: Balancer, http: aiohttp.ClientSession, call_sid: str, token: str
) -> aiohttp.ClientWebSocketResponse:
    """A correctly signed upgrade through the balancer whose ``start`` carries a captured token."""
    ws_url = balancer.url.replace("http://", "ws://") + MEDIA_PATH
    ws = await http.ws_connect(ws_url, headers={"X-Twilio-Signature": sign_request(AUTH_TOKEN, ws_url, {})})
    await ws.send_str(tw.connected_message())
    await ws.send_str(
        tw.start_message(
            sequence_number=1,
            stream_sid="MZ" + secrets.token_hex(16),
            account_sid="AC" + "0" * 32,
            call_sid=call_sid,
            custom_parameters={"token": token},
        )
    )
    return ws


async def _log_says(replica: Replica, text: str) -> bool:
    """Whether ``text`` shows up in the replica's log within a few seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while text not in replica.log():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_a_call_answered_by_one_replica_streams_through_another(tmp_path: Path) -> None:
    """With a shared GATEWAY_STREAM_TOKEN_SECRET, a call whose webhook reaches replica A and whose Media Stream
    reaches replica B is bridged by B: the caller's audio reaches EVI and EVI's audio reaches the caller."""
    async with two_replicas(tmp_path, (SECRET, SECRET)) as (balancer, a, b, sim), _fresh_connections() as http:
        balancer.plan.extend([0, 1])
        async with _caller(balancer, http) as caller:
            await asyncio.wait_for(caller.dial(), WAIT_S)
            session = await sim.wait_session(0, timeout_s=WAIT_S)
            await session.wait_audio_ms(500, timeout_s=WAIT_S)
            await session.wait_said(await session.say(speechlike_pcm16(600, 24000, seed=3), 24000), WAIT_S)
            assert await caller.wait_for(lambda r: r.heard_audio_ms >= 500, WAIT_S), caller.record.heard_audio_ms
            assert balancer.routed == [0, 1]  # the webhook went to A, the stream to B
            assert (await b.health(http))["active_calls"] == 1
            assert (await a.health(http))["calls_started"] == 0
            await caller.hang_up()
            assert await caller.wait_closed(WAIT_S)


async def test_a_replayed_token_is_refused_by_the_replica_that_redeemed_it(tmp_path: Path) -> None:
    """A stream token redeemed on replica B is refused when replayed on B (closed 1008, logged as reused, no
    second EVI session). Single use is per process: within its life the same token is still accepted once by
    replica A, which has not seen it. That is the replay window docs/deployment.md §3 describes."""
    async with two_replicas(tmp_path, (SECRET, SECRET)) as (balancer, a, b, sim), _fresh_connections() as http:
        balancer.plan.extend([0, 1, 1, 0])
        async with _caller(balancer, http) as caller:
            await asyncio.wait_for(caller.dial(), WAIT_S)
            await (await sim.wait_session(0, timeout_s=WAIT_S)).wait_message("session_settings", timeout_s=WAIT_S)
            call_sid, token = caller.config.call_sid, caller.record.custom_parameters["token"]

            replayed = await _replay(balancer, http, call_sid, token)  # on B again
            closing = await replayed.receive(timeout=WAIT_S)
            assert closing.type is aiohttp.WSMsgType.CLOSE and replayed.close_code == 1008
            assert closing.extra == "start_rejected"
            assert await _log_says(b, "stream token rejected: reused")
            assert sim.connection_attempts == 1

            elsewhere = await _replay(balancer, http, call_sid, token)  # on A, within the token's life
            try:
                await sim.wait_session(1, timeout_s=WAIT_S)
            finally:
                await elsewhere.close()
            assert balancer.routed == [0, 1, 1, 0]
            await caller.hang_up()
            assert await caller.wait_closed(WAIT_S)


async def test_replicas_with_different_secrets_refuse_each_others_streams(tmp_path: Path) -> None:
    """When the replicas' GATEWAY_STREAM_TOKEN_SECRETs differ, the stream of a call answered by A is refused by B
    before any EVI session: closed with 1008 by the gateway, and B logs the token's bad signature."""
    async with (
        two_replicas(tmp_path, (SECRET, secrets.token_hex(32))) as (balancer, _, b, sim),
        _fresh_connections() as http,
    ):
        balancer.plan.extend([0, 1])
        async with _caller(balancer, http) as caller:
            await asyncio.wait_for(caller.dial(), WAIT_S)
            assert await caller.wait_closed(WAIT_S)
            assert (caller.record.closed_by, caller.record.close_code) == ("gateway", 1008)
        assert await _log_says(b, "stream token rejected: bad_signature")
        assert sim.connection_attempts == 0 and balancer.routed == [0, 1]


@pytest.mark.parametrize(
    ("environ", "warned"),
    [
        ({"TWILIO_AUTH_TOKEN": AUTH_TOKEN}, True),
        ({"TWILIO_AUTH_TOKEN": AUTH_TOKEN, "GATEWAY_STREAM_TOKEN_SECRET": SECRET}, False),
        ({}, False),  # --insecure: no stream tokens are checked, any replica takes any stream
    ],
)
def test_a_gateway_without_the_shared_secret_warns_at_start(
    caplog: pytest.LogCaptureFixture, environ: dict[str, str], warned: bool
) -> None:
    """Building the app with signatures on but no GATEWAY_STREAM_TOKEN_SECRET logs a warning that several
    replicas need it; with the secret, or with no checks at all, nothing is said."""
    with caplog.at_level(logging.WARNING, logger="gateway.http"):
        make_app(load_settings(environ={"HUME_API_KEY": EVI_KEY, **environ}))
    warnings = [r for r in caplog.records if "GATEWAY_STREAM_TOKEN_SECRET" in r.getMessage()]
    assert bool(warnings) is warned
    assert all(r.levelno == logging.WARNING for r in warnings)
