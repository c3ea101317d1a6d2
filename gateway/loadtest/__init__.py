"""``gateway loadtest``: recorded-call replay against a gateway, as concurrent emulated Twilio calls.

Modules: ``scenario`` (recordings and their ``.toml`` scenarios, validated up front), ``runner`` (the
schedule and each call's turn-taking), ``metrics`` (per-turn and per-call numbers on the media clock),
``report`` (progress line, summary table, JSON), ``htmlreport`` (self-contained HTML with SVG charts) and
``command`` (the command line, :func:`main`). Nothing in the gateway imports this package but the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``gateway loadtest`` with ``argv``; returns the exit status (0 ok, 1 failures, 2 bad input)."""
    from gateway.loadtest.command import main as command_main

    return command_main(argv)
