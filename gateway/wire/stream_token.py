"""Signed, single-use, short-lived per-call tokens for the Media Stream (twilio-media-streams.md §3.6).

Owns: minting the token the voice webhook puts in ``<Parameter name="token">`` and redeeming it from
``start.customParameters`` before any audio is bridged ("Defence in depth" in §3.6).

Token text: ``v1.<nonce>.<expiry_ms>.<call_sid>.<mac>`` — nonce and call SID base64url, expiry in
integer milliseconds of the clock the caller passes, mac = HMAC-SHA256 over the other fields. About
120 characters for a 34-character call SID, well under the 500 a ``<Parameter>`` allows (§3.1).

Several replicas verify each other's tokens when they share the secret and pass the wall clock
(``time.time()``, as the app does), with ``clock_skew_s`` for the disagreement between their clocks.
Redeemed nonces live in memory, so single use holds per process: a token captured in flight could be
redeemed once more on another replica within its life (deployment.md §3).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import heapq
import hmac
import math
import re
import secrets

from gateway.errors import ConfigError

__all__ = ["StreamTokens", "TokenVerdict"]

_VERSION = "v1"
_NONCE_BYTES = 16
_MIN_SECRET_BYTES = 16
_MAX_TOKEN_CHARS = 480  # a longer string cannot be one of ours; refuse it before any work
_TOKEN = re.compile(
    r"v1\.(?P<nonce>[A-Za-z0-9_-]{22})\.(?P<expiry>-?[0-9]{1,20})"
    r"\.(?P<call>[A-Za-z0-9_-]+)\.(?P<mac>[A-Za-z0-9_-]{43})"
)


class TokenVerdict(enum.Enum):
    """Outcome of redeeming a stream token; only OK lets the call through."""

    OK = "ok"
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    WRONG_CALL = "wrong_call"
    EXPIRED = "expired"
    REUSED = "reused"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class StreamTokens:
    """Mints and redeems stream tokens; remembers redeemed nonces until they expire.

    Memory is bounded by the tokens redeemed within one ``ttl_s``: expired nonces are pruned on every
    ``mint`` and ``redeem``. Time is passed in (seconds of one clock for mint and redeem); this class reads no clock.
    """

    __slots__ = ("_expiry_heap", "_secret", "_skew_ms", "_ttl_ms", "_used")

    def __init__(self, secret: bytes, ttl_s: float = 30.0, *, clock_skew_s: float = 0.0) -> None:
        """``clock_skew_s``: how far the minting clock may run ahead of this one (replicas on other hosts)."""
        if len(secret) < _MIN_SECRET_BYTES:
            raise ConfigError(f"stream token secret must be at least {_MIN_SECRET_BYTES} bytes")
        if not (math.isfinite(ttl_s) and ttl_s > 0):
            raise ConfigError(f"stream token ttl_s must be a positive number of seconds, got {ttl_s!r}")
        if not (math.isfinite(clock_skew_s) and 0 <= clock_skew_s < ttl_s):
            raise ConfigError(f"stream token clock_skew_s must be in [0, ttl_s), got {clock_skew_s!r}")
        self._secret = secret
        self._ttl_ms = math.ceil(ttl_s * 1000)
        self._skew_ms = math.ceil(clock_skew_s * 1000)
        self._used: dict[str, int] = {}  # nonce -> expiry_ms
        self._expiry_heap: list[tuple[int, str]] = []

    @property
    def used_count(self) -> int:
        """Redeemed nonces still remembered (each is forgotten once its token has expired)."""
        return len(self._used)

    def mint(self, call_sid: str, now_s: float) -> str:
        """A fresh token for ``call_sid``, valid for ``ttl_s`` from ``now_s`` and redeemable once."""
        if not call_sid:
            raise ValueError("cannot mint a stream token for an empty call SID")
        now_ms = _to_ms(now_s)
        self._prune(now_ms)
        nonce = _b64(secrets.token_bytes(_NONCE_BYTES))
        expiry = str(now_ms + self._ttl_ms)
        call = _b64(call_sid.encode("utf-8", "surrogatepass"))
        return f"{_VERSION}.{nonce}.{expiry}.{call}.{self._mac(nonce, expiry, call)}"

    def redeem(self, token: str, call_sid: str, now_s: float) -> TokenVerdict:
        """Check ``token`` for the call ``call_sid`` at ``now_s``; OK consumes it."""
        now_ms = _to_ms(now_s)
        self._prune(now_ms)
        if not isinstance(token, str) or len(token) > _MAX_TOKEN_CHARS:
            return TokenVerdict.MALFORMED
        match = _TOKEN.fullmatch(token)
        if match is None:
            return TokenVerdict.MALFORMED
        nonce, expiry, call, mac = match.group("nonce", "expiry", "call", "mac")
        try:
            token_call = _unb64(call)
        except binascii.Error:
            return TokenVerdict.MALFORMED
        if not hmac.compare_digest(mac, self._mac(nonce, expiry, call)):
            return TokenVerdict.BAD_SIGNATURE
        if not hmac.compare_digest(token_call, call_sid.encode("utf-8", "surrogatepass")):
            return TokenVerdict.WRONG_CALL
        expiry_ms = int(expiry)
        # Past its expiry, or further ahead than one ttl (plus the skew allowed between replicas' clocks):
        # minted under another clock, e.g. before a reboot.
        if not now_ms < expiry_ms <= now_ms + self._ttl_ms + self._skew_ms:
            return TokenVerdict.EXPIRED
        if nonce in self._used:
            return TokenVerdict.REUSED
        self._used[nonce] = expiry_ms
        heapq.heappush(self._expiry_heap, (expiry_ms, nonce))
        return TokenVerdict.OK

    def _mac(self, nonce: str, expiry: str, call: str) -> str:
        message = f"{_VERSION}.{nonce}.{expiry}.{call}".encode("ascii")
        return _b64(hmac.new(self._secret, message, hashlib.sha256).digest())

    def _prune(self, now_ms: int) -> None:
        heap = self._expiry_heap
        while heap and heap[0][0] <= now_ms:
            _, nonce = heapq.heappop(heap)
            self._used.pop(nonce, None)


def _to_ms(now_s: float) -> int:
    if not math.isfinite(now_s):
        raise ValueError(f"now_s must be a finite number of seconds, got {now_s!r}")
    return math.floor(now_s * 1000)
