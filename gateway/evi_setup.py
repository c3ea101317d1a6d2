"""``gateway evi setup``: a phone-ready EVI config from nothing, kept up to date (docs/evi-protocol.md §12.7).

It makes sure one prompt, one tool per function tool the phone lines use (``transfer_call`` with the transfer
destinations' names as its enum, and every ``[[tool]]`` of the numbers file) and one config wiring them with
EVI's built-in ``hang_up`` exist under ``NAME``. The config is tuned for the phone: event messages for the
greeting, inactivity and the duration limit, timeouts, and turn detection and interruption settings for
8 kHz audio. Each resource gets a new version only when what it should be differs from its newest version,
so running setup twice changes nothing.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.adapters.evi_rest_client import EviRestClient, Kind
from gateway.core.tools import TRANSFER_TOOL, transfer_tool_schema
from gateway.numbers import NumbersFile

log = logging.getLogger("gateway.evi.setup")

PHONE_PROMPT = """You are a friendly, efficient voice assistant answering a telephone call.
Speak in short sentences: one or two at a time, then let the caller talk. Never read out lists or links.
The caller hears you through a phone line, so spell out numbers and avoid symbols.
When the caller says goodbye, say a short farewell and then use the hang_up tool.
When the caller asks for a person, or you cannot help, use the transfer_call tool with one of its destinations.
When a tool fails, say so briefly and offer another way to help."""
"""The default system prompt (``--prompt-file`` replaces it)."""

GREETING = "Hello, thanks for calling. How can I help you today?"
INACTIVITY_MESSAGE = "Are you still there? I will end the call soon if I do not hear from you."
MAX_DURATION_MESSAGE = "We have reached the time limit for this call. Thank you for calling, goodbye."
# docs/evi-protocol.md §5: phone audio is narrow-band and noisy, so speech must stand a little further above
# the noise; a caller should be able to cut the agent off sooner than EVI's 800 ms default.
PHONE_TURN_DETECTION = {"end_of_turn_silence_ms": 800, "prefix_padding_ms": 300, "speech_detection_threshold": 0.6}
PHONE_INTERRUPTION = {"min_interruption_ms": 600}
EVI_VERSION = "3"


@dataclass
class SetupReport:
    """What setup found and did, for printing."""

    config_id: str = ""
    config_version: int = 0
    actions: list[str] = field(default_factory=list)
    """One line per resource: ``created``, ``new version`` or ``unchanged``, with its name and version."""

    @property
    def changed(self) -> bool:
        """Whether anything was created or versioned."""
        return any(not line.startswith("unchanged") for line in self.actions)


def desired_tools(numbers: NumbersFile | None) -> list[dict[str, Any]]:
    """The EVI function tools the phone lines use, as posted tool bodies."""
    tools: list[dict[str, Any]] = []
    if numbers is not None:
        lines = [numbers.default, *numbers.numbers.values()]
        destinations = {name: "" for line in lines for name in line.transfer}
        if destinations:
            tools.append(
                {
                    "name": TRANSFER_TOOL,
                    "description": "Transfer the caller to a person. Pick one of the destinations.",
                    "parameters": json.dumps(transfer_tool_schema(destinations), sort_keys=True),
                    "fallback_content": "I could not transfer the call.",
                }
            )
        for endpoint in numbers.tools.values():
            tools.append(
                {
                    "name": endpoint.name,
                    "description": endpoint.description or endpoint.name,
                    "parameters": json.dumps(dict(endpoint.parameters), sort_keys=True),
                    "fallback_content": "That system is not available right now.",
                }
            )
    return tools


def desired_config(
    name: str, prompt: tuple[str, int], tools: list[tuple[str, int]], voice: str | None
) -> dict[str, Any]:
    """The posted config body (without ``name`` when used for a new version)."""
    body: dict[str, Any] = {
        "name": name,
        "evi_version": EVI_VERSION,
        "prompt": {"id": prompt[0], "version": prompt[1]},
        "tools": [{"id": tool_id, "version": version} for tool_id, version in tools],
        "builtin_tools": [{"name": "hang_up"}],
        "event_messages": {
            "on_new_chat": {"enabled": True, "text": GREETING},
            "on_inactivity_timeout": {"enabled": True, "text": INACTIVITY_MESSAGE},
            "on_max_duration_timeout": {"enabled": True, "text": MAX_DURATION_MESSAGE},
        },
        "timeouts": {
            "inactivity": {"enabled": True, "duration_secs": 120},
            "max_duration": {"enabled": True, "duration_secs": 1800},
        },
        "turn_detection": dict(PHONE_TURN_DETECTION),
        "interruption": dict(PHONE_INTERRUPTION),
    }
    if voice:
        body["voice"] = {"name": voice, "provider": "HUME_AI"}
    return body


def config_shape(config: Any) -> dict[str, Any]:
    """The parts of a returned config that setup decides, in the shape of :func:`desired_config`."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    shape: dict[str, Any] = {
        "name": data.get("name"),
        "evi_version": data.get("evi_version"),
        "prompt": {"id": (data.get("prompt") or {}).get("id"), "version": (data.get("prompt") or {}).get("version")},
        "tools": [{"id": t["id"], "version": t["version"]} for t in data.get("tools") or []],
        "builtin_tools": [{"name": t["name"]} for t in data.get("builtin_tools") or []],
        "event_messages": {
            key: {"enabled": spec.get("enabled"), "text": spec.get("text")}
            for key, spec in (data.get("event_messages") or {}).items()
            if spec is not None
        },
        "timeouts": {
            key: {"enabled": spec.get("enabled"), "duration_secs": spec.get("duration_secs")}
            for key, spec in (data.get("timeouts") or {}).items()
            if spec is not None
        },
        "turn_detection": {k: v for k, v in (data.get("turn_detection") or {}).items() if v is not None},
        "interruption": {k: v for k, v in (data.get("interruption") or {}).items() if v is not None},
    }
    voice = data.get("voice")
    if voice:
        shape["voice"] = {"name": voice.get("name"), "provider": voice.get("provider")}
    return shape


