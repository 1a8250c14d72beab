"""Run the gateway's application: plain HTTP on one port and, given a certificate, HTTPS on another.

Plain HTTP stays for localhost (browsers treat http://localhost as secure) and so that a participant who
typed the http address from another machine gets the room page, which explains and links to HTTPS.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.web_runner import GracefulExit

from gateway.options import TlsOptions
from pipeline import memory
from pipeline.bus import cancel_and_wait

Builder = Callable[[], Awaitable[web.Application]]
# What SIGTERM or SIGINT runs before the application stops, when the application has it: a media node drains
# (gateway/web/cluster.py). A second signal stops at once.
DRAIN_KEY = web.AppKey("drain", Callable[[], Awaitable[None]])


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
    app = await build()
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    signalled = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, signalled.set)
    try:
        await web.TCPSite(runner, host, port).start()
        if context is not None:
            await web.TCPSite(runner, host, https_port, ssl_context=context).start()
        await signalled.wait()
        drain = app.get(DRAIN_KEY)
        if drain is not None:
            signalled.clear()
            waits = [asyncio.create_task(drain()), asyncio.create_task(signalled.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            await cancel_and_wait(waits)
    finally:
        await runner.cleanup()
