"""Tools the gateway answers for EVI: function tools behind HTTP endpoints, and its own ``transfer_call``.

docs/evi-protocol.md §6: EVI sends ``tool_call`` for a function tool and waits for ``tool_response`` or
``tool_error`` with the same ``tool_call_id``; built-in tools (``tool_type`` builtin) are EVI's to run. The
gateway never leaves EVI waiting: every function call it receives is answered, with the endpoint's content,
with an error the model can say, or, for a call the gateway cannot run, at once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

TRANSFER_TOOL = "transfer_call"
"""The gateway's own function tool: move the caller to a destination of the line's transfer table."""
HANG_UP_TOOL = "hang_up"
"""EVI's built-in tool that ends the call after a farewell (docs/evi-protocol.md §6)."""

_NO_SCHEMA: Mapping[str, Any] = MappingProxyType({"type": "object", "properties": {}})


@dataclass(frozen=True, slots=True)
class ToolEndpoint:
    """A function tool the gateway answers by POSTing to ``url`` (docs/design.md "Tool endpoint contract")."""

    name: str
    url: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: _NO_SCHEMA)
    """The tool's JSON schema, as the model is told it (an EVI tool's ``parameters``)."""
    timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """How a tool call ended: ``content`` for the model, or an ``error`` (with a ``code``) and a sentence to say."""

    ok: bool
    content: str
    error: str = ""
    code: str = ""

    @classmethod
    def success(cls, content: str) -> ToolOutcome:
        """The tool ran; ``content`` is its result."""
        return cls(True, content)

    @classmethod
    def failure(cls, code: str, error: str, content: str) -> ToolOutcome:
        """The tool did not run; ``error`` is for logs, ``content`` is what the model is told."""
        return cls(False, content, error, code)


def transfer_tool_schema(destinations: Mapping[str, str]) -> dict[str, Any]:
    """JSON schema of ``transfer_call``: one ``destination``, a name of the line's transfer table."""
    return {
        "type": "object",
        "properties": {
            "destination": {
                "type": "string",
                "enum": sorted(destinations),
                "description": "Who to transfer the caller to",
            }
        },
        "required": ["destination"],
    }


