"""Twilio's signatures as Twilio computes them, checked over real sockets (twilio-media-streams.md §3.6): the
full URL with its query string exactly as sent, GET webhooks, the shared-key (HMAC-SHA256) mode, JSON bodies
signed through ``bodySHA256``, and the query of the stream upgrade. A refused request never reaches EVI."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
from urllib.parse import urlencode

import aiohttp
import pytest
from twilio.request_validator import HMAC_SHA256
from yarl import URL

from gateway.adapters.app import STATUS_PATH, VOICE_PATH
from gateway.simulator.caller import CallerConfig, TwilioCaller
from gateway.simulator.evi import EviSimulator
from gateway.simulator.harness import RunningGateway, running_gateway
from gateway.simulator.loopback import free_port
from gateway.wire.twilio_signature import SETTINGS_HEADER, sign_request

SHARED_KEY = "shared-key-secret-0123456789abcdef"
RULE_HEADER = "key=webhooks_sharedkey_01j8example,algorithm=HMAC_SHA256"


def form(call_sid: str = "CA" + "1" * 32) -> dict[str, str]:
    """What Twilio sends to a voice webhook (§4), enough for the gateway to answer."""
    return {
        "AccountSid": "AC" + "2" * 32,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": "+15550100001",
        "To": "+15550100002",
    }


async def send(
    method: str, url: str, *, data: dict[str, str] | str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """One request with ``url`` on the wire exactly as written (no re-encoding); status and body."""
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, URL(url, encoded=True), data=data, headers=headers or {}) as resp,
    ):
        return resp.status, await resp.text()


def caller(gw: RunningGateway, **kw: object) -> CallerConfig:
    """A caller who talks for a moment and stays on the line."""
    settings: dict[str, object] = {"auth_token": gw.auth_token, "audio_ulaw": b"\xff" * 1600, "hangup_after_ms": 60_000}
    return CallerConfig(**{"webhook_url": gw.webhook_url, **settings, **kw})  # type: ignore[arg-type]


async def bridged(config: CallerConfig, sim: EviSimulator) -> TwilioCaller:
    """Dial ``config`` and wait until its EVI session has settings and some caller audio; the caller stays up."""
    index, call = len(sim.sessions), TwilioCaller(config)
    await call.__aenter__()
    try:
        await call.dial()
        session = await sim.wait_session(index)
        await session.wait_message("session_settings")
        await session.wait_audio_ms(40)
    except BaseException:
        await call.close()
        raise
    return call


# ------------------------------------------------------------------------------- query-string webhooks


async def test_a_webhook_with_a_query_string_is_checked_over_the_full_url(
    gateway: RunningGateway, evi_sim: EviSimulator
) -> None:
    """A number whose webhook is …/twilio/voice?line=a&tag=%2B1 is signed over that full URL, query included
    and still encoded: the gateway accepts it, and the call is answered and bridged to EVI."""
    call = await bridged(caller(gateway, webhook_url=gateway.webhook_url + "?line=a&tag=%2B1"), evi_sim)
    try:
        assert call.record.webhook_status == 200 and "token" in call.record.custom_parameters
    finally:
        await call.hang_up()
        await call.close()


@pytest.mark.parametrize(
    ("signed_query", "sent_query"),
    [
        ("", "?line=a"),  # signed without the query, which was added afterwards
        ("?line=a", ""),  # the query dropped after signing
        ("?line=a", "?line=b"),  # a query value changed
        ("?line=a%20b", "?line=a+b"),  # the same value, encoded otherwise than what was signed
        ("?to=client:alice", "?to=client%3Aalice"),  # signed decoded, sent encoded
        ("?line=a&x=1", "?x=1&line=a"),  # the same pairs in another order
    ],
)
async def test_a_webhook_whose_signature_does_not_cover_its_query_exactly_is_refused(
    gateway: RunningGateway, evi_sim: EviSimulator, signed_query: str, sent_query: str
) -> None:
    """A POST webhook whose signature was made over another query string than the one sent (added, dropped,
    changed, encoded otherwise or reordered) gets 403; no stream is reserved and EVI is never contacted."""
    assert gateway.auth_token is not None
    params = form()
    signature = sign_request(gateway.auth_token, gateway.webhook_url + signed_query, params)
    status, _ = await send(
        "POST", gateway.webhook_url + sent_query, data=params, headers={"X-Twilio-Signature": signature}
    )
    assert status == 403
    assert gateway.state.reservations == {} and evi_sim.connection_attempts == 0


async def test_behind_a_proxy_the_public_path_prefix_is_part_of_the_signed_url(evi_sim: EviSimulator) -> None:
    """With GATEWAY_PUBLIC_URL ending in /gw (a proxy in front strips it), the webhook is checked over the public
    …/gw/twilio/voice?line=a: that signature is answered with a stream URL under /gw, while a signature over the
    URL the gateway itself sees is refused."""
    async with running_gateway(evi_sim.url, public_path="/gw") as gw:
        assert gw.auth_token is not None
        params, query = form(), "?line=a"
        public = gw.base_url + "/gw" + VOICE_PATH + query
        status, twiml = await send(
            "POST",
            gw.webhook_url + query,
            data=params,
            headers={"X-Twilio-Signature": sign_request(gw.auth_token, public, params)},
        )
        assert status == 200 and f'url="ws://127.0.0.1:{gw.port}/gw/twilio/media"' in twiml
        internal = sign_request(gw.auth_token, gw.webhook_url + query, params)
        status, _ = await send("POST", gw.webhook_url + query, data=params, headers={"X-Twilio-Signature": internal})
        assert status == 403


# ------------------------------------------------------------------------------------------ GET webhooks


async def test_a_get_webhook_signed_like_twilio_is_answered_from_its_query(
    gateway: RunningGateway, evi_sim: EviSimulator
) -> None:
    """A number set to HTTP GET: Twilio's parameters come in the query and the URL alone is signed. The call is
    answered from those parameters (the caller's number, encoded as client%3Aalice, reaches the stream's
    custom parameters decoded) and bridged to EVI."""
    config = caller(
        gateway, webhook_method="GET", from_number="client:alice", webhook_url=gateway.webhook_url + "?line=a"
    )
    call = await bridged(config, evi_sim)
    try:
        assert call.record.custom_parameters["caller_number"] == "client:alice"
    finally:
        await call.hang_up()
        await call.close()


@pytest.mark.parametrize("forgery", ["wrong token", "signed as a form", "query changed after signing", "unsigned"])
async def test_a_forged_get_webhook_is_refused(gateway: RunningGateway, evi_sim: EviSimulator, forgery: str) -> None:
    """A GET webhook whose signature is not Twilio's over its URL and query (another key, the parameters
    signed as a POST form, a parameter changed after signing, no signature) gets 403 and reaches nothing."""
    assert gateway.auth_token is not None
    params = form()
    url = gateway.webhook_url + "?" + urlencode(params)
    signature: str | None = sign_request(gateway.auth_token, url, {})
    if forgery == "wrong token":
        signature = sign_request("another-auth-token-0000000000000", url, {})
    elif forgery == "signed as a form":
        signature = sign_request(gateway.auth_token, gateway.webhook_url, params)
        url = gateway.webhook_url + "?" + urlencode(params)
    elif forgery == "query changed after signing":
        url = url.replace(urlencode({"From": params["From"]}), urlencode({"From": "+15559999999"}))
    elif forgery == "unsigned":
        signature = None
    status, _ = await send("GET", url, headers={"X-Twilio-Signature": signature} if signature else {})
    assert status == 403
    assert gateway.state.reservations == {} and evi_sim.connection_attempts == 0


async def test_head_on_the_webhook_is_not_answered(gateway: RunningGateway) -> None:
    """HEAD is not a webhook Twilio sends: 405, and no stream slot is reserved for it."""
    assert gateway.auth_token is not None
    url = gateway.webhook_url + "?" + urlencode(form())
    status, _ = await send("HEAD", url, headers={"X-Twilio-Signature": sign_request(gateway.auth_token, url, {})})
    assert status == 405 and gateway.state.reservations == {}


# ---------------------------------------------------------------------------------------- status callback


STATUS_FORM = {"CallSid": "CA1", "StreamSid": "MZ1", "StreamEvent": "stream-error", "StreamError": "31920 handshake"}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("signed", 204),
        ("signed with a query", 204),
        ("parameter changed", 403),
        ("query added after signing", 403),
        ("wrong token", 403),
    ],
)
async def test_the_stream_status_callback_is_checked_like_a_webhook(
    gateway: RunningGateway, case: str, expected: int
) -> None:
    """The stream statusCallback is accepted (204) when signed over its full URL, query included, and every
    parameter; a changed parameter, an unsigned query or another key gets 403."""
    assert gateway.auth_token is not None
    url = signed_url = gateway.base_url + STATUS_PATH
    sent, key = dict(STATUS_FORM), gateway.auth_token
    if case == "signed with a query":
        url = signed_url = url + "?attempt=2"
    elif case == "parameter changed":
        sent["StreamEvent"] = "stream-stopped"
    elif case == "query added after signing":
        url += "?attempt=2"
    elif case == "wrong token":
        key = "another-auth-token-0000000000000"
    signature = sign_request(key, signed_url, STATUS_FORM)
    status, _ = await send("POST", url, data=sent, headers={"X-Twilio-Signature": signature})
    assert status == expected


async def test_the_stream_status_callback_takes_no_get(gateway: RunningGateway) -> None:
    """The TwiML asks for the status callback by POST, so a GET, even one signed like Twilio's, is 405."""
    assert gateway.auth_token is not None
    url = gateway.base_url + STATUS_PATH + "?" + urlencode(STATUS_FORM)
    status, _ = await send("GET", url, headers={"X-Twilio-Signature": sign_request(gateway.auth_token, url, {})})
    assert status == 405


