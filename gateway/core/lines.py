"""What one phone line (a called number) asks of a call: EVI config, variables, tools, transfers, messages.

Pure data, read from the numbers file by :mod:`gateway.numbers` (docs/design.md "Numbers file"). The core looks
a line up once, at Twilio's ``start``, by the called number the webhook put in the stream's custom parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from gateway.core.tools import ToolEndpoint
from gateway.wire.upstream import SessionStart

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class LineConfig:
    """Everything per called number; :data:`DEFAULT_LINE` when no numbers file is given."""

    config_id: str | None = None
    """The EVI config for this line (else the gateway's ``HUME_CONFIG_ID``)."""
    variables: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    """EVI session variables, merged under the call's own (caller number, call SID)."""
    busy_message: str = "All our agents are busy. Please call again later."
    overflow_number: str = ""
    """Dialled instead of speaking ``busy_message`` when the gateway is full, if set."""
    record: bool = False
    transfer: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    """``transfer_call`` destinations: name → E.164 number or ``sip:`` URI. The model picks a name only."""
    tools: Mapping[str, ToolEndpoint] = field(default_factory=lambda: _EMPTY)
    max_duration_message: str = "We have reached the time limit for this call. Thank you for calling, goodbye."
    """Spoken (through EVI, ``assistant_input``) when the gateway's own duration limit ends the call."""
    transfer_failed_message: str = "I am sorry, I could not transfer your call. Can I help you with anything else?"
    """Spoken (through EVI) when Twilio refused to move the call."""


DEFAULT_LINE = LineConfig()

CALL_VARIABLE_KEYS = ("caller_number", "called_number")
"""Keys of ``start.customParameters`` that become upstream session variables (set by our webhook)."""


def session_for(
    line: LineConfig,
    custom_parameters: Mapping[str, str],
    call_sid: str | None,
    *,
    input_rate_hz: int,
    resume_group_id: str | None = None,
) -> SessionStart:
    """The upstream session of a call on ``line``: its config, and the line's variables under the call's own."""
    variables = dict(line.variables)
    variables.update({k: v for k in CALL_VARIABLE_KEYS if (v := custom_parameters.get(k))})
    if call_sid is not None:
        variables["call_sid"] = call_sid
    return SessionStart(
        input_rate_hz=input_rate_hz,
        channels=1,
        variables=variables,
        custom_session_id=call_sid,
        config_id=line.config_id,
        resume_group_id=resume_group_id,
    )


class LineDirectory(Protocol):
    """Finds the line of a called number (gateway.numbers.NumbersFile implements it)."""

    def line_for(self, called_number: str | None) -> LineConfig:
        """The line for ``called_number`` (E.164), or the default line."""
        ...


class SingleLine:
    """A directory with one line for every number."""

    def __init__(self, line: LineConfig = DEFAULT_LINE) -> None:
        self._line = line

    def line_for(self, called_number: str | None) -> LineConfig:
        """Always the one line."""
        return self._line
