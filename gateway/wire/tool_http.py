"""The gateway's tool endpoint contract (docs/design.md "Tool endpoint contract"): request body and signature.

``POST url`` with JSON ``{tool_call_id, name, parameters, call: {call_sid, from, to, chat_id, chat_group_id}}``
and headers ``X-Gateway-Timestamp`` (Unix seconds) and ``X-Gateway-Signature: sha256=<hex HMAC-SHA256 of
"<timestamp>.<body>">``, keyed by ``GATEWAY_TOOL_SIGNING_SECRET``. A receiver recomputes the HMAC over the
raw body it got and rejects stale timestamps, so a request can be neither forged nor replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

TIMESTAMP_HEADER = "X-Gateway-Timestamp"
SIGNATURE_HEADER = "X-Gateway-Signature"
_PREFIX = "sha256="


def request_body(tool_call_id: str, name: str, parameters: Any, call: Mapping[str, str | None]) -> bytes:
    """The JSON body POSTed to a tool endpoint (compact, UTF-8)."""
    payload = {"tool_call_id": tool_call_id, "name": name, "parameters": parameters, "call": dict(call)}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def signature(secret: bytes, timestamp_s: int, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256 over ``"<timestamp>.<body>"``."""
    digest = hmac.new(secret, str(timestamp_s).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return _PREFIX + digest


def signed_headers(secret: bytes | None, timestamp_s: int, body: bytes) -> dict[str, str]:
    """Headers of one request; without a secret the request is sent unsigned (no signature header)."""
    headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(timestamp_s)}
    if secret:
        headers[SIGNATURE_HEADER] = signature(secret, timestamp_s, body)
    return headers


def verify(secret: bytes, headers: Mapping[str, str], body: bytes, now_s: float, *, max_skew_s: float = 300.0) -> bool:
    """What a tool server checks: a fresh timestamp and a matching signature (constant-time compare)."""
    stamp = headers.get(TIMESTAMP_HEADER, "")
    given = headers.get(SIGNATURE_HEADER, "")
    if not stamp.isdigit() or abs(now_s - int(stamp)) > max_skew_s:
        return False
    return hmac.compare_digest(given, signature(secret, int(stamp), body))
