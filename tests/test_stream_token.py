"""Single-use, short-lived, signed stream tokens carried in <Parameter name="token">."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ConfigError
from gateway.wire.stream_token import StreamTokens, TokenVerdict
from gateway.wire.twiml import MAX_PARAMETER_CHARS

SECRET = b"0123456789abcdef0123456789abcdef"
CALL = "CA5b6b0ecf1e7a4d3b7e0c9a1f2d3e4f5a"
OTHER_CALL = "CA00000000000000000000000000000000"
T0 = 1000.0


def test_fresh_token_redeems_ok() -> None:
    """A token redeemed for its own call within its lifetime is OK."""
    tokens = StreamTokens(SECRET, ttl_s=30.0)
    assert tokens.redeem(tokens.mint(CALL, T0), CALL, T0 + 1.0) is TokenVerdict.OK


def test_token_is_short_url_safe_text() -> None:
    """A token is URL-safe ASCII and fits a <Parameter> with plenty of room."""
    token = StreamTokens(SECRET).mint(CALL, T0)
    assert token.isascii()
    assert set(token) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    assert len("token") + len(token) < MAX_PARAMETER_CHARS // 3


def test_tokens_are_unique() -> None:
    """Two tokens minted for the same call at the same instant differ (random nonce)."""
    tokens = StreamTokens(SECRET)
    assert len({tokens.mint(CALL, T0) for _ in range(50)}) == 50


def test_second_redeem_is_reused() -> None:
    """A token that was redeemed once is REUSED the second time, even for the same call."""
    tokens = StreamTokens(SECRET)
    token = tokens.mint(CALL, T0)
    assert tokens.redeem(token, CALL, T0) is TokenVerdict.OK
    assert tokens.redeem(token, CALL, T0 + 2.0) is TokenVerdict.REUSED


def test_each_token_is_independent() -> None:
    """Redeeming one token does not consume another minted for the same call."""
    tokens = StreamTokens(SECRET)
    first, second = tokens.mint(CALL, T0), tokens.mint(CALL, T0)
    assert tokens.redeem(first, CALL, T0) is TokenVerdict.OK
    assert tokens.redeem(second, CALL, T0) is TokenVerdict.OK


def test_token_for_another_call_is_wrong_call() -> None:
    """A valid token presented on another call's stream is WRONG_CALL and stays usable for its own call."""
    tokens = StreamTokens(SECRET)
    token = tokens.mint(CALL, T0)
    assert tokens.redeem(token, OTHER_CALL, T0) is TokenVerdict.WRONG_CALL
    assert tokens.redeem(token, CALL, T0) is TokenVerdict.OK


def test_expiry_boundary() -> None:
    """A token is good just before now + ttl_s and EXPIRED from then on."""
    tokens = StreamTokens(SECRET, ttl_s=30.0)
    token = tokens.mint(CALL, T0)
    assert tokens.redeem(token, CALL, T0 + 30.0) is TokenVerdict.EXPIRED
    assert tokens.redeem(token, CALL, T0 + 29.99) is TokenVerdict.OK


def test_token_from_the_future_is_expired() -> None:
    """A token whose expiry lies beyond now + ttl_s (minted under another clock) is refused as EXPIRED."""
    tokens = StreamTokens(SECRET, ttl_s=30.0)
    token = tokens.mint(CALL, T0 + 3600.0)
    assert tokens.redeem(token, CALL, T0) is TokenVerdict.EXPIRED


def test_token_from_another_secret_is_bad_signature() -> None:
    """A well-formed token minted with another secret is BAD_SIGNATURE."""
    token = StreamTokens(b"another secret, 32 bytes long!!!").mint(CALL, T0)
    assert StreamTokens(SECRET).redeem(token, CALL, T0) is TokenVerdict.BAD_SIGNATURE


def _replace_field(token: str, index: int, value: str) -> str:
    fields = token.split(".")
    fields[index] = value
    return ".".join(fields)


@pytest.mark.parametrize(
    ("index", "value"),
    [
        (1, "A" * 22),  # nonce swapped
        (2, "99999999"),  # expiry pushed later
        (3, "Q0EwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMA"),  # bound to another call
        (4, "A" * 43),  # mac replaced
    ],
)
def test_tampered_token_is_bad_signature(index: int, value: str) -> None:
    """Changing any field of a minted token while keeping its shape gives BAD_SIGNATURE."""
    tokens = StreamTokens(SECRET)
    token = _replace_field(tokens.mint(CALL, T0), index, value)
    assert tokens.redeem(token, CALL, T0) is TokenVerdict.BAD_SIGNATURE


@pytest.mark.parametrize(
    "token",
    [
        "",
        "v1",
        "v1....",
        "v2.AAAAAAAAAAAAAAAAAAAAAA.1.Q0E.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "v1.AAAAAAAAAAAAAAAAAAAAAA.1.Q.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "x" * 10_000,
    ],
)
def test_garbage_is_malformed(token: str) -> None:
    """Strings that are not shaped like a token (wrong version, bad base64, huge) are MALFORMED."""
    assert StreamTokens(SECRET).redeem(token, CALL, T0) is TokenVerdict.MALFORMED


