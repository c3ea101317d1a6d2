"""Serving on a free loopback port (port 0): the port is bound first, so a server can name its own URL."""

from __future__ import annotations

import socket
from collections.abc import Callable

from aiohttp import web

__all__ = ["free_port", "serve_app", "serve_on_free_port"]


def _bind_free_port(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago, for a server started in another process."""
    with _bind_free_port(host) as sock:
        return int(sock.getsockname()[1])


async def serve_on_free_port(
    build: Callable[[int], web.Application], host: str = "127.0.0.1"
) -> tuple[web.AppRunner, int]:
    """Serve ``build(port)`` on a port of ``host`` the OS picks, bound before the app is built (so it can
    name its own URL); returns the runner (``await runner.cleanup()`` to stop) and the port."""
    sock = _bind_free_port(host)
    try:
        port = int(sock.getsockname()[1])
        runner = web.AppRunner(build(port), handle_signals=False)
        await runner.setup()
    except BaseException:
        sock.close()
        raise
    await web.SockSite(runner, sock).start()
    return runner, port


async def serve_app(app: web.Application, host: str = "127.0.0.1") -> tuple[web.AppRunner, int]:
    """Serve an app that need not know its port (see :func:`serve_on_free_port`)."""
    return await serve_on_free_port(lambda _port: app, host)
