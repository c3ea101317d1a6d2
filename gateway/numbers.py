"""The numbers file: what each called number (phone line) asks of its calls (docs/design.md "Numbers file").

TOML, given by ``gateway serve --numbers FILE`` or ``GATEWAY_NUMBERS_FILE``::

    [default]                      # every called number not listed below
    config_id = "…"                # EVI config (else HUME_CONFIG_ID)
    busy_message = "All our agents are busy. Please call again later."
    overflow_number = ""           # dial this instead of the busy message when set
    record = false
    variables = { brand = "Acme" } # EVI session variables
    [default.transfer]             # transfer_call destinations: name = number or sip: URI
    sales = "+15551230000"
    [[tool]]                       # a function tool the gateway answers over HTTP
    name = "lookup_order"
    description = "Look up an order by its id"
    parameters = { type = "object", properties = { order_id = { type = "string" } }, required = ["order_id"] }
    url = "https://crm.example.com/tools/lookup_order"
    timeout_s = 5.0
    [numbers."+15550001111"]       # E.164 called number; any [default] key may be overridden
    config_id = "…"

A line may also set ``tools = ["lookup_order"]`` (a subset of the ``[[tool]]`` names; default: all),
``max_duration_message`` and ``transfer_failed_message``. The whole file is checked when it is loaded:
every problem is reported at once, each naming the file, the number and the key.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gateway.core.lines import LineConfig
from gateway.core.tools import HANG_UP_TOOL, TRANSFER_TOOL, ToolEndpoint
from gateway.errors import ConfigError

__all__ = ["NumbersFile", "load_numbers"]

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_TOOL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_STRING_KEYS = ("config_id", "busy_message", "overflow_number", "max_duration_message", "transfer_failed_message")
_LINE_KEYS = frozenset({*_STRING_KEYS, "record", "variables", "transfer", "tools"})
_TOOL_KEYS = frozenset({"name", "description", "parameters", "url", "timeout_s"})
_TOP_KEYS = frozenset({"default", "numbers", "tool"})
_LINE_DEFAULTS = {f.name: getattr(LineConfig(), f.name) for f in fields(LineConfig)}
MAX_TOOL_TIMEOUT_S = 60.0


class NumbersFile:
    """The lines of a numbers file; :meth:`line_for` implements :class:`gateway.core.lines.LineDirectory`."""

    def __init__(self, default: LineConfig, numbers: Mapping[str, LineConfig], tools: Mapping[str, ToolEndpoint]):
        self.default = default
        self.numbers = MappingProxyType(dict(numbers))
        self.tools = MappingProxyType(dict(tools))

    def line_for(self, called_number: str | None) -> LineConfig:
        """The line of ``called_number`` (E.164), else the default line."""
        if called_number is None:
            return self.default
        return self.numbers.get(called_number, self.default)


def load_numbers(path: str | Path) -> NumbersFile:
    """Read and check a numbers file; raise one :class:`ConfigError` listing every problem."""
    source = Path(path)
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the numbers file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return parse_numbers(data, str(source))


def parse_numbers(data: Mapping[str, Any], source: str = "<numbers>") -> NumbersFile:
    """Check already-parsed TOML (see :func:`load_numbers`)."""
    check = _Checker(source)
    check.unknown(data, _TOP_KEYS, "the file")
    tools = _tools(check, data.get("tool", []))
    default_table = check.table(data.get("default", {}), "[default]")
    default = _line(check, default_table, {**_LINE_DEFAULTS, "tools": tools}, tools, "[default]")
    numbers: dict[str, LineConfig] = {}
    for number, table in check.table(data.get("numbers", {}), "[numbers]").items():
        where = f"[numbers.{number!r}]"
        if not E164.match(number):
            check.fail(f"{where}: {number!r} is not an E.164 number like +15550001111")
        base = {f.name: getattr(default, f.name) for f in fields(LineConfig)}
        numbers[number] = _line(check, check.table(table, where), base, tools, where)
    check.raise_if_any()
    return NumbersFile(default, numbers, tools)


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def fail(self, problem: str) -> None:
        self.problems.append(f"{self.source}: {problem}")

    def unknown(self, table: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
        for key in sorted(set(table) - allowed):
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            self.fail(f"{where}: unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))

    def table(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(f"{where} must be a table")
            return {}
        return value

    def raise_if_any(self) -> None:
        if self.problems:
            listed = "\n".join(f"  - {p}" for p in self.problems)
            raise ConfigError(f"{len(self.problems)} problem(s) in the numbers file:\n{listed}")


def _tools(check: _Checker, value: Any) -> dict[str, ToolEndpoint]:
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        check.fail("tool must be an array of tables ([[tool]])")
        return {}
    tools: dict[str, ToolEndpoint] = {}
    for index, table in enumerate(value):
        name = table.get("name")
        where = f"[[tool]] #{index + 1}" + (f" ({name})" if isinstance(name, str) else "")
        check.unknown(table, _TOOL_KEYS, where)
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            check.fail(f"{where}: name must be letters, digits, '_' or '-' (got {name!r})")
            continue
        if name in (TRANSFER_TOOL, HANG_UP_TOOL) or name in tools:
            check.fail(f"{where}: name {name!r} is {'taken' if name in tools else 'reserved by the gateway'}")
            continue
        url = table.get("url")
        if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
            check.fail(f"{where}: url must be an http:// or https:// URL (got {url!r})")
            continue
        timeout_s = table.get("timeout_s", 5.0)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not 0 < timeout_s <= 60:
            check.fail(f"{where}: timeout_s = {timeout_s!r} must be a number of seconds in (0, {MAX_TOOL_TIMEOUT_S:g}]")
            timeout_s = 5.0
        parameters = table.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict) or parameters.get("type") != "object":
            check.fail(f'{where}: parameters must be a JSON schema table with type = "object"')
            parameters = {"type": "object", "properties": {}}
        description = table.get("description", "")
        if not isinstance(description, str):
            check.fail(f"{where}: description must be a string")
            description = ""
        tools[name] = ToolEndpoint(name, url, description, MappingProxyType(parameters), float(timeout_s))
    return tools


def _line(
    check: _Checker, table: dict[str, Any], base: dict[str, Any], tools: Mapping[str, ToolEndpoint], where: str
) -> LineConfig:
    check.unknown(table, _LINE_KEYS, where)
    values = dict(base)
    for key in _STRING_KEYS:
        if key in table:
            if isinstance(table[key], str):
                values[key] = table[key]
            else:
                check.fail(f"{where}: {key} must be a string")
    if values["config_id"] == "":
        values["config_id"] = None
    overflow = values["overflow_number"]
    if overflow and not _dialable(overflow):
        check.fail(f"{where}: overflow_number {overflow!r} must be E.164 (+15550001111) or a sip: URI")
    if "record" in table:
        if isinstance(table["record"], bool):
            values["record"] = table["record"]
        else:
            check.fail(f"{where}: record must be true or false")
    if "variables" in table:
        variables = check.table(table["variables"], f"{where} variables")
        bad = sorted(k for k, v in variables.items() if not isinstance(v, str | int | float) or isinstance(v, bool))
        for key in bad:
            check.fail(f"{where}: variables.{key} must be a string or a number")
        values["variables"] = MappingProxyType({k: str(v) for k, v in variables.items() if k not in bad})
    if "transfer" in table:
        transfer = check.table(table["transfer"], f"{where}.transfer")
        for name, target in transfer.items():
            if not isinstance(target, str) or not _dialable(target):
                check.fail(f"{where}.transfer: {name} = {target!r} must be E.164 (+15551230000) or a sip: URI")
        values["transfer"] = MappingProxyType({k: v for k, v in transfer.items() if isinstance(v, str)})
    values["tools"] = _line_tools(check, table, base, tools, where)
    return LineConfig(**values)


def _line_tools(
    check: _Checker, table: dict[str, Any], base: dict[str, Any], tools: Mapping[str, ToolEndpoint], where: str
) -> Mapping[str, ToolEndpoint]:
    if "tools" not in table:
        inherited: Mapping[str, ToolEndpoint] = base["tools"]
        return inherited
    names = table["tools"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        check.fail(f"{where}: tools must be a list of [[tool]] names")
        return tools
    for name in names:
        if name not in tools:
            check.fail(f"{where}: tools names {name!r}, which no [[tool]] defines")
    return MappingProxyType({n: tools[n] for n in names if n in tools})


def _dialable(target: str) -> bool:
    return bool(E164.match(target)) or (target.startswith("sip:") and "@" in target)
