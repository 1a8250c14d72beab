"""The `babelroom` command: the service's entry points. The environment is read here and only here."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.config import DEFAULT_PORT, BusOptions, WorkerOptions
from pipeline.routes import WORKER_KINDS
from workers.stage import PermanentError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. What the user can fix (a bad setting or argument, an unreadable file, a busy
    port) is one line on stderr and exit status 2, not a traceback."""
    args = parser().parse_args(argv)
    try:
        logging.basicConfig(level=log_level(os.environ), format=LOG_FORMAT)
        result: int = args.run(args, os.environ)
    except (ValueError, OSError, PermanentError) as exc:
        print(f"babelroom {args.command}: {exc}", file=sys.stderr)
        return 2
    return result


def log_level(env: Mapping[str, str]) -> str:
    level = env.get("BABELROOM_LOG_LEVEL", "INFO").strip().upper()
    if level not in logging.getLevelNamesMapping():
        raise ValueError(f"BABELROOM_LOG_LEVEL={level!r}: choose one of DEBUG, INFO, WARNING, ERROR")
    return level


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="babelroom", description="Real-time translation for video meetings.")
    commands = top.add_subparsers(required=True, metavar="COMMAND", dest="command")

    up = commands.add_parser("up", help="run everything here: redis (unless REDIS_URL), gateway, one worker per kind")
    add_listen_options(up)
    up.set_defaults(run=run_up)

    gateway = commands.add_parser("gateway", help="run the gateway (room page, WebRTC, playout)")
    add_listen_options(gateway)
    gateway.set_defaults(run=run_gateway)

    worker = commands.add_parser("worker", help="run one worker")
    worker.add_argument("kind", choices=WORKER_KINDS)
    worker.set_defaults(run=run_worker)

    token = commands.add_parser("token", help="issue a signed join link for a room (needs BABELROOM_TOKEN_SECRET)")
    token.add_argument("room")
    token.add_argument("--name", required=True, help="the participant's display name")
    token.add_argument("--role", default="participant", choices=("participant", "host"))
    token.add_argument("--ttl", type=float, default=4 * 3600, help="validity in seconds (default 4 h)")
    token.add_argument(
        "--base-url", default="", help="print a join link on this base URL, e.g. https://meet.example.org"
    )
    token.set_defaults(run=run_token)

    translate = commands.add_parser("translate", help="translate a recorded WAV file with the same engines")
    translate.add_argument("input", type=Path)
    translate.add_argument("--from", dest="source", required=True, help="language spoken in the file, e.g. en")
    translate.add_argument("--to", dest="target", required=True, help="language to translate into, e.g. es")
    translate.add_argument("--out", type=Path, required=True, help="folder for result.json and speech.wav")
    translate.set_defaults(run=run_translate)

    bench = commands.add_parser("bench", help="run a benchmark and write its figures")
    bench.add_argument("name", choices=("stages", "scaling"))
    bench.add_argument("--out", type=Path, required=True)
    bench.set_defaults(run=run_bench)
    return top


def add_listen_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    command.add_argument("--port", type=int, default=int(os.environ.get("PORT", DEFAULT_PORT)))


def run_up(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from babelroom.supervisor import up

    check_settings(env)  # a bad setting stops `up` here, not in a crash loop of every child
    up(env, args.host, args.port)
    return 0


def check_settings(env: Mapping[str, str]) -> None:
    """Read every setting the service's processes will read; raises ValueError naming a bad one."""
    from gateway.options import GatewayOptions
    from workers.registry import build_stage

    BusOptions.from_env(env)
    WorkerOptions.from_env(env)
    GatewayOptions.from_env(env)
    for kind in WORKER_KINDS:
        build_stage(kind, env)


def run_gateway(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from aiohttp import web

    from gateway.app import create_app
    from gateway.options import GatewayOptions
    from pipeline.bus import Bus

    async def build() -> web.Application:
        return create_app(Bus.connect(BusOptions.from_env(env)), GatewayOptions.from_env(env))

    web.run_app(build(), host=args.host, port=args.port, print=None)
    return 0


def run_worker(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from pipeline.bus import Bus
    from workers.base import serve
    from workers.registry import build_stage

    stage = build_stage(args.kind, env)

    async def run() -> None:
        await serve(stage, Bus.connect(BusOptions.from_env(env)), WorkerOptions.from_env(env))

    asyncio.run(run())
    return 0


def run_token(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from urllib.parse import quote, urlencode

    from gateway.tokens import issue_token

    secret = env.get("BABELROOM_TOKEN_SECRET", "")
    if not secret:
        print("babelroom token: set BABELROOM_TOKEN_SECRET (the gateway must share it)", file=sys.stderr)
        return 2
    token = issue_token(secret, args.room, args.name, args.role, args.ttl)
    if args.base_url:
        query = urlencode({"name": args.name, "token": token})
        print(f"{args.base_url.rstrip('/')}/room/{quote(args.room)}?{query}")
    else:
        print(token)
    return 0


def run_translate(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from workers.translate_file import translate_file

    if not args.input.is_file():
        print(f"babelroom translate: no such file: {args.input}", file=sys.stderr)
        return 2
    result = translate_file(args.input, args.source, args.target, args.out, env)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def run_bench(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    if args.name == "stages":
        from benchmarks.stages import run as run_stages

        run_stages(args.out)
    else:
        from benchmarks.scaling import run as run_scaling

        run_scaling(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
