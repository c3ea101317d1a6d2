"""The built-in agent of `gateway serve --evi simulator`, in a worker process of its own.

The agent's speech work (voice detection per frame, recognition, synthesis) is CPU work. In the gateway's
process it would share the event loop and the GIL with every call: measured with 10 calls on the real-speech
agent, every dropout the callers heard was the gateway's own pacing sent late. In a worker it runs beside
the gateway (on another core when there is one) and speaks EVI's protocol to it over loopback, like
`gateway simulate-evi` does as a separate service.

The worker announces its URL on stdout as one JSON line and lives until its stdin closes, so it ends with
the gateway even if the gateway is killed. Its log lines go to the gateway's stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gateway.errors import ConfigError
from gateway.simulator.children import answer, command_lines, stop_child

WORKER_START_TIMEOUT_S = 60.0
"""Time the worker may take to load its speech models and listen."""
WORKER_STOP_TIMEOUT_S = 5.0
"""Time it may take to close its sessions once told to stop; then it is killed."""
_KEY_ENV = "GATEWAY_AGENT_WORKER_KEY"  # the API key it requires, passed outside the command line


@asynccontextmanager
async def agent_worker(*, cheap: bool, max_sessions: int, log_level: str = "INFO") -> AsyncIterator[tuple[str, str]]:
    """Run the agent in a worker process; yields its chat URL and the API key it takes.

    Raises ConfigError if the worker does not come up within :data:`WORKER_START_TIMEOUT_S`.
    """
    key = secrets.token_hex(16)
    args = ["--max-sessions", str(max_sessions), "--log-level", log_level, *(["--cheap"] if cheap else [])]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.simulator.agent_process", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, _KEY_ENV: key}, start_new_session=True,  # Ctrl-C reaches the gateway, which stops it
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), WORKER_START_TIMEOUT_S)
        except TimeoutError:
            raise ConfigError(f"the agent worker did not start within {WORKER_START_TIMEOUT_S:g} s") from None
        if not line:
            raise ConfigError(f"the agent worker exited with status {await proc.wait()} (its log is above)")
        yield json.loads(line)["url"], key
    finally:
        await stop_child(proc, WORKER_STOP_TIMEOUT_S)


async def _serve(cheap: bool, max_sessions: int) -> None:
    from gateway.simulator.agent import AgentConfig
    from gateway.simulator.evi import EviSimulator

    sim = EviSimulator(
        api_key=os.environ[_KEY_ENV],
        agent_config=AgentConfig(cheap=cheap),
        retain_closed_sessions=False,
        record_audio=False,
        max_sessions=max_sessions,  # the gateway's own cap is the one that counts
        accept_unknown_configs=True,  # this agent has no configs of its own: any config_id gets its defaults
    )
    await sim.start()
    try:
        answer({"url": sim.url})
        async for _command in command_lines():  # until the gateway closes our stdin (or dies)
            pass
    finally:
        await sim.close()


def main(argv: list[str] | None = None) -> int:
    """The worker: serve the agent on a free loopback port until stdin closes."""
    from gateway.logs import configure_logging

    p = argparse.ArgumentParser(prog="gateway agent worker")
    p.add_argument("--max-sessions", type=int, required=True)
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--cheap", action="store_true")
    args = p.parse_args(argv)
    configure_logging(args.log_level)
    asyncio.run(_serve(args.cheap, args.max_sessions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