def test_truncated_token_is_malformed() -> None:
    """A minted token cut short is MALFORMED."""
    tokens = StreamTokens(SECRET)
    assert tokens.redeem(tokens.mint(CALL, T0)[:-1], CALL, T0) is TokenVerdict.MALFORMED


@settings(max_examples=200)
@given(token=st.text(max_size=200), call_sid=st.text(max_size=40), now_s=st.floats(-1e6, 1e6))
def test_random_strings_never_raise_and_never_pass(token: str, call_sid: str, now_s: float) -> None:
    """Any string redeemed for any call at any time gives a verdict other than OK, without raising."""
    tokens = StreamTokens(SECRET)
    verdict = tokens.redeem(token, call_sid, now_s)
    assert isinstance(verdict, TokenVerdict)
    assert verdict is not TokenVerdict.OK


@settings(max_examples=200)
@given(call_sid=st.text(min_size=1, max_size=40), flip=st.integers(min_value=0, max_value=200))
def test_any_single_character_change_is_refused(call_sid: str, flip: int) -> None:
    """Changing any one character of a minted token never yields OK."""
    tokens = StreamTokens(SECRET)
    token = tokens.mint(call_sid, T0)
    i = flip % len(token)
    changed = token[:i] + ("B" if token[i] != "B" else "C") + token[i + 1 :]
    assert tokens.redeem(changed, call_sid, T0) is not TokenVerdict.OK


def test_used_nonces_are_forgotten_after_expiry() -> None:
    """Redeemed nonces are remembered until their token expires, then pruned so memory stays bounded."""
    tokens = StreamTokens(SECRET, ttl_s=30.0)
    for i in range(20):
        now_s = T0 + i * 0.5
        assert tokens.redeem(tokens.mint(CALL, now_s), CALL, now_s) is TokenVerdict.OK
    assert tokens.used_count == 20
    tokens.mint(CALL, T0 + 34.9)  # the ten minted at T0..T0+4.5 expired at T0+30..T0+34.5
    assert tokens.used_count == 10
    assert tokens.redeem("garbage", CALL, T0 + 100.0) is TokenVerdict.MALFORMED
    assert tokens.used_count == 0


def test_failed_redeems_remember_nothing() -> None:
    """Only OK redemptions are remembered; refused tokens take no memory."""
    tokens = StreamTokens(SECRET)
    token = tokens.mint(CALL, T0)
    tokens.redeem(token, OTHER_CALL, T0)
    tokens.redeem("garbage", CALL, T0)
    tokens.redeem(token, CALL, T0 + 60.0)
    assert tokens.used_count == 0


@pytest.mark.parametrize(("secret", "ttl_s"), [(b"short", 30.0), (SECRET, 0.0), (SECRET, -1.0), (SECRET, float("nan"))])
def test_bad_settings_are_config_errors(secret: bytes, ttl_s: float) -> None:
    """A secret under 16 bytes or a non-positive ttl is a ConfigError."""
    with pytest.raises(ConfigError):
        StreamTokens(secret, ttl_s)


def test_mint_refuses_empty_call_sid() -> None:
    """Minting for an empty call SID is refused."""
    with pytest.raises(ValueError, match="call SID"):
        StreamTokens(SECRET).mint("", T0)


def test_a_token_from_a_replica_whose_clock_runs_ahead_is_accepted_within_the_skew() -> None:
    """Minted by a replica whose clock is 1.5 s ahead, a token is OK on one allowing 2 s of skew and EXPIRED
    (from the future) on one allowing none; beyond the skew it is refused on both."""
    minting = StreamTokens(SECRET, ttl_s=30.0)
    tolerant, strict = StreamTokens(SECRET, ttl_s=30.0, clock_skew_s=2.0), StreamTokens(SECRET, ttl_s=30.0)
    token = minting.mint(CALL, T0 + 1.5)  # the redeeming replicas read T0 at that moment
    assert strict.redeem(token, CALL, T0) is TokenVerdict.EXPIRED
    assert tolerant.redeem(token, CALL, T0) is TokenVerdict.OK
    assert tolerant.redeem(minting.mint(CALL, T0 + 2.5), CALL, T0) is TokenVerdict.EXPIRED


@pytest.mark.parametrize("clock_skew_s", [-1.0, 30.0, float("inf")])
def test_a_skew_outside_zero_to_ttl_is_a_config_error(clock_skew_s: float) -> None:
    """The allowed clock skew must be at least 0 and less than the token's life."""
    with pytest.raises(ConfigError, match="clock_skew_s"):
        StreamTokens(SECRET, ttl_s=30.0, clock_skew_s=clock_skew_s)
