"""``gateway loadtest``: replay a folder of recorded caller audio as concurrent Twilio calls, and report.

Owns the command line: reading and checking every option, recording and scenario before any call is
placed (anything wrong: one message listing it all, exit status 2), running the load, then the summary
table on stdout, the progress line on stderr, and the JSON / HTML / WAV outputs. Exit status 0 when every
call went as its scenario said, 1 when a call failed or a ``--max-p95-latency-ms`` gate was missed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.errors import ConfigError
from gateway.loadtest.htmlreport import write_html
from gateway.loadtest.metrics import metric_values, stats
from gateway.loadtest.report import ProgressLine, summary_table, write_json
from gateway.loadtest.runner import LoadTestConfig, LoadTestResult, Progress, run_loadtest
from gateway.loadtest.scenario import load_folder
from gateway.simulator.caller_network import NetworkTrouble, parse_burst, parse_drop_pattern

__all__ = ["build_parser", "main", "prepare"]

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
_PROGRESS_EVERY_S = 0.5


def build_parser() -> argparse.ArgumentParser:
    """The ``gateway loadtest`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="gateway loadtest",
        description="Replay recorded caller audio as concurrent Twilio Media Streams calls and measure "
        "per-turn latency, barge-in yield, talk-over, underruns and set-up time on the caller's media clock.",
        epilog="Each recording may have <name>.toml beside it (see gateway/loadtest/scenario.py). "
        "Exit status: 0 all calls ok, 1 some call failed or a gate was missed, 2 bad input.",
    )
    parser.add_argument("recordings", type=Path, help="folder of recordings (.wav any rate, .ulaw) and scenarios")
    parser.add_argument("--target", help="the gateway's public base URL (default $GATEWAY_PUBLIC_URL)")
    parser.add_argument("--auth-token", help="Twilio auth token to sign requests with (default $TWILIO_AUTH_TOKEN)")
    run = parser.add_argument_group("load")
    run.add_argument("--calls", type=int, help="calls to place in total (default: each recording once)")
    run.add_argument("--concurrency", type=int, default=1, help="calls at once (default 1)")
    run.add_argument("--ramp-up-s", type=float, default=0.0, help="spread the first calls over this many seconds")
    run.add_argument("--duration-s", type=float, help="keep starting calls until this many seconds have passed")
    run.add_argument("--seed", type=int, default=0, help="seed for injected network trouble (default 0)")
    run.add_argument("--max-call-s", type=float, default=300.0, help="hang up any call after this long")
    net = parser.add_argument_group("network trouble on the caller's uplink")
    net.add_argument("--jitter-ms", type=float, default=0.0, help="random extra delay per frame, 0..MS (order kept)")
    net.add_argument("--burst", metavar="EVERY_MS:HOLD_MS", help="every EVERY_MS hold frames for HOLD_MS, then flush")
    net.add_argument("--drop-ratio", type=float, default=0.0, help="drop this fraction of frames at random")
    net.add_argument("--drop-every", metavar="N[:RUN]", help="drop RUN (default 1) frames of every N")
    net.add_argument("--drop-keeps-chunk", action="store_true", help="media.chunk counts frames sent, not the clock")
    out = parser.add_argument_group("output")
    out.add_argument("--json-out", type=Path, help="write the full report (every call and turn) as JSON")
    out.add_argument("--html-out", type=Path, help="write a self-contained HTML report with charts")
    out.add_argument("--wav-dir", type=Path, help="write one stereo WAV per call: left said, right heard")
    out.add_argument("--progress", action="store_true", help="show the progress line even when not on a terminal")
    out.add_argument("--max-p95-latency-ms", type=float, help="exit 1 if the p95 response latency is above this")
    return parser


def _network(args: argparse.Namespace) -> NetworkTrouble:
    every_ms, hold_ms = parse_burst(args.burst) if args.burst else (0, 0)
    drop_n, drop_run = parse_drop_pattern(args.drop_every) if args.drop_every else (0, 1)
    return NetworkTrouble(
        extra_jitter_ms=args.jitter_ms,
        burst_every_ms=every_ms,
        burst_hold_ms=hold_ms,
        drop_ratio=args.drop_ratio,
        drop_every_n=drop_n,
        drop_run=drop_run,
        chunk_skips=not args.drop_keeps_chunk,
    )


def _check_outputs(args: argparse.Namespace) -> None:
    for option, path in (("--json-out", args.json_out), ("--html-out", args.html_out)):
        if path is not None and not path.parent.is_dir():
            raise ConfigError(f"{option} {path}: folder {path.parent} does not exist")
        if path is not None and path.is_dir():
            raise ConfigError(f"{option} {path}: is a folder, need a file name")
    if args.wav_dir is not None:
        try:
            args.wav_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--wav-dir {args.wav_dir}: cannot create it ({exc.strerror or exc})") from None


def prepare(args: argparse.Namespace) -> LoadTestConfig:
    """Check every input and build the run's config; raises :class:`ConfigError` (incl. ScenarioError)."""
    target = args.target or os.environ.get("GATEWAY_PUBLIC_URL")
    if not target:
        raise ConfigError("no target: pass --target https://your-gateway (or set GATEWAY_PUBLIC_URL)")
    network = _network(args)
    _check_outputs(args)
    scenarios = load_folder(args.recordings)
    return LoadTestConfig(
        target=target,
        scenarios=tuple(scenarios),
        auth_token=args.auth_token or os.environ.get("TWILIO_AUTH_TOKEN") or None,
        calls=args.calls,
        concurrency=args.concurrency,
        ramp_up_s=args.ramp_up_s,
        duration_s=args.duration_s,
        seed=args.seed,
        network=network,
        max_call_s=args.max_call_s,
        wav_dir=args.wav_dir,
    )


async def _run_with_progress(config: LoadTestConfig, line: ProgressLine | None) -> LoadTestResult:
    progress = Progress()
    if line is None:
        return await run_loadtest(config, progress=progress)
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def redraw() -> None:
        while True:
            line.show(progress, loop.time() - t0)
            await asyncio.sleep(_PROGRESS_EVERY_S)

    drawer = asyncio.create_task(redraw())
    try:
        return await run_loadtest(config, progress=progress)
    finally:
        drawer.cancel()
        line.show(progress, loop.time() - t0)
        line.done()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``gateway loadtest`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's own usage error
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    try:
        config = prepare(args)
    except ConfigError as exc:
        print(f"gateway loadtest: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if config.auth_token is None:
        print(
            "gateway loadtest: no --auth-token or TWILIO_AUTH_TOKEN: requests go unsigned, "
            "which a gateway checking signatures refuses",
            file=sys.stderr,
        )
    tty = sys.stderr.isatty()
    line = ProgressLine(sys.stderr, config.total_calls, tty=tty) if tty or args.progress else None
    result = asyncio.run(_run_with_progress(config, line))
    sys.stdout.write(summary_table(result))
    if args.json_out is not None:
        write_json(result, args.json_out)
    if args.html_out is not None:
        write_html(result, args.html_out)
    status = EXIT_OK if all(c.ok for c in result.calls) and result.calls else EXIT_FAILED
    if args.max_p95_latency_ms is not None:
        p95 = stats(metric_values(result.calls, "response_latency_ms")).p95
        if p95 is None or p95 > args.max_p95_latency_ms:
            shown = "none measured" if p95 is None else f"{p95:.0f} ms"
            print(f"gateway loadtest: p95 response latency {shown} misses the {args.max_p95_latency_ms:g} ms gate")
            status = EXIT_FAILED
    return status
