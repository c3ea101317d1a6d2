"""``gateway evi``: EVI's REST API from the command line (docs/evi-protocol.md §12, §7 control plane).

::

    gateway evi configs|prompts|tools list [--name N] [--all-versions] [--page N] [--page-size N]
    gateway evi configs|prompts|tools get ID [--version V]
    gateway evi configs|prompts|tools create FILE|-            (a JSON body)
    gateway evi configs|prompts|tools new-version ID FILE|-
    gateway evi configs|prompts|tools rename ID NAME
    gateway evi configs|prompts|tools describe ID VERSION TEXT
    gateway evi configs|prompts|tools delete ID [--version V]
    gateway evi send CHAT_ID MESSAGE_JSON
    gateway evi setup --name NAME [--numbers FILE] [--voice NAME] [--prompt-file FILE] [--write]

The key is ``HUME_API_KEY``; the REST base is ``GATEWAY_HUME_API_URL``, else derived from ``GATEWAY_EVI_URL``
(``wss`` → ``https``, ``ws`` → ``http``), else ``--api-url``. ``--json`` prints what EVI answered; otherwise a
table. Any failure prints EVI's reason (a 422's problems one per line) and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from gateway.adapters.evi_rest_client import KINDS as KINDS_MODELS
from gateway.adapters.evi_rest_client import EviRestClient, Kind
from gateway.errors import ConfigError, EviRestError
from gateway.evi_setup import PHONE_PROMPT, SetupReport, run_setup, write_config_id
from gateway.numbers import load_numbers
from gateway.settings import load_settings

KINDS: tuple[Kind, ...] = ("configs", "prompts", "tools")


def build_parser() -> argparse.ArgumentParser:
    """The ``gateway evi`` argument parser."""
    parser = argparse.ArgumentParser(prog="gateway evi", description="EVI's REST API: configs, prompts, tools")
    parser.add_argument("--api-url", help="REST base URL (default: GATEWAY_HUME_API_URL, else from GATEWAY_EVI_URL)")
    parser.add_argument("--json", action="store_true", help="print EVI's JSON answers")
    sub = parser.add_subparsers(dest="kind", required=True)
    for kind in KINDS:
        kind_parser = sub.add_parser(kind, help=f"EVI {kind}")
        ops = kind_parser.add_subparsers(dest="op", required=True)
        listing = ops.add_parser("list", help=f"list {kind}")
        listing.add_argument("--name", help="only this exact name")
        listing.add_argument("--all-versions", action="store_true", help="every version, not just the newest")
        listing.add_argument("--page", type=int, default=None, help="one page (0-based) instead of all")
        listing.add_argument("--page-size", type=int, help="items a request, 1-100 (default 10 with --page, else 100)")
        get = ops.add_parser("get", help="one version (the newest by default)")
        get.add_argument("id")
        get.add_argument("--version", type=int)
        create = ops.add_parser("create", help="create from a JSON body (a file, or - for stdin)")
        create.add_argument("body")
        version = ops.add_parser("new-version", help="a new version from a JSON body")
        version.add_argument("id")
        version.add_argument("body")
        rename = ops.add_parser("rename", help="rename every version")
        rename.add_argument("id")
        rename.add_argument("name")
        describe = ops.add_parser("describe", help="set one version's description")
        describe.add_argument("id")
        describe.add_argument("version", type=int)
        describe.add_argument("description")
        delete = ops.add_parser("delete", help="delete one version, or all of them")
        delete.add_argument("id")
        delete.add_argument("--version", type=int)
    send = sub.add_parser("send", help="send a message into a live chat (control plane)")
    send.add_argument("chat_id")
    send.add_argument("message", help='JSON, e.g. \'{"type": "assistant_input", "text": "One moment."}\'')
    setup = sub.add_parser("setup", help="create or update a phone-ready config (idempotent)")
    setup.add_argument("--name", required=True, help="name of the config, its prompt and nothing else")
    setup.add_argument("--numbers", help="numbers file whose tools and transfer destinations to provision")
    setup.add_argument("--voice", help="EVI voice name (Hume's voice library)")
    setup.add_argument("--prompt-file", help="system prompt text (default: a prompt for phone calls)")
    setup.add_argument("--write", action="store_true", help="write the config id into the numbers file")
    return parser


def main(argv: Sequence[str]) -> int:
    """Run ``gateway evi …``; 0 on success, 1 when EVI refused or could not be reached, 2 on usage errors."""
    args = build_parser().parse_args(list(argv))
    try:
        settings = load_settings(None)
        base_url = args.api_url or settings.hume_rest_url
        api_key = settings.hume_api_key.get_secret_value() if settings.hume_api_key else None
        if getattr(args, "body", None) is not None:
            args.body = _body(args.body)  # read before the event loop starts: files and stdin block
        if args.kind == "setup":
            args.numbers_file = load_numbers(args.numbers) if args.numbers else None
            args.prompt = Path(args.prompt_file).read_text(encoding="utf-8") if args.prompt_file else PHONE_PROMPT
        result = asyncio.run(_run(args, base_url, api_key))
        if isinstance(result, SetupReport):
            return _after_setup(args, result)
        return result
    except EviRestError as exc:
        print(f"gateway evi: {exc}", file=sys.stderr)
        return 1
    except (ConfigError, OSError, ValueError) as exc:
        print(f"gateway evi: {exc}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace, base_url: str, api_key: str | None) -> int | SetupReport:
    async with EviRestClient(base_url, api_key) as evi:
        if args.kind == "send":
            await evi.send(args.chat_id, _json_object(args.message, "MESSAGE_JSON"))
            print(f"sent {json.loads(args.message).get('type')} to chat {args.chat_id}")
            return 0
        if args.kind == "setup":
            return await run_setup(evi, args.name, numbers=args.numbers_file, voice=args.voice, prompt_text=args.prompt)
        return await _resource(evi, cast(Kind, args.kind), args)


async def _resource(evi: EviRestClient, kind: Kind, args: argparse.Namespace) -> int:
    match args.op:
        case "list":
            if args.page is not None:
                page = await evi.list_page(
                    kind,
                    page_number=args.page,
                    page_size=args.page_size or 10,
                    all_versions=args.all_versions,
                    name=args.name,
                )
                items = list(getattr(page, KINDS_MODELS[kind].page_key) or [])
            else:
                items = await evi.list_all(
                    kind, name=args.name, all_versions=args.all_versions, page_size=args.page_size or 100
                )
            _print_items(items, as_json=args.json)
        case "get":
            _print_items([await evi.get(kind, args.id, args.version)], as_json=args.json, detail=True)
        case "create":
            _print_items([await evi.create(kind, args.body)], as_json=args.json)
        case "new-version":
            _print_items([await evi.new_version(kind, args.id, args.body)], as_json=args.json)
        case "rename":
            await evi.rename(kind, args.id, args.name)
            print(f"renamed {kind[:-1]} {args.id} to {args.name!r}")
        case "describe":
            _print_items([await evi.describe(kind, args.id, args.version, args.description)], as_json=args.json)
        case "delete":
            await evi.delete(kind, args.id, args.version)
            which = f"version {args.version} of " if args.version is not None else ""
            print(f"deleted {which}{kind[:-1]} {args.id}")
    return 0


def _after_setup(args: argparse.Namespace, report: SetupReport) -> int:
    if args.json:
        print(json.dumps({"config_id": report.config_id, "version": report.config_version, "actions": report.actions}))
    else:
        for line in report.actions:
            print(line)
        print(f"config id: {report.config_id} (version {report.config_version})")
    if args.write:
        if not args.numbers:
            raise ConfigError("--write needs --numbers FILE")
        write_config_id(Path(args.numbers), report.config_id)
        load_numbers(args.numbers)  # what was written must still load
        if not args.json:
            print(f"wrote config_id into {args.numbers}")
    return 0


def _body(source: str) -> dict[str, Any]:
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    return _json_object(text, source)


def _json_object(text: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a JSON object")
    return value


def _print_items(items: list[Any], *, as_json: bool, detail: bool = False) -> None:
    if as_json:
        data = [item.to_dict() for item in items]
        print(json.dumps(data[0] if detail and len(data) == 1 else data, indent=2))
        return
    rows = [("ID", "VERSION", "NAME", "MODIFIED", "DESCRIPTION")]
    for item in items:
        modified = _when(item.modified_on)
        rows.append((item.id, str(item.version), item.name, modified, item.version_description or ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    if detail and items:
        print(json.dumps(items[0].to_dict(), indent=2))


def _when(stamp: int) -> str:
    """A resource time (docs/evi-protocol.md §12.1: seconds since the epoch; milliseconds are tolerated)."""
    seconds = stamp / 1000 if stamp > 10**11 else stamp
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M")