async def run_setup(
    client: EviRestClient,
    name: str,
    *,
    numbers: NumbersFile | None = None,
    voice: str | None = None,
    prompt_text: str = PHONE_PROMPT,
) -> SetupReport:
    """Create or update the prompt, tools and config named ``name``; never versions what is unchanged."""
    report = SetupReport()
    prompt = await _ensure(client, report, "prompts", name, {"name": name, "text": prompt_text}, ("text",))
    tools = []
    for body in desired_tools(numbers):
        tool = await _ensure(
            client, report, "tools", body["name"], body, ("description", "parameters", "fallback_content")
        )
        tools.append((tool.id, tool.version))
    wanted = desired_config(name, (prompt.id, prompt.version), tools, voice)
    existing = await _newest(client, "configs", name)
    if existing is None:
        config = await client.create("configs", wanted)
        report.actions.append(f"created config {name!r} v{config.version}")
    elif _same(config_shape(existing), wanted):
        config = existing
        report.actions.append(f"unchanged config {name!r} v{config.version}")
    else:
        config = await client.new_version("configs", existing.id, {k: v for k, v in wanted.items() if k != "name"})
        report.actions.append(f"new version of config {name!r} v{config.version}")
    report.config_id, report.config_version = config.id, config.version
    return report


async def _newest(client: EviRestClient, kind: Kind, name: str) -> Any | None:
    found = [item for item in await client.list_all(kind, name=name) if item.name == name]
    return max(found, key=lambda item: item.modified_on) if found else None


async def _ensure(
    client: EviRestClient, report: SetupReport, kind: Kind, name: str, body: dict[str, Any], compared: tuple[str, ...]
) -> Any:
    what = kind[:-1]
    existing = await _newest(client, kind, name)
    if existing is None:
        made = await client.create(kind, body)
        report.actions.append(f"created {what} {name!r} v{made.version}")
        return made
    current = existing.to_dict()
    if all(_normalised(current.get(key)) == _normalised(body.get(key)) for key in compared):
        report.actions.append(f"unchanged {what} {name!r} v{existing.version}")
        return existing
    made = await client.new_version(kind, existing.id, {k: v for k, v in body.items() if k != "name"})
    report.actions.append(f"new version of {what} {name!r} v{made.version}")
    return made


def _normalised(value: object) -> object:
    """JSON text compared as the value it holds, so key order and spacing do not count as a change."""
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _same(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    return all(current.get(key) == value for key, value in wanted.items())


_CONFIG_ID_LINE = re.compile(r'^(\s*config_id\s*=\s*)"[^"\n]*"', re.M)


def write_config_id(path: Path, config_id: str) -> None:
    """Set ``[default] config_id`` in a numbers file, keeping everything else as written."""
    text = path.read_text(encoding="utf-8")
    header = re.search(r"^\[default\]\s*(#.*)?$", text, re.M)
    if header is None:
        text = f'[default]\nconfig_id = "{config_id}"\n\n' + text
    else:
        start = header.end()
        next_table = re.search(r"^\s*\[", text[start:], re.M)
        end = start + next_table.start() if next_table else len(text)
        section = text[start:end]
        if _CONFIG_ID_LINE.search(section):
            section = _CONFIG_ID_LINE.sub(lambda m: f'{m.group(1)}"{config_id}"', section, count=1)
        else:
            section = f'\nconfig_id = "{config_id}"' + section
        text = text[:start] + section + text[end:]
    path.write_text(text, encoding="utf-8")
