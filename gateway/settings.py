"""Settings: defaults < a TOML file < environment variables. Secrets come only from the environment.

The environment names in docs/design.md "Environment" are fixed: ``HUME_API_KEY``, ``HUME_SECRET_KEY``,
``HUME_CONFIG_ID``, ``GATEWAY_EVI_URL``, ``TWILIO_ACCOUNT_SID``, ``TWILIO_AUTH_TOKEN``,
``GATEWAY_PUBLIC_URL``, ``GATEWAY_HOST``, ``GATEWAY_PORT``; every other setting is ``GATEWAY_<NAME>``.
"""

from __future__ import annotations

import functools
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.core.budgets import BudgetParams
from gateway.core.inbound import InboundParams
from gateway.core.params import CallParams
from gateway.core.playout import PlayoutParams
from gateway.errors import ConfigError

SECRET_FIELDS = (
    "hume_api_key",
    "hume_secret_key",
    "twilio_auth_token",
    "tool_signing_secret",
    "admin_token",
    "stream_token_secret",
    "twilio_webhook_shared_key",
)
PROMPTS_DIR = Path(__file__).resolve().parent / "data" / "prompts"


class Settings(BaseSettings):
    """Every setting of the gateway, with its default and unit."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="forbid", frozen=True, populate_by_name=True)

    # Network and public identity.
    host: str = Field("127.0.0.1", description="interface `gateway serve` listens on")
    port: int = Field(8080, ge=0, le=65535, description="TCP port `gateway serve` listens on (0 = any free port)")
    public_url: str | None = Field(
        None, description="public base URL Twilio reaches, e.g. https://voice.example.com (http→ws, https→wss)"
    )
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        "auto", description="event loop of `gateway serve`: auto = uvloop when installed (the `fast` extra)"
    )
    # Upstream (EVI).
    evi_url: str = Field("wss://api.hume.ai/v0/evi/chat", description="EVI chat WebSocket URL")
    hume_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("HUME_API_KEY", "hume_api_key"), description="EVI API key (env only)"
    )
    hume_secret_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("HUME_SECRET_KEY", "hume_secret_key"),
        description="with the API key: use short-lived access tokens instead of sending the key (env only)",
    )
    hume_config_id: str | None = Field(
        None, validation_alias=AliasChoices("HUME_CONFIG_ID", "hume_config_id"), description="EVI config id"
    )
    hume_api_url: str | None = Field(
        None, description="EVI REST base URL (configs, prompts, tools, access tokens); default: from evi_url"
    )
    evi_max_message_bytes: int = Field(16 * 2**20, description="largest EVI message accepted (EVI allows 16 MiB)")
    evi_connect_timeout_s: float = Field(10.0, gt=0, description="time allowed to open the EVI session")
    max_concurrent_calls: int = Field(
        5, ge=1, description="calls bridged at once (EVI's default account allows 5 chats); more get 503"
    )
    # Twilio.
    twilio_account_sid: str | None = Field(
        None, validation_alias=AliasChoices("TWILIO_ACCOUNT_SID", "twilio_account_sid")
    )
    twilio_auth_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("TWILIO_AUTH_TOKEN", "twilio_auth_token"),
        description="enables X-Twilio-Signature checks on the webhook and the stream (env only)",
    )
    twilio_api_url: str = Field(
        "https://api.twilio.com", description="Twilio REST base URL (call control: transfers, hang-ups)"
    )
    twilio_max_message_bytes: int = Field(64 * 1024, description="largest Media Stream frame accepted")
    stream_token_ttl_s: float = Field(30.0, gt=0, description="life of the single-use stream token in the TwiML")
    # Audio and call limits.
    evi_input_rate_hz: int = Field(8000, description="rate of linear16 sent to EVI (8000 = no resampling)")
    playout_lead_ms: int = Field(160, ge=20, description="audio kept queued at Twilio ahead of real time")
    playout_max_message_ms: int = Field(
        200, ge=20, description="media message sent to Twilio whenever its lead falls below playout_lead_ms"
    )
    preroll_ms: int = Field(2000, ge=0, description="caller audio held while EVI connects (oldest dropped)")
    start_timeout_s: float = Field(
        5.0, gt=0, description="time a Media Stream socket may take to send a valid start (it holds no call slot)"
    )
    max_call_duration_s: float = Field(
        1800.0, gt=0, description="EVI's session limit (EVI caps at 30 min); the gateway's own is a grace after it"
    )
    max_duration_grace_s: float = Field(
        30.0, ge=0, description="the gateway ends a call this long after max_call_duration_s, with a goodbye"
    )
    goodbye_timeout_s: float = Field(
        10.0, gt=0, description="after EVI's hang_up, time allowed for its goodbye to arrive before ending anyway"
    )
    drain_timeout_s: float = Field(10.0, gt=0, description="time allowed for queued audio to play before closing")
    reconnect_window_s: float = Field(
        10.0, gt=0, description="a dropped EVI session may take this long to be resumed (3 tries) before the call ends"
    )
    handoff_timeout_s: float = Field(8.0, gt=0, description="a transfer waits this long at most for the hand-off line")
    # Call control and tools.
    numbers_file: Path | None = Field(None, description="numbers file: per called number config, tools, transfers")
    tool_signing_secret: SecretStr | None = Field(
        None, description="HMAC key signing requests to tool endpoints (X-Gateway-Signature; env only)"
    )
    admin_token: SecretStr | None = Field(
        None, description="bearer token of the admin routes; off when unset (env only)"
    )
    # Operations.
    drain_grace_s: float = Field(
        300.0, ge=0, description="after SIGTERM, live calls may go on this long before the drain goodbye ends them"
    )
    drain_goodbye_message: str = Field(
        "We are sorry, this line has to close now. Please call again. Goodbye.",
        description="what the agent says to calls still live when the drain grace ends",
    )
    stream_token_secret: SecretStr | None = Field(
        None, description="HMAC key of stream tokens, shared by every replica (random per process if unset; env only)"
    )
    twilio_webhook_shared_key: SecretStr | None = Field(
        None, description="a Webhooks Rule's SharedKey secret, for webhooks signed with HMAC-SHA256 (env only)"
    )
    recordings_dir: Path | None = Field(None, description="where recorded calls are written (WAV + JSONL)")
    post_call_url: str | None = Field(None, description="signed POST of each call's summary after it ends")
    log_format: Literal["text", "json"] = Field("text", description="log lines as text or one JSON object each")
    # Budgets and liveness of the peers (docs/operations.md §4).
    max_pending_streams: int = Field(
        16, ge=1, description="Media Stream sockets waiting for their start at once; more get 503"
    )
    send_timeout_s: float = Field(
        5.0, gt=0, description="a frame to Twilio or EVI not written within this ends that socket (peer not reading)"
    )
    http_idle_timeout_s: float = Field(
        75.0, gt=0, description="an HTTP connection with no request in progress (half-open, slow headers) is closed"
    )
    webhook_body_timeout_s: float = Field(10.0, gt=0, description="time a webhook's body may take to arrive")
    twilio_send_queue_bytes: int = Field(
        256 * 1024, ge=4096, description="frames waiting for Twilio to read; past this the caller is not reading"
    )
    mark_echo_timeout_s: float = Field(
        5.0, gt=0, description="a mark echo this late after its audio should have played: the caller is not reading"
    )
    twilio_heartbeat_s: float = Field(10.0, gt=0, description="ping interval on the Media Stream (pong due in half)")
    evi_ping_interval_s: float = Field(5.0, gt=0, description="ping interval on the EVI socket")
    evi_ping_timeout_s: float = Field(5.0, gt=0, description="an EVI socket whose pong is this late is dropped")
    caller_silence_timeout_s: float = Field(
        10.0, gt=0, description="a started stream with no media for this long has stalled: the call ends"
    )
    caller_burst_ms: int = Field(2000, ge=100, description="caller audio accepted ahead of real time")
    caller_flood_limit_ms: int = Field(
        10_000, ge=100, description="caller audio refused for arriving too fast before the call ends"
    )
    upstream_stall_timeout_s: float = Field(
        10.0, gt=0, description="EVI silent this long while the caller speaks is treated as a dropped session"
    )
    playout_max_queued_ms: int = Field(
        60_000, ge=1000, description="agent audio held ahead of Twilio; a response passing it is cut"
    )
    max_audio_output_bytes: int = Field(4 * 2**20, ge=65536, description="largest EVI audio_output decoded")
    agent_audio_bytes_per_s: int = Field(2 * 2**20, ge=65536, description="EVI audio_output bytes decoded per second")
    agent_audio_burst_bytes: int = Field(8 * 2**20, ge=65536, description="EVI audio_output bytes decoded at once")

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @property
    def hume_rest_url(self) -> str:
        """``hume_api_url``, else the scheme and host of ``evi_url`` (``wss`` → ``https``, ``ws`` → ``http``)."""
        if self.hume_api_url:
            return self.hume_api_url.rstrip("/")
        parts = urlsplit(self.evi_url)
        return urlunsplit(("https" if parts.scheme == "wss" else "http", parts.netloc, "", "", ""))

    def call_params(self) -> CallParams:
        """The slice of settings one call needs."""
        return CallParams(
            input_rate_hz=self.evi_input_rate_hz,
            preroll_ms=self.preroll_ms,
            start_timeout_s=self.start_timeout_s,
            upstream_connect_timeout_s=self.evi_connect_timeout_s,
            max_duration_s=self.max_call_duration_s + self.max_duration_grace_s,
            goodbye_timeout_s=self.goodbye_timeout_s,
            drain_timeout_s=self.drain_timeout_s,
            shutdown_message=self.drain_goodbye_message,
            reconnect_window_s=self.reconnect_window_s,
            handoff_timeout_s=self.handoff_timeout_s,
            transfers_enabled=self.twilio_account_sid is not None and self.twilio_auth_token is not None,
            apology_ulaw=prompt("apology"),
            playout=PlayoutParams(
                lead_ms=self.playout_lead_ms,
                max_message_ms=self.playout_max_message_ms,
                max_queued_ms=self.playout_max_queued_ms,
            ),
            inbound=InboundParams(),
            budgets=BudgetParams(
                caller_burst_ms=self.caller_burst_ms,
                caller_flood_limit_ms=self.caller_flood_limit_ms,
                caller_silence_timeout_s=self.caller_silence_timeout_s,
                agent_audio_bytes_per_s=self.agent_audio_bytes_per_s,
                agent_audio_burst_bytes=self.agent_audio_burst_bytes,
                max_audio_output_bytes=self.max_audio_output_bytes,
                upstream_stall_timeout_s=self.upstream_stall_timeout_s,
                mark_echo_timeout_s=self.mark_echo_timeout_s,
            ),
        )

    def redacted(self) -> dict[str, Any]:
        """Effective settings for printing: secrets shown as set/unset only."""
        data = self.model_dump()
        for name in SECRET_FIELDS:
            data[name] = "***" if data[name] else None
        return data


def load_settings(
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build settings from defaults, an optional TOML file, the environment and explicit overrides."""
    file_values: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            file_values = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        if "gateway" in file_values and isinstance(file_values["gateway"], dict):
            file_values = file_values["gateway"]
        leaked = [name for name in SECRET_FIELDS if name in file_values]
        if leaked:
            raise ConfigError(f"{path}: secrets ({', '.join(leaked)}) belong in the environment, not in files")
    env_values = _values_from_env(os.environ if environ is None else environ)
    merged = {**file_values, **env_values, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc


def env_names(field_name: str) -> list[str]:
    """The environment variables that set ``field_name`` (the fixed names of docs/design.md "Environment" first)."""
    alias = Settings.model_fields[field_name].validation_alias
    names = [c for c in alias.choices if isinstance(c, str) and c.isupper()] if isinstance(alias, AliasChoices) else []
    return names or [f"GATEWAY_{field_name.upper()}"]


def _values_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        for key in env_names(name):
            if key in environ and environ[key] != "":
                values[name] = environ[key]
                break
    return values


@functools.cache
def prompt(name: str) -> bytes:
    """A bundled prompt of the gateway's (8 kHz μ-law from ``gateway/data/prompts``), read once."""
    return (PROMPTS_DIR / f"{name}.ulaw").read_bytes()
