"""The numbers file: per called number config, tools and transfers, checked at start with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.core.lines import DEFAULT_LINE
from gateway.errors import ConfigError
from gateway.numbers import load_numbers, parse_numbers

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "numbers.example.toml"


def test_the_example_file_loads() -> None:
    """config/numbers.example.toml is valid and means what its comments say."""
    numbers = load_numbers(EXAMPLE)
    default = numbers.line_for("+15559999999")
    assert default is numbers.default and default.config_id is None
    assert dict(default.transfer) == {"sales": "+15551230000", "support": "sip:support@pbx.example.com"}
    assert set(default.tools) == {"lookup_order"} and default.tools["lookup_order"].timeout_s == 5.0
    line = numbers.line_for("+15550001111")
    assert dict(line.variables) == {"brand": "Acme Support"}
    assert dict(line.transfer) == {"supervisor": "+15551239999"}
    assert line.busy_message == default.busy_message


def test_a_number_overrides_only_what_it_sets() -> None:
    """Keys a number does not set come from [default]; tools can be narrowed to none."""
    numbers = parse_numbers(
        {
            "default": {"config_id": "cfg-default", "record": True},
            "tool": [{"name": "t1", "url": "http://127.0.0.1:9/t1"}],
            "numbers": {"+15550001111": {"config_id": "cfg-sales", "tools": []}},
        }
    )
    line = numbers.line_for("+15550001111")
    assert (line.config_id, line.record, dict(line.tools)) == ("cfg-sales", True, {})
    assert set(numbers.line_for(None).tools) == {"t1"}


def test_without_a_file_every_number_gets_the_default_line() -> None:
    """An empty file is the built-in default line."""
    assert parse_numbers({}).line_for("+15550001111") == DEFAULT_LINE


def test_every_problem_is_reported_at_once_naming_file_number_and_key(tmp_path: Path) -> None:
    """A bad file fails with one error that lists each problem with where it is."""
    bad = tmp_path / "numbers.toml"
    bad.write_text(
        """
[default]
config_idd = "x"
record = "yes"
[default.transfer]
sales = "5551230000"
[[tool]]
name = "transfer_call"
url = "https://example.com/t"
[[tool]]
name = "lookup"
url = "ftp://example.com/t"
[numbers."5550001111"]
busy_message = 3
[numbers."+15550002222"]
tools = ["nope"]
""",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_numbers(bad)
    text = str(caught.value)
    for expected in (
        "[default]: unknown key 'config_idd' (did you mean 'config_id'?)",
        "[default]: record must be true or false",
        "[default].transfer: sales = '5551230000' must be E.164",
        "name 'transfer_call' is reserved",
        "url must be an http:// or https:// URL",
        "[numbers.'5550001111']: '5550001111' is not an E.164 number",
        "[numbers.'5550001111']: busy_message must be a string",
        "[numbers.'+15550002222']: tools names 'nope', which no [[tool]] defines",
    ):
        assert expected in text, expected
    assert text.count(str(bad)) == 8


def test_a_file_that_is_not_toml_is_a_clear_error(tmp_path: Path) -> None:
    """Broken TOML names the file."""
    bad = tmp_path / "numbers.toml"
    bad.write_text("[default\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="numbers.toml: not valid TOML"):
        load_numbers(bad)