# ---------------------------------------------------------------------------------- deciding a tool call


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer the upstream now with this encoded ``tool_response``/``tool_error`` (None: no answer is due)."""

    text: str | None
    code: str = ""
    """The tool_error code when ``text`` is an error (for metrics)."""


@dataclass(frozen=True, slots=True)
class Run:
    """POST the call to its endpoint; the answer follows when it finishes."""

    endpoint: ToolEndpoint
    parameters: Any


@dataclass(frozen=True, slots=True)
class HangUp:
    """The agent ends the call; ``reply`` is due first if EVI asked for one."""

    reply: str | None


@dataclass(frozen=True, slots=True)
class Transfer:
    """Move the caller to ``target``; ``accepted`` answers EVI if the call can be moved now, else ``refused``."""

    destination: str
    target: str
    accepted: str
    refused: str


ToolDecision = Reply | Run | HangUp | Transfer


class ToolCalls:
    """Decides what each ``tool_call`` needs and keeps the function calls still waiting for their endpoint."""

    def __init__(
        self,
        codec: ToolReplies,
        tools: Mapping[str, ToolEndpoint],
        transfer: Mapping[str, str],
        *,
        transfers_enabled: bool,
    ) -> None:
        self._codec = codec
        self._tools = tools
        self._transfer = transfer
        self._transfers_enabled = transfers_enabled
        self._pending: dict[str, str] = {}  # tool call id → tool name

    @property
    def pending(self) -> frozenset[str]:
        """Tool call ids sent to an endpoint and not yet answered."""
        return frozenset(self._pending)

    def decide(self, name: str, tool_call_id: str, parameters_json: str, *, builtin: bool, reply: bool) -> ToolDecision:
        """What to do with a ``tool_call`` (``reply``: EVI asked for a response)."""
        if name == HANG_UP_TOOL:
            answer = self._codec.encode_tool_response(tool_call_id, "ok") if reply and not builtin else None
            return HangUp(answer)
        if builtin:
            return Reply(None)  # docs/evi-protocol.md §6: EVI runs its built-in tools itself
        parameters = _parse_parameters(parameters_json)
        if name == TRANSFER_TOOL:
            return self._transfer_decision(tool_call_id, parameters)
        endpoint = self._tools.get(name)
        if endpoint is None:
            known = ", ".join(sorted(self._tools)) or "none"
            problem = f"no tool named {name!r} on this line (known: {known})"
            say = "That tool is not available on this line."
            return Reply(self._error(tool_call_id, "unknown_tool", problem, say), "unknown_tool")
        if parameters is _INVALID:
            say = "The tool could not be called with those details."
            problem = "parameters are not a JSON object"
            return Reply(self._error(tool_call_id, "invalid_parameters", problem, say), "invalid_parameters")
        self._pending[tool_call_id] = name
        return Run(endpoint, parameters)

    def finished(self, tool_call_id: str, outcome: ToolOutcome) -> tuple[str, str] | None:
        """The tool's name and the encoded answer for a finished endpoint call; None if it is not waiting."""
        name = self._pending.pop(tool_call_id, None)
        if name is None:
            return None
        return name, self._answer(tool_call_id, outcome)

    def _answer(self, tool_call_id: str, outcome: ToolOutcome) -> str:
        if outcome.ok:
            return self._codec.encode_tool_response(tool_call_id, outcome.content)
        return self._error(tool_call_id, outcome.code, outcome.error, outcome.content)

    def _transfer_decision(self, tool_call_id: str, parameters: Any) -> ToolDecision:
        names = ", ".join(sorted(self._transfer)) or "none"
        if not self._transfers_enabled or not self._transfer:
            problem = "transfers are not configured on this line"
            say = "I cannot transfer calls on this line."
            return Reply(self._error(tool_call_id, "transfer_unavailable", problem, say), "transfer_unavailable")
        destination = parameters.get("destination") if isinstance(parameters, dict) else None
        if not isinstance(destination, str) or destination not in self._transfer:
            problem = f"destination {destination!r} is not one of: {names}"
            say = f"I can only transfer you to: {names}."
            return Reply(self._error(tool_call_id, "unknown_destination", problem, say), "unknown_destination")
        return Transfer(
            destination,
            self._transfer[destination],
            accepted=self._codec.encode_tool_response(tool_call_id, f"Transferring the caller to {destination} now."),
            refused=self._error(
                tool_call_id,
                "transfer_not_possible",
                "the call cannot be transferred now",
                "I cannot transfer the call right now.",
            ),
        )

    def _error(self, tool_call_id: str, code: str, error: str, content: str) -> str:
        return self._codec.encode_tool_error(tool_call_id, error, content, code)


class ToolReplies(Protocol):
    """The part of the upstream codec that answers tool calls (gateway.wire.upstream.UpstreamCodec)."""

    def encode_tool_response(self, tool_call_id: str, content: str) -> str:
        """A tool result."""
        ...

    def encode_tool_error(self, tool_call_id: str, error: str, content: str | None = None, code: str = "") -> str:
        """A failed tool call."""
        ...


_INVALID = object()


def _parse_parameters(parameters_json: str) -> Any:
    """docs/evi-protocol.md §6: ``parameters`` is a JSON string of the arguments; an object, or invalid."""
    try:
        value = json.loads(parameters_json) if parameters_json.strip() else {}
    except ValueError:
        return _INVALID
    return value if isinstance(value, dict) else _INVALID


_MAX_CONTENT_CHARS = 20_000


def outcome_from_http(status: int, content_type: str, body: str) -> ToolOutcome:
    """What an endpoint's answer means: 2xx → its ``content`` (JSON) or text; anything else → an error."""
    if 200 <= status < 300:
        content = body
        if "json" in content_type.lower():
            try:
                parsed = json.loads(body)
            except ValueError:
                return ToolOutcome.failure("bad_response", "the endpoint sent invalid JSON", _SORRY)
            if isinstance(parsed, dict) and "content" in parsed:
                inner = parsed["content"]
                content = inner if isinstance(inner, str) else json.dumps(inner)
        return ToolOutcome.success(content[:_MAX_CONTENT_CHARS])
    return ToolOutcome.failure(f"http_{status}", f"the endpoint answered HTTP {status}: {body[:200]}", _SORRY)


_SORRY = "The system that answers this is not available right now."


def call_context(
    call_sid: str | None, custom: Mapping[str, str], chat_id: str | None, chat_group_id: str | None
) -> dict[str, str | None]:
    """The call's identity sent with each tool request (docs/design.md "Tool endpoint contract")."""
    return {
        "call_sid": call_sid,
        "from": custom.get("caller_number"),
        "to": custom.get("called_number"),
        "chat_id": chat_id,
        "chat_group_id": chat_group_id,
    }
