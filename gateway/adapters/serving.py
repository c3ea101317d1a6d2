"""``gateway serve`` as a service: listen, drain on SIGTERM, reload the numbers file on SIGHUP (operations.md §2).

- SIGTERM: readiness turns 503 and new webhooks get the busy answer at once; live calls carry on until they
  end by themselves or ``drain_grace_s`` passes; then each remaining call hears ``drain_goodbye_message`` and
  closes (a call that cannot say goodbye yet, e.g. still connecting, is asked again every second, and closed
  outright :data:`FORCE_AFTER_S` after the grace). The process exits 0 when the last call has ended.
- A second SIGTERM, or SIGINT (Ctrl-C in a terminal), stops at once: live calls are closed.
- SIGHUP re-reads the numbers file off the event loop. A bad file is logged and refused: the old one stays in
  use, and readiness reports the failure until a reload succeeds. Live calls keep the line they started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web

from gateway.adapters.app import STATE, GatewayState
from gateway.errors import ConfigError
from gateway.numbers import load_numbers

T = TypeVar("T")
LINGER_S = 2.0
"""After answering a request whose body did not arrive whole (408), the rest is read for this long, then the
connection is closed."""


def loop_factory(event_loop: str) -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """The event loop ``event_loop`` names ("auto", "asyncio" or "uvloop"), and what was chosen.

    ``auto`` takes uvloop when it is installed (``pip install evi-phone-gateway[fast]``), else asyncio's own;
    ``uvloop`` without it installed is a ConfigError.
    """
    if event_loop == "asyncio":
        return None, "asyncio"
    try:
        import uvloop
    except ImportError:
        if event_loop == "uvloop":
            raise ConfigError("event_loop = uvloop, but uvloop is not installed (the `fast` extra)") from None
        return None, "asyncio"
    return uvloop.new_event_loop, "uvloop"


def run(main: Coroutine[Any, Any, T], event_loop: str = "auto") -> T:
    """``asyncio.run(main)`` on the event loop ``event_loop`` names (see :func:`loop_factory`)."""
    try:
        factory, _name = loop_factory(event_loop)
    except ConfigError:
        main.close()  # never started: no "never awaited" warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


log = logging.getLogger("gateway.serve")


def freeze_startup_heap() -> int:
    """Take every object alive now (modules, schemas, the app) out of the cyclic garbage collector's view.

    A full collection walks every object it tracks, and no frame moves meanwhile: after the imports that is
    ~70,000 objects, 50–90 ms on a 2-core machine, often enough to land in a p99. Frozen, they are never
    walked again, and a full collection walks only what calls made (operations.md §4). Returns how many
    objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


SHUTDOWN_RETRY_S = 1.0
"""After the grace, how often a call that could not yet say goodbye is asked again."""
FORCE_AFTER_S = 30.0
"""After the grace, a call still open this much later is closed without a goodbye (every wait is bounded)."""


async def drain(state: GatewayState, grace_s: float) -> None:
    """Stop admitting calls, let live ones finish within ``grace_s``, then end the rest with a goodbye."""
    state.draining = True
    loop = asyncio.get_running_loop()
    log.warning("draining: %d calls in progress, grace %.0f s", len(state.active_calls), grace_s)
    deadline = loop.time() + grace_s
    while (state.active_calls or state.reservations) and loop.time() < deadline:
        state.slots_in_use(loop.time())  # drops expired reservations
        await asyncio.sleep(min(0.1, max(0.0, deadline - loop.time())))
    if state.active_calls:
        log.warning("drain grace over: %d calls hear the goodbye", len(state.active_calls))
    force_at = loop.time() + FORCE_AFTER_S
    while state.active_calls:
        now = loop.time()
        for runner in list(state.active_calls):
            runner.execute(runner.call.twilio_closed(now) if now >= force_at else runner.call.shut_down(now))
        await asyncio.sleep(SHUTDOWN_RETRY_S if now < force_at else 0.1)
    log.warning("drained: no calls left")


async def reload_numbers(state: GatewayState) -> bool:
    """Re-read the numbers file; keep the old one if the new one is bad. True if it loaded."""
    path = state.settings.numbers_file
    if path is None:
        log.info("SIGHUP: no numbers file to reload")
        return True
    try:
        lines = await asyncio.to_thread(load_numbers, path)
    except ConfigError as exc:
        state.numbers_error = str(exc)
        log.error("SIGHUP: numbers file %s refused, the previous one stays in use: %s", path, exc)
        return False
    state.lines, state.numbers_error = lines, None
    log.warning("SIGHUP: numbers file %s reloaded", path)
    return True


async def serve(app: web.Application | Awaitable[web.Application], host: str, port: int) -> int:
    """Run the app until stopped; returns the exit status (0 after a drain or Ctrl-C)."""
    if not isinstance(app, web.Application):
        app = await app
    state = app[STATE]
    # docs/operations.md §4: aiohttp's own default keeps an idle or half-open connection for an hour, and
    # waits 10 s for the rest of a body it refused (408) before closing.
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        keepalive_timeout=state.settings.http_idle_timeout_s,
        lingering_time=LINGER_S,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    freeze_startup_heap()
    addresses = ", ".join(f"http://{address[0]}:{address[1]}" for address in runner.addresses)
    loop = asyncio.get_running_loop()
    loop_name = "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
    print(f"gateway listening on {addresses} (event loop: {loop_name})", flush=True)
    stop = asyncio.Event()
    tasks: set[asyncio.Task[object]] = set()

    def spawn(work: Awaitable[object]) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def drain_then_stop() -> None:
        await drain(state, state.settings.drain_grace_s)
        stop.set()

    def on_term() -> None:
        if state.draining:
            log.warning("second SIGTERM: stopping now")
            stop.set()
            return
        spawn(drain_then_stop())

    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: spawn(reload_numbers(state)))
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()  # on_shutdown closes any call still open
    return 0