@pytest.mark.parametrize(("body", "expected"), [('{"StreamEvent":"stream-error"}', 204), ('{"StreamEvent":"x"}', 403)])
async def test_a_json_body_is_checked_through_its_hash_in_the_query(
    gateway: RunningGateway, body: str, expected: int
) -> None:
    """A JSON body is signed through ``bodySHA256`` in the signed URL: the body it hashes is accepted (204), any
    other body under the same URL and signature is refused (403)."""
    assert gateway.auth_token is not None
    signed_body = '{"StreamEvent":"stream-error"}'
    url = gateway.base_url + STATUS_PATH + "?bodySHA256=" + hashlib.sha256(signed_body.encode()).hexdigest()
    headers = {"X-Twilio-Signature": sign_request(gateway.auth_token, url, {}), "Content-Type": "application/json"}
    status, _ = await send("POST", url, data=body, headers=headers)
    assert status == expected


# ------------------------------------------------------------------------------- shared key, HMAC-SHA256


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("rule header, shared key, HMAC-SHA256", 200),
        ("rule header dropped", 403),
        ("rule header, auth token, HMAC-SHA1", 403),
        ("rule header naming HMAC_SHA512", 403),
        ("auth token, HMAC-SHA1, no header", 200),
    ],
)
async def test_webhooks_signed_with_a_webhooks_rules_shared_key(
    evi_sim: EviSimulator, case: str, expected: int
) -> None:
    """With GATEWAY_TWILIO_WEBHOOK_SHARED_KEY set, a webhook carrying X-Twilio-Webhooks-Signature-Settings is
    checked with that key and the algorithm the header names (HMAC-SHA256); without the header, with the auth
    token as before. A signature under the wrong key or mode, or an algorithm the SDK lacks, gets 403."""
    async with running_gateway(evi_sim.url, twilio_webhook_shared_key=SHARED_KEY) as gw:
        assert gw.auth_token is not None
        url, params = gw.webhook_url + "?line=a", form()
        signature = sign_request(SHARED_KEY, url, params, algorithm=HMAC_SHA256)
        headers = {"X-Twilio-Signature": signature, SETTINGS_HEADER: RULE_HEADER}
        if case == "rule header dropped":
            del headers[SETTINGS_HEADER]
        elif case == "rule header, auth token, HMAC-SHA1":
            headers["X-Twilio-Signature"] = sign_request(gw.auth_token, url, params)
        elif case == "rule header naming HMAC_SHA512":
            headers[SETTINGS_HEADER] = RULE_HEADER.replace("HMAC_SHA256", "HMAC_SHA512")
        elif case == "auth token, HMAC-SHA1, no header":
            headers = {"X-Twilio-Signature": sign_request(gw.auth_token, url, params)}
        status, twiml = await send("POST", url, data=params, headers=headers)
        assert status == expected
        assert ("<Stream" in twiml) is (expected == 200)


