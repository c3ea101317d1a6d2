"""Serving a simulator's aiohttp app on a free loopback port (port 0), the port known before the first request."""

from __future__ import annotations

import socket

from aiohttp import web


async def serve_app(app: web.Application, host: str = "127.0.0.1") -> tuple[web.AppRunner, int]:
    """Start ``app`` on ``host`` at a port the OS picks; returns the runner (``await runner.cleanup()``) and port."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = int(sock.getsockname()[1])
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner, port
