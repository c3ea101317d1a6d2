"""The offline agent's script: what it says first, what it answers, and when it hangs up.

Owns :class:`AgentScript` (loaded from TOML by :func:`load_agent_script`; the bundled default is
``agent_default.toml`` next to this module, identical to ``config/agent.example.toml``), its
:class:`ScriptRule` list, reply templating and the sentence splitting that gives one ``assistant_message``
per sentence (evi-protocol.md §3). Pure: no I/O besides reading the script file.
"""

from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError

__all__ = [
    "DEFAULT_SCRIPT_NAME",
    "PLACEHOLDERS",
    "AgentScript",
    "ScriptReply",
    "ScriptRule",
    "default_script_text",
    "fill",
    "load_agent_script",
    "parse_agent_script",
    "split_sentences",
]

DEFAULT_SCRIPT_NAME = "agent_default.toml"
PLACEHOLDERS = frozenset({"transcript", "last_user", "turns"})
"""Fields a reply may use: the caller's words now, the caller's previous words, caller turns so far."""

_NOTHING_YET = "nothing yet"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")
_WORD = re.compile(r"[\w']+")

_AGENT_KEYS = frozenset({"greeting", "resume_greeting", "inactivity_warning", "max_duration_message", "fallback"})
_RULE_KEYS = frozenset({"name", "keywords", "pattern", "reply", "hang_up", "tool", "arguments"})
_TOOL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_TOP_KEYS = frozenset({"agent", "recognizer", "rules"})


def _words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.lower()))


def split_sentences(text: str) -> list[str]:
    """``text`` cut after ``.``, ``!`` or ``?`` followed by white space; blank pieces dropped."""
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text.strip())) if s]


@dataclass(frozen=True, slots=True)
class ScriptRule:
    """One rule: if the transcript has any keyword (whole words) or matches ``pattern``, say ``reply``."""

    name: str
    reply: str
    keywords: tuple[tuple[str, ...], ...] = ()
    pattern: re.Pattern[str] | None = None
    hang_up: bool = False
    tool: str | None = None
    """A function tool to call first (docs/evi-protocol.md §6); the reply then says its result."""
    arguments: Mapping[str, Any] | None = None

    def matches(self, transcript: str) -> bool:
        """Whether this rule answers ``transcript`` (case-insensitive)."""
        if self.pattern is not None and self.pattern.search(transcript):
            return True
        words = _words(transcript)
        for phrase in self.keywords:
            n = len(phrase)
            if any(words[i : i + n] == phrase for i in range(len(words) - n + 1)):
                return True
        return False


@dataclass(frozen=True, slots=True)
class ScriptReply:
    """What the agent answers: the sentences to speak, the rule that chose them, whether to hang up."""

    sentences: tuple[str, ...]
    rule: str
    hang_up: bool
    tool: str | None = None
    arguments: Mapping[str, Any] | None = None
    template: str = ""
    """The reply before filling, for a tool rule whose ``{tool_result}`` is known only later."""


@dataclass(frozen=True, slots=True)
class AgentScript:
    """The agent's lines and rules (see config/agent.example.toml for every key)."""

    greeting: str
    resume_greeting: str
    inactivity_warning: str
    max_duration_message: str
    fallback: str
    rules: tuple[ScriptRule, ...]
    phrases: tuple[str, ...] | None
    source: str

    def reply_to(self, transcript: str, *, last_user: str | None = None, turns: int = 1) -> ScriptReply:
        """The reply of the first matching rule, or the fallback, with its placeholders filled in."""
        for rule in self.rules:
            if rule.matches(transcript):
                if rule.tool is not None:
                    return ScriptReply((), rule.name, rule.hang_up, rule.tool, rule.arguments, rule.reply)
                return ScriptReply(fill(rule.reply, transcript, last_user, turns), rule.name, rule.hang_up)
        return ScriptReply(fill(self.fallback, transcript, last_user, turns), "fallback", False)


def fill(
    template: str, transcript: str = "", last_user: str | None = None, turns: int = 0, tool_result: str = ""
) -> tuple[str, ...]:
    """A validated template with its placeholders filled in, cut into sentences."""
    fields = {
        "transcript": transcript.strip(),
        "last_user": last_user or _NOTHING_YET,
        "turns": str(turns),
        "tool_result": tool_result,
    }
    return tuple(split_sentences(template.format_map(fields)))


def default_script_text() -> str:
    """The bundled default script (the same text as config/agent.example.toml)."""
    return resources.files("gateway.simulator").joinpath(DEFAULT_SCRIPT_NAME).read_text(encoding="utf-8")


def load_agent_script(path: str | Path | None = None) -> AgentScript:
    """Load a script from a TOML file, or the bundled default for ``None``.

    Raises ConfigError naming the file and the offending key for unreadable files, bad TOML, unknown
    keys, wrong types, bad regular expressions and unknown ``{placeholders}``.
    """
    if path is None:
        return parse_agent_script(default_script_text(), f"<bundled {DEFAULT_SCRIPT_NAME}>")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"agent script {path}: cannot read it ({exc})") from None
    return parse_agent_script(text, str(path))