async def test_a_shared_key_signature_is_refused_when_no_shared_key_is_configured(
    gateway: RunningGateway, evi_sim: EviSimulator
) -> None:
    """A webhook announcing a Webhooks Rule's key cannot be checked without that key: 403, whatever it carries."""
    url, params = gateway.webhook_url, form()
    headers = {
        "X-Twilio-Signature": sign_request(SHARED_KEY, url, params, algorithm=HMAC_SHA256),
        SETTINGS_HEADER: RULE_HEADER,
    }
    status, _ = await send("POST", url, data=params, headers=headers)
    assert status == 403 and evi_sim.connection_attempts == 0


# ------------------------------------------------------------------------------------------ stream upgrade


async def test_a_query_on_the_stream_upgrade_must_be_signed_too(gateway: RunningGateway, evi_sim: EviSimulator) -> None:
    """The TwiML's stream URL has no query; an upgrade that adds one under the signature of the bare URL gets 403."""
    assert gateway.auth_token is not None
    headers = {"X-Twilio-Signature": sign_request(gateway.auth_token, gateway.media_url, {})}
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(URL(gateway.media_url + "?token=x", encoded=True), headers=headers)
    assert info.value.status == 403 and evi_sim.connection_attempts == 0


# ------------------------------------------------------------------------------- cut-off request bodies


