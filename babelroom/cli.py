"""The `babelroom` command: the service's entry points. The environment is read here and only here."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.config import DEFAULT_PORT, BusOptions, WorkerOptions
from pipeline.routes import WORKER_KINDS

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("BABELROOM_LOG_LEVEL", "INFO").upper(), format=LOG_FORMAT)
    result: int = args.run(args, os.environ)
    return result


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="babelroom", description="Real-time translation for video meetings.")
    commands = top.add_subparsers(required=True, metavar="COMMAND")

    up = commands.add_parser(
        "up",
        help="run everything here: redis and Janus (unless given by URL), the gateway, one worker per kind",
    )
    add_listen_options(up)
    up.set_defaults(run=run_up)

    gateway = commands.add_parser("gateway", help="run the gateway (room page, WebRTC, playout)")
    add_listen_options(gateway)
    gateway.set_defaults(run=run_gateway)

    janus = commands.add_parser("janus", help="run Janus with BabelRoom's configuration (containers: compose.yaml)")
    janus.add_argument("--ws-ip", default="127.0.0.1", help="address of Janus's API (only the gateway talks to it)")
    janus.add_argument("--ws-port", type=int, default=8188)
    janus.set_defaults(run=run_janus)

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
    bench.add_argument("name", choices=("stages", "scaling", "media"))
    bench.add_argument("--out", type=Path, required=True)
    bench.add_argument(
        "--participants", default="2,4", help="media: room sizes to measure, comma-separated (default 2,4)"
    )
    bench.set_defaults(run=run_bench)
    return top


def add_listen_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    command.add_argument("--port", type=int, default=int(os.environ.get("PORT", DEFAULT_PORT)))


def run_up(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from babelroom.supervisor import up

    up(env, args.host, args.port)
    return 0


def run_janus(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Write Janus's configuration with the secrets the gateway was given, then become Janus."""
    import tempfile

    from babelroom import janus

    secret, admin_key = env.get("BABELROOM_JANUS_API_SECRET", ""), env.get("BABELROOM_JANUS_ADMIN_KEY", "")
    if not secret or not admin_key:
        print("babelroom janus: set BABELROOM_JANUS_API_SECRET and BABELROOM_JANUS_ADMIN_KEY (the gateway's too)",
              file=sys.stderr)  # fmt: skip
        return 2
    fresh = janus.config_from_env(env, args.ws_port)
    config = dataclasses.replace(fresh, api_secret=secret, admin_key=admin_key, ws_ip=args.ws_ip)
    folder = Path(tempfile.mkdtemp(prefix="babelroom-janus-"))
    janus.write_config(folder, config)
    argv = janus.janus_argv(folder)
    os.execv(argv[0], argv)


def run_gateway(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from aiohttp import web

    from gateway.app import create_app
    from gateway.options import GatewayOptions
    from pipeline.bus import Bus

    options = GatewayOptions.from_env(env)
    if not options.janus.url:
        print("babelroom gateway: set BABELROOM_JANUS_URL (and its API secret and admin key), or run `babelroom up`",
              file=sys.stderr)  # fmt: skip
        return 2

    async def build() -> web.Application:
        return create_app(Bus.connect(BusOptions.from_env(env)), options)

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
    elif args.name == "scaling":
        from benchmarks.scaling import run as run_scaling

        run_scaling(args.out)
    else:
        from benchmarks.media import run as run_media

        run_media(args.out, [int(n) for n in args.participants.split(",")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
