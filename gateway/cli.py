"""The ``gateway`` command (also ``python -m gateway``). Each subcommand is a few lines calling elsewhere."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Awaitable, Sequence

from aiohttp import web

from gateway.errors import ConfigError
from gateway.logs import configure_logging
from gateway.settings import Settings


def _serve(args: argparse.Namespace) -> int:
    from gateway.adapters.app import make_app
    from gateway.settings import load_settings

    settings = load_settings(args.config, host=args.host, port=args.port, numbers_file=args.numbers)
    configure_logging(args.log_level, settings.log_format)
    if settings.twilio_auth_token is None and not args.insecure:
        print(
            "gateway serve: TWILIO_AUTH_TOKEN is not set, so anyone could open calls on this server.\n"
            "Set it (Twilio console → Account → Auth Token), or pass --insecure for local testing.",
            file=sys.stderr,
        )
        return 2
    if settings.twilio_auth_token is not None and settings.public_url is None:
        logging.getLogger("gateway").warning(
            "GATEWAY_PUBLIC_URL is not set: signatures are checked against the URL this server sees, "
            "which differs from Twilio's behind a proxy or tunnel"
        )
    if args.print_config:
        for key, value in settings.redacted().items():
            print(f"{key} = {value!r}")
        return 0
    if settings.numbers_file is not None:
        from gateway.numbers import load_numbers

        try:
            load_numbers(settings.numbers_file)  # a bad numbers file stops the server before it listens
        except ConfigError as exc:
            print(f"gateway serve: {exc}", file=sys.stderr)
            return 2
    from gateway.adapters.serving import loop_factory, run, serve

    try:
        loop_factory(settings.event_loop)  # a loop that is not installed stops the server before anything starts
    except ConfigError as exc:
        print(f"gateway serve: {exc}", file=sys.stderr)
        return 2
    if args.evi == "hume":
        app: web.Application | Awaitable[web.Application] = make_app(settings)
    else:
        app = _app_with_simulator(settings, cheap=args.evi_cheap, log_level=args.log_level)
    return run(serve(app, settings.host, settings.port), settings.event_loop)


async def _app_with_simulator(settings: Settings, *, cheap: bool, log_level: str) -> web.Application:
    """The gateway bridged to the EVI-compatible agent, run in a worker process so that its speech work never
    takes the gateway's loop (gateway/simulator/agent_process.py)."""
    from pydantic import SecretStr

    from gateway.adapters.app import make_app
    from gateway.simulator.agent_process import agent_worker

    stack = contextlib.AsyncExitStack()
    url, key = await stack.enter_async_context(
        agent_worker(cheap=cheap, max_sessions=settings.max_concurrent_calls, log_level=log_level)
    )
    logging.getLogger("gateway").info("EVI: the built-in agent at %s%s", url, " (cheap mode)" if cheap else "")
    app = make_app(settings.model_copy(update={"evi_url": url, "hume_api_key": SecretStr(key)}))

    async def stop_agent(_: web.Application) -> None:
        await stack.aclose()

    app.on_cleanup.append(stop_agent)
    return app


def _bench(args: argparse.Namespace) -> int:
    if args.rest[:1] == ["capacity"]:
        from gateway.loadtest.capacity import main as capacity_main

        return capacity_main(args.rest[1:])
    if args.rest[:1] == ["faults"]:
        from gateway.loadtest.faults import main as faults_main

        return faults_main(args.rest[1:])
    if args.rest[:1] == ["wire"]:
        from gateway.bench_wire import main as wire_main

        return wire_main(args.rest[1:])
    from gateway.bench import main as bench_main

    return bench_main(args.rest)  # options after `bench` are the benchmark's own (parse_known_args)


def _simulate_evi(args: argparse.Namespace) -> int:
    from gateway.simulator.evi import simulate_evi_main

    return simulate_evi_main(args.rest)


def _demo(args: argparse.Namespace) -> int:
    from gateway.simulator.demo import main as demo_main

    return demo_main(args.rest, log_level=args.log_level.upper())


def _evi(args: argparse.Namespace) -> int:
    from gateway.evi_cli import main as evi_main

    return evi_main(args.rest)


def _loadtest(args: argparse.Namespace) -> int:
    from gateway.loadtest import main as loadtest_main

    return loadtest_main(args.rest)


# Subcommands whose options are parsed by the module they call.
PASS_THROUGH = ("bench", "demo", "evi", "loadtest", "simulate-evi")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="gateway", description="Twilio phone calls ⇄ Hume EVI gateway")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="a whole phone call offline: EVI agent + gateway + caller on loopback", add_help=False
    )
    demo.set_defaults(func=_demo)

    serve = sub.add_parser("serve", help="run the gateway (Twilio webhook + Media Stream WebSocket)")
    serve.add_argument("--host", help="listen address (overrides GATEWAY_HOST)")
    serve.add_argument("--port", type=int, help="listen port (overrides GATEWAY_PORT)")
    serve.add_argument("--config", help="TOML settings file (see config/gateway.example.toml)")
    serve.add_argument(
        "--numbers", help="numbers file: per called number config, tools, transfers (config/numbers.example.toml)"
    )
    serve.add_argument("--insecure", action="store_true", help="allow running without TWILIO_AUTH_TOKEN")
    serve.add_argument("--print-config", action="store_true", help="print effective settings (secrets hidden)")
    serve.add_argument(
        "--evi",
        choices=["hume", "simulator"],
        default="hume",
        help="hume: GATEWAY_EVI_URL (default); simulator: the built-in EVI-compatible agent, in a worker process",
    )
    serve.add_argument("--evi-cheap", action="store_true", help="with --evi simulator: no ASR/TTS (load tests)")
    serve.set_defaults(func=_serve)

    sim = sub.add_parser(
        "simulate-evi", help="serve the EVI-compatible agent at ws://HOST:PORT/v0/evi/chat", add_help=False
    )
    sim.set_defaults(func=_simulate_evi)

    bench = sub.add_parser(
        "bench",
        help="audio path: µs per 20 ms frame and held-back ms; `bench capacity`: calls per core vs a plain relay",
        add_help=False,
    )
    bench.set_defaults(func=_bench)

    evi = sub.add_parser("evi", help="EVI's REST API: configs, prompts, tools, setup, send", add_help=False)
    evi.set_defaults(func=_evi)

    loadtest = sub.add_parser(
        "loadtest", help="replay a folder of recorded callers as concurrent Twilio calls", add_help=False
    )
    loadtest.set_defaults(func=_loadtest)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gateway`` console script."""
    args, rest = build_parser().parse_known_args(argv)
    if rest and args.command not in PASS_THROUGH:
        build_parser().error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    configure_logging(args.log_level)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    return result