async def test_a_webhook_body_cut_off_by_the_client_is_one_line_not_a_traceback(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that announces a body, sends part of it and leaves gets one INFO line from the gateway, no
    ERROR and no traceback (any client could otherwise write those into the log), and the next webhook is
    answered as usual."""
    caplog.set_level(logging.INFO)
    body = urlencode(form()).encode()
    for path in (VOICE_PATH, STATUS_PATH):
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body) + 100}\r\n\r\n"
        )
        writer.write(head.encode() + body[:20])
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()
        await writer.wait_closed()
    for _ in range(50):
        if sum("left before its body was complete" in r.getMessage() for r in caplog.records) == 2:
            break
        await asyncio.sleep(0.05)
    assert sum("left before its body was complete" in r.getMessage() for r in caplog.records) == 2
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    url = gateway.webhook_url
    status, _ = await send(
        "POST", url, data=form(), headers={"X-Twilio-Signature": sign_request(gateway.auth_token or "", url, form())}
    )
    assert status == 200


async def test_a_webhook_body_slower_than_its_bound_gets_408(evi_sim: EviSimulator) -> None:
    """A webhook whose body does not arrive within webhook_body_timeout_s is answered 408 at once."""
    async with running_gateway(evi_sim.url, webhook_body_timeout_s=0.5) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        body = urlencode(form()).encode()
        writer.write(
            f"POST {VOICE_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nContent-Type: "
            f"application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        await writer.wait_closed()
        assert status_line.startswith(b"HTTP/1.1 408"), status_line


async def test_served_gateway_closes_half_open_connections_after_the_idle_bound() -> None:
    """`gateway serve` closes a connection that sends nothing, or only part of a request line or of its headers,
    once http_idle_timeout_s has passed (aiohttp's own default would hold each for an hour)."""
    port = free_port()
    env = {**os.environ, "TWILIO_AUTH_TOKEN": "tok", "GATEWAY_HTTP_IDLE_TIMEOUT_S": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--port", str(port),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        await asyncio.wait_for(proc.stdout.readline(), 20)
        partial = [b"", b"POST /twilio/vo", b"POST /twilio/voice HTTP/1.1\r\nHost: x\r\nX-Slow: aaa"]
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in partial]
        for (_reader, writer), data in zip(conns, partial, strict=True):
            writer.write(data)
            await writer.drain()
        ends = [await asyncio.wait_for(reader.read(), 10) for reader, _writer in conns]
        assert all(end == b"" for end in ends)  # closed by the gateway, without an answer
        for _reader, writer in conns:
            writer.close()
    finally:
        proc.terminate()
        await proc.wait()