def parse_agent_script(text: str, source: str = "<string>") -> AgentScript:
    """Parse script TOML; ``source`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"agent script {source}: not valid TOML ({exc})") from None
    _no_unknown_keys(source, "", data, _TOP_KEYS)
    agent = _table(source, "agent", data.get("agent", {}))
    _no_unknown_keys(source, "agent.", agent, _AGENT_KEYS)
    recognizer = _table(source, "recognizer", data.get("recognizer", {}))
    _no_unknown_keys(source, "recognizer.", recognizer, frozenset({"phrases"}))
    phrases = _strings(source, "recognizer.phrases", recognizer.get("phrases", []))
    raw_rules = data.get("rules", [])
    if not isinstance(raw_rules, list):
        raise ConfigError(f"agent script {source}: 'rules' must be an array of tables ([[rules]])")
    rules = tuple(_rule(source, i, raw) for i, raw in enumerate(raw_rules))
    names = [r.name for r in rules]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"agent script {source}: rule names must be unique, repeated: {', '.join(duplicates)}")
    fallback = _template(source, "agent.fallback", agent.get("fallback", "You said: {transcript}."))
    if not split_sentences(fallback):
        raise ConfigError(f"agent script {source}: 'agent.fallback' must not be empty")
    warning = _template(source, "agent.inactivity_warning", agent.get("inactivity_warning", "Are you still there?"))
    return AgentScript(
        greeting=_template(source, "agent.greeting", agent.get("greeting", ""), fields=frozenset()),
        resume_greeting=_template(
            source, "agent.resume_greeting", agent.get("resume_greeting", ""), fields=frozenset({"last_user", "turns"})
        ),
        inactivity_warning=warning,
        max_duration_message=_template(
            source, "agent.max_duration_message", agent.get("max_duration_message", ""), fields=frozenset()
        ),
        fallback=fallback,
        rules=rules,
        phrases=tuple(phrases) or None,
        source=source,
    )


def _table(source: str, key: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"agent script {source}: '{key}' must be a table, got {type(value).__name__}")
    return value


def _no_unknown_keys(source: str, prefix: str, table: Mapping[str, object], known: frozenset[str]) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(
            f"agent script {source}: unknown key '{prefix}{unknown[0]}' (known: {', '.join(sorted(known))})"
        )


def _strings(source: str, key: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"agent script {source}: '{key}' must be a list of non-empty strings")
    return [v.strip() for v in value]


def _template(source: str, key: str, value: object, fields: frozenset[str] = PLACEHOLDERS) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"agent script {source}: '{key}' must be a string, got {type(value).__name__}")
    try:
        parsed = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise ConfigError(f"agent script {source}: '{key}' has a bad placeholder ({exc}); write {{{{ for {{") from None
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in fields or spec or conversion:
            allowed = ", ".join("{" + f + "}" for f in sorted(fields)) or "none"
            raise ConfigError(
                f"agent script {source}: '{key}' uses unknown placeholder {{{field}}} (allowed: {allowed})"
            )
    return value


def _rule(source: str, index: int, raw: object) -> ScriptRule:
    where = f"rules[{index}]"
    table = _table(source, where, raw)
    _no_unknown_keys(source, f"{where}.", table, _RULE_KEYS)
    name = table.get("name", f"rule-{index + 1}")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"agent script {source}: '{where}.name' must be a non-empty string")
    if "reply" not in table:
        raise ConfigError(f"agent script {source}: '{where}.reply' is missing")
    tool, arguments = _tool(source, where, table)
    fields = PLACEHOLDERS | {"tool_result"} if tool is not None else PLACEHOLDERS
    reply = _template(source, f"{where}.reply", table["reply"], fields=fields)
    if not split_sentences(reply):
        raise ConfigError(f"agent script {source}: '{where}.reply' must not be empty")
    keywords = tuple(_words(k) for k in _strings(source, f"{where}.keywords", table.get("keywords", [])))
    if any(not k for k in keywords):
        raise ConfigError(f"agent script {source}: '{where}.keywords' entries must contain a word")
    pattern: re.Pattern[str] | None = None
    if "pattern" in table:
        raw_pattern = table["pattern"]
        if not isinstance(raw_pattern, str) or not raw_pattern:
            raise ConfigError(f"agent script {source}: '{where}.pattern' must be a non-empty string")
        try:
            pattern = re.compile(raw_pattern, re.IGNORECASE)
        except re.error as exc:
            raise ConfigError(
                f"agent script {source}: '{where}.pattern' is not a valid regular expression ({exc})"
            ) from None
    if not keywords and pattern is None:
        raise ConfigError(f"agent script {source}: '{where}' needs 'keywords' or 'pattern'")
    hang_up = table.get("hang_up", False)
    if not isinstance(hang_up, bool):
        raise ConfigError(f"agent script {source}: '{where}.hang_up' must be true or false")
    return ScriptRule(
        name=name.strip(),
        reply=reply,
        keywords=keywords,
        pattern=pattern,
        hang_up=hang_up,
        tool=tool,
        arguments=arguments,
    )


def _tool(source: str, where: str, table: Mapping[str, Any]) -> tuple[str | None, Mapping[str, Any] | None]:
    """A rule's ``tool`` (a function tool name) and its ``arguments`` table."""
    tool = table.get("tool")
    if tool is None:
        if "arguments" in table:
            raise ConfigError(f"agent script {source}: '{where}.arguments' needs '{where}.tool'")
        return None, None
    if not isinstance(tool, str) or not _TOOL_NAME.match(tool):
        raise ConfigError(f"agent script {source}: '{where}.tool' must be a tool name (letters, digits, _ or -)")
    arguments = table.get("arguments", {})
    if not isinstance(arguments, dict):
        raise ConfigError(f"agent script {source}: '{where}.arguments' must be a table")
    return tool, arguments
