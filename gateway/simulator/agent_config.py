"""How the offline EVI-compatible agent behaves (docs/evi-protocol.md §5, §8): its knobs and fault injection."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from gateway.errors import ConfigError
from gateway.simulator.agent_script import AgentScript, load_agent_script
from gateway.simulator.vad import TurnParams
from gateway.wire.evi_rest_configs import ReturnConfig, ReturnEventMessageSpec, ReturnTimeoutSpec

__all__ = ["OUTPUT_RATES_HZ", "AgentConfig", "for_evi_config"]

OUTPUT_RATES_HZ = (24000, 48000)
"""evi-protocol.md §4.2: EVI's audio_output is 48 kHz as documented or 24 kHz as observed."""


def _positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ConfigError(f"agent {name} must be positive, got {value!r}")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """How the simulated agent behaves; ConfigError on values it cannot honour.

    ``realtime_factor`` paces audio: 0.5 sends each second of speech in half a second (EVI generates faster
    than real time, §4.2), 0 as fast as possible. ``cheap`` uses no speech backends at all: utterances are
    "transcribed" as their duration and replies are a tone as long as the reply would take to say.
    Timeouts of ``None`` are off. The fault options act once per chat, timed from its start, except
    ``delay_first_audio_ms`` and ``stall_mid_response`` (chunks sent before stopping), which act on every
    response.
    """

    script: AgentScript = field(default_factory=load_agent_script)
    turn: TurnParams = field(default_factory=TurnParams)
    output_rate_hz: int = 24000
    chunk_ms: int = 200
    realtime_factor: float = 0.5
    synthesizer: str = "auto"
    recognizer: str = "auto"
    cheap: bool = False
    interim_interval_ms: int = 500
    inactivity_timeout_s: float | None = 120.0
    inactivity_grace_s: float = 15.0
    max_duration_s: float | None = 1800.0
    tool_timeout_s: float = 10.0
    assistant_end_after_interruption: bool = False
    delay_first_audio_ms: float = 0.0
    stall_mid_response: int | None = None
    close_after_s: float | None = None
    close_code: int = 1011
    error_after_s: float | None = None
    error_code: str = "I0100"
    drop_after_s: float | None = None
    history_limit: int = 300
    max_chat_groups: int = 10_000

    def __post_init__(self) -> None:
        if self.output_rate_hz not in OUTPUT_RATES_HZ:
            raise ConfigError(f"agent output_rate_hz must be 24000 or 48000, got {self.output_rate_hz}")
        if not 10 <= self.chunk_ms <= 2000:
            raise ConfigError(f"agent chunk_ms must be 10-2000, got {self.chunk_ms}")
        if self.realtime_factor < 0:
            raise ConfigError(f"agent realtime_factor must be >= 0, got {self.realtime_factor}")
        if self.interim_interval_ms < 100:
            raise ConfigError(f"agent interim_interval_ms must be >= 100, got {self.interim_interval_ms}")
        for name in ("inactivity_timeout_s", "max_duration_s", "close_after_s", "error_after_s", "drop_after_s"):
            _positive(name, getattr(self, name))
        _positive("inactivity_grace_s", self.inactivity_grace_s)
        _positive("tool_timeout_s", self.tool_timeout_s)
        if self.delay_first_audio_ms < 0:
            raise ConfigError(f"agent delay_first_audio_ms must be >= 0, got {self.delay_first_audio_ms}")
        if self.stall_mid_response is not None and self.stall_mid_response < 0:
            raise ConfigError(f"agent stall_mid_response must be >= 0 chunks, got {self.stall_mid_response}")
        if not (self.close_code in (1000, 1001, 1008, 1011) or 3000 <= self.close_code <= 4999):
            raise ConfigError(f"agent close_code must be 1000, 1001, 1008, 1011 or 3000-4999, got {self.close_code}")
        if self.history_limit < 1 or self.max_chat_groups < 1:
            raise ConfigError("agent history_limit and max_chat_groups must be at least 1")


def for_evi_config(cfg: AgentConfig, config: ReturnConfig) -> AgentConfig:
    """The agent as a chat opened with ``config_id`` behaves (docs/evi-protocol.md §12.4): the config's event
    messages, timeouts, turn detection and interruption replace the simulator's own; only the config's
    function tools (by name) may be called."""
    script = cfg.script
    events = config.event_messages
    changes: dict[str, object] = {}

    def said(spec: ReturnEventMessageSpec | None, default: str) -> str:
        if spec is None:
            return default
        return (spec.text or default) if spec.enabled else ""

    if events is not None:
        changes["greeting"] = said(events.on_new_chat, script.greeting)
        changes["inactivity_warning"] = said(events.on_inactivity_timeout, script.inactivity_warning)
        changes["max_duration_message"] = said(events.on_max_duration_timeout, script.max_duration_message)
    tools = frozenset(tool.name for tool in config.tools or [])
    rules = tuple(rule for rule in script.rules if rule.tool is None or rule.tool in tools)
    fields: dict[str, object] = {"script": replace(script, rules=rules, **changes)}  # type: ignore[arg-type]
    timeouts = config.timeouts
    if timeouts is not None:
        fields["inactivity_timeout_s"] = _seconds(timeouts.inactivity)
        fields["max_duration_s"] = _seconds(timeouts.max_duration)
    turn = cfg.turn
    if config.turn_detection is not None:
        detected = {k: v for k, v in config.turn_detection.to_dict().items() if v is not None}
        turn = replace(turn, **detected)
    if config.interruption is not None and config.interruption.min_interruption_ms is not None:
        turn = replace(turn, min_interruption_ms=config.interruption.min_interruption_ms)
    fields["turn"] = turn
    return replace(cfg, **fields)  # type: ignore[arg-type]


def _seconds(spec: ReturnTimeoutSpec | None) -> float | None:
    if spec is None or not spec.enabled:
        return None
    return float(spec.duration_secs) if spec.duration_secs else None
