"""Run the gateway's application: plain HTTP on one port and, given a certificate, HTTPS on another.

Plain HTTP stays for localhost (browsers treat http://localhost as secure) and so that a participant who
typed the http address from another machine gets the room page, which explains and links to HTTPS.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.web_runner import GracefulExit

from gateway.options import TlsOptions
from pipeline import memory

Builder = Callable[[], Awaitable[web.Application]]


def server_context(tls: TlsOptions) -> ssl.SSLContext:
    """TLS 1.2 or newer with the certificate and key; raises ValueError naming files that are not a PEM
    certificate and its key (OSError for one that cannot be read)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not (Path(tls.cert).is_file() and Path(tls.key).is_file()):
        raise ValueError(f"BABELROOM_TLS_CERT={tls.cert!r}, BABELROOM_TLS_KEY={tls.key!r}: no such file")
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except ssl.SSLError as exc:
        raise ValueError(
            f"BABELROOM_TLS_CERT={tls.cert!r}, BABELROOM_TLS_KEY={tls.key!r}: not a PEM certificate and its key ({exc})"
        ) from None
    return context


def serve(build: Builder, host: str, port: int, tls: TlsOptions) -> None:
    """Until SIGINT or SIGTERM, then a clean shutdown of the application."""
    context = server_context(tls) if tls.enabled else None  # a bad certificate stops here, before anything starts
    memory.limit_arenas()
    with contextlib.suppress(GracefulExit, KeyboardInterrupt):
        asyncio.run(_serve(build, host, port, tls.port, context))


async def _serve(build: Builder, host: str, port: int, https_port: int, context: ssl.SSLContext | None) -> None:
    runner = web.AppRunner(await build(), handle_signals=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        if context is not None:
            await web.TCPSite(runner, host, https_port, ssl_context=context).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
