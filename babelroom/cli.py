"""The `babelroom` command: the service's entry points. The environment is read here and only here."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import logs
from pipeline.config import DEFAULT_PORT, BusOptions, WorkerOptions
from pipeline.routes import WORKER_KINDS
from workers.stage import PermanentError

if TYPE_CHECKING:
    from benchmarks.models import ModelSet


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. What the user can fix (a bad setting or argument, an unreadable file, a busy
    port) is one line on stderr and exit status 2, not a traceback."""
    args = parser().parse_args(argv)
    try:
        logs.configure(log_level(os.environ), logs.secrets_in(os.environ))
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

    up = commands.add_parser(
        "up",
        help="run everything here: redis and Janus (unless given by URL), the gateway, one worker per kind",
    )
    add_listen_options(up)
    up.add_argument(
        "--https",
        action="store_true",
        help="serve HTTPS too, with a self-signed certificate for this host made once and kept (BABELROOM_TLS_DIR)",
    )
    up.add_argument("--turn", action="store_true", help="run coturn, a TURN relay for networks that block UDP")
    up.add_argument(
        "--public-host", help="the name or address other machines reach this one by (default: its first address)"
    )
    up.set_defaults(run=run_up)

    node = commands.add_parser(
        "node", help="run a media node (the gateway and its own Janus) of the cluster on a shared Redis"
    )
    add_listen_options(node)
    add_redis_option(node)
    node.add_argument(
        "--public-host",
        help="what browsers reach this node by: a name or address (default: this host's first address), or a URL",
    )
    node.add_argument("--node-id", help="this node's name in Redis (default: the host name)")
    node.set_defaults(run=run_node)

    workers = commands.add_parser("workers", help="run one worker of each kind against a shared Redis")
    add_redis_option(workers)
    workers.add_argument(
        "--kinds", type=kinds_list, default=WORKER_KINDS, help=f"comma-separated (default: {','.join(WORKER_KINDS)})"
    )
    workers.set_defaults(run=run_workers)

    nodes = commands.add_parser("nodes", help="list the media nodes: state, rooms, participants, load")
    add_redis_option(nodes)
    nodes.add_argument("--json", action="store_true", help="one JSON object per node, one per line")
    nodes.set_defaults(run=run_nodes)

    drain = commands.add_parser("drain", help="mark a media node draining: it takes no new rooms, its rooms go on")
    add_redis_option(drain)
    drain.add_argument("node", help="the node's id, as `babelroom nodes` lists it")
    drain.set_defaults(run=run_drain)

    gateway = commands.add_parser("gateway", help="run the gateway (room page, WebRTC, playout)")
    add_listen_options(gateway)
    gateway.set_defaults(run=run_gateway)

    janus = commands.add_parser("janus", help="run Janus with BabelRoom's configuration (containers: compose.yaml)")
    janus.add_argument("--ws-ip", default="127.0.0.1", help="address of Janus's API (only the gateway talks to it)")
    janus.add_argument("--ws-port", type=int, default=8188)
    janus.set_defaults(run=run_janus)

    turn = commands.add_parser("turn", help="run coturn with BabelRoom's configuration (containers: compose.yaml)")
    turn.add_argument("--relay-to", default="", help="the only addresses it relays to, comma-separated (Janus's)")
    turn.set_defaults(run=run_turn)

    worker = commands.add_parser("worker", help="run one worker")
    worker.add_argument("kind", choices=WORKER_KINDS)
    worker.set_defaults(run=run_worker)

    health = commands.add_parser("health", help="exit 0 when a part is ready, else 1 and why (the healthchecks)")
    health.add_argument("part", choices=("gateway", "janus", "worker"))
    health.add_argument("kind", nargs="?", choices=WORKER_KINDS, help="worker: only this kind (default: any)")
    health.add_argument("--url", help=f"gateway: its /healthz ({GATEWAY_HEALTHZ}); janus: its API ({JANUS_API})")
    health.set_defaults(run=run_health)

    token = commands.add_parser("token", help="issue a signed join link for a room (needs BABELROOM_TOKEN_SECRET)")
    token.add_argument("room")
    token.add_argument("--name", required=True, help="the participant's display name")
    token.add_argument("--role", default="participant", choices=("participant", "host"))
    token.add_argument("--ttl", type=float, default=4 * 3600, help="validity in seconds (default 4 h)")
    token.add_argument(
        "--base-url", default="", help="print a join link on this base URL, e.g. https://meet.example.org"
    )
    token.set_defaults(run=run_token)

    translate = commands.add_parser(
        "translate", help="translate a recording (WAV, or a video: dubbed and lip-synced) with the same engines"
    )
    translate.add_argument("input", type=Path, help="a .wav, .mp4, .webm, .y4m, .mkv or .mov file")
    translate.add_argument("--from", dest="source", required=True, help="language spoken in the file, e.g. en")
    translate.add_argument("--to", dest="target", required=True, help="language to translate into, e.g. es")
    translate.add_argument(
        "--out", type=Path, required=True, help="folder for result.json, speech.wav, captions.vtt (and video.mp4)"
    )
    translate.set_defaults(run=run_translate)

    models = commands.add_parser("models", help="list the models installed here (ASR, MT, TTS, lip-sync)")
    models.set_defaults(run=run_models)
    fetch = models.add_subparsers(dest="action").add_parser(
        "fetch",
        help="convert an MT model to CTranslate2 int8 into the model cache: a local transformers dir, or a "
        "Hugging Face id (Helsinki-NLP/opus-mt-en-es) where BABELROOM_ALLOW_DOWNLOAD=1",
    )
    fetch.add_argument("name", help="Helsinki-NLP/opus-mt-en-es, facebook/nllb-200-distilled-600M, or a local dir")
    fetch.add_argument("--quantization", default="int8", help="CTranslate2 weight type (default int8)")
    fetch.set_defaults(run=run_models)

    bench = commands.add_parser("bench", help="run a benchmark and write its figures (JSON, PNG)")
    bench.add_argument("name", choices=BENCHMARKS)
    bench.add_argument(
        "--out", type=Path, help="folder of the figures: out/bench (report: results, where RESULTS.md reads them)"
    )
    bench.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="pipeline, gpu: where the models run")
    bench.add_argument("--tiny", action="store_true", help="gpu, pipeline: tiny random models (the tests' mode)")
    bench.add_argument("--rooms", type=rooms_list, help="pipeline, gpu: concurrent speakers to try, e.g. 1,2,4,8")
    bench.add_argument(
        "--models", type=Path, help="pipeline, gpu: where random models are built (BABELROOM_MODEL_CACHE/random)"
    )
    bench.add_argument("--asr-model", type=Path, help="gpu, pipeline --device cuda: your Whisper (a local dir)")
    bench.add_argument("--mt-model", type=Path, help="gpu, pipeline --device cuda: your NLLB-200 (a local dir)")
    bench.add_argument("--voice", action="append", default=[], metavar="LANG=DIR", help="your MMS-TTS voice")
    bench.add_argument(
        "--participants", default="2,4", help="media: room sizes to measure, comma-separated (default 2,4)"
    )
    bench.add_argument("--minutes", type=float, default=60.0, help="soak: how long the meeting talks (default 60)")
    bench.add_argument(
        "--nodes", type=rooms_list, default=(1, 2), help="capacity: media nodes to measure, e.g. 1,2 (default)"
    )
    bench.add_argument("--runs", type=int, default=10, help="join: greetings, each in a fresh room (default 10)")
    bench.set_defaults(run=run_bench)
    return top


BENCHMARKS = (
    "stages", "scaling", "hops", "latency", "attack", "join", "soak", "asr-context", "real-speech", "media",
    "lipsync", "mt-quality", "pipeline", "gpu", "capacity", "report",
)  # fmt: skip


GATEWAY_HEALTHZ = f"http://127.0.0.1:{DEFAULT_PORT}/healthz"
JANUS_API = "ws://127.0.0.1:8188"


def rooms_list(text: str) -> tuple[int, ...]:
    try:
        rooms = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers separated by commas, e.g. 1,2,4,8") from None
    if not rooms or min(rooms) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every number of rooms must be 1 or more")
    return rooms


def kinds_list(text: str) -> tuple[str, ...]:
    kinds = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [kind for kind in kinds if kind not in WORKER_KINDS]
    if not kinds or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(WORKER_KINDS)}, comma-separated")
    return kinds


def add_redis_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--redis", metavar="URL", help="the shared Redis (default: REDIS_URL)")


def shared_redis(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, str]:
    """The environment with REDIS_URL from --redis (or as it was); ValueError when neither names one."""
    url = args.redis or env.get("REDIS_URL", "")
    if not url:
        raise ValueError("name the shared Redis: --redis redis://HOST:6379/0, or REDIS_URL")
    return {**env, "REDIS_URL": url}


def add_listen_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    command.add_argument("--port", type=int, default=int(os.environ.get("PORT", DEFAULT_PORT)))


def run_up(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from babelroom.supervisor import UpOptions, up

    env = dict(env)
    public_host = args.public_host or default_public_host()
    if args.https:
        env.update(lan_certificate(env, public_host))
    check_settings(env)  # a bad setting stops `up` here, not in a crash loop of every child
    up(env, UpOptions(args.host, args.port, public_host, args.turn))
    return 0


def run_node(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from babelroom.supervisor import NodeRun, default_node_id, node, public_url

    env = shared_redis(args, env)
    check_settings(env, kinds=())  # the gateway's settings: a node runs no worker
    url = public_url(env, args.public_host or default_public_host(), args.port)
    node(env, NodeRun(args.host, args.port, url, args.node_id or default_node_id()))
    return 0


def run_workers(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from babelroom.supervisor import workers

    env = shared_redis(args, env)
    check_settings(env, args.kinds)
    workers(env, args.kinds)
    return 0


def run_nodes(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from gateway.options import NodeOptions
    from gateway.rooms.placement import Registry
    from pipeline.bus import Bus

    async def listed() -> list[dict[str, object]]:
        bus = Bus.connect(BusOptions.from_env(shared_redis(args, env)))
        try:
            return [n.public() for n in await Registry(bus, NodeOptions.from_env(env).live_s).nodes()]
        finally:
            await bus.close()

    nodes = asyncio.run(listed())
    if args.json:
        for entry in nodes:
            print(json.dumps(entry))
        return 0
    columns = ("id", "state", "rooms", "participants", "load", "age_s", "url")
    rows: list[tuple[str, ...]] = [("NODE", "STATE", "ROOMS", "PARTICIPANTS", "LOAD", "SEEN", "URL")]
    rows += [(*(str(n[c]) for c in columns[:5]), f"{n['age_s']} s ago", str(n["url"])) for n in nodes]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def run_drain(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from gateway.options import NodeOptions
    from gateway.rooms.placement import Registry
    from pipeline.bus import Bus

    async def drain() -> bool:
        bus = Bus.connect(BusOptions.from_env(shared_redis(args, env)))
        try:
            return await Registry(bus, NodeOptions.from_env(env).live_s).drain(args.node)
        finally:
            await bus.close()

    if not asyncio.run(drain()):
        print(f"babelroom drain: no node {args.node!r} is known (see `babelroom nodes`)", file=sys.stderr)
        return 1
    print(f"node {args.node} is draining: it takes no new rooms; its rooms go on until they end or its grace passes")
    return 0


def default_public_host() -> str:
    from babelroom.certificate import host_addresses

    outside = [a for a in host_addresses() if not a.is_loopback and a.version == 4]
    return str(outside[0]) if outside else "localhost"


def lan_certificate(env: Mapping[str, str], public_host: str) -> dict[str, str]:
    """The kept self-signed certificate (made now if missing or no longer covering this host); prints its
    fingerprint, which participants compare with the one their browser shows before accepting it."""
    import ipaddress

    from babelroom.certificate import default_folder, ensure_certificate, host_addresses, host_names

    names = host_names()
    try:
        ipaddress.ip_address(public_host)
    except ValueError:
        names.append(public_host)
    made = ensure_certificate(default_folder(env), names, host_addresses())
    verb = "made" if made.created else "kept"
    print(f"HTTPS certificate ({verb}, self-signed): {made.cert}", flush=True)
    print(f"  its SHA-256 fingerprint: {made.fingerprint}", flush=True)
    return {"BABELROOM_TLS_CERT": str(made.cert), "BABELROOM_TLS_KEY": str(made.key)}


def run_janus(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Janus with the secrets the gateway was given, until it exits."""
    from babelroom import janus
    from babelroom.supervisor import run_janus
    from gateway.options import TurnOptions

    secret, admin_key = env.get("BABELROOM_JANUS_API_SECRET", ""), env.get("BABELROOM_JANUS_ADMIN_KEY", "")
    if not secret or not admin_key:
        print("babelroom janus: set BABELROOM_JANUS_API_SECRET and BABELROOM_JANUS_ADMIN_KEY (the gateway's too)",
              file=sys.stderr)  # fmt: skip
        return 2
    with janus.TurnApi.serving(TurnOptions.from_env(env)) as turn:
        fresh = janus.config_from_env(env, args.ws_port, turn)
        return run_janus(dataclasses.replace(fresh, api_secret=secret, admin_key=admin_key, ws_ip=args.ws_ip))


def run_turn(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """coturn sharing BABELROOM_TURN_SECRET with the gateway, TLS too given BABELROOM_TLS_CERT/KEY, until it exits."""
    from babelroom.coturn import CoturnConfig
    from babelroom.supervisor import run_coturn

    secret = env.get("BABELROOM_TURN_SECRET", "")
    if not secret:
        print("babelroom turn: set BABELROOM_TURN_SECRET (the gateway's too)", file=sys.stderr)
        return 2
    peers = tuple(peer.strip() for peer in args.relay_to.split(",") if peer.strip())
    cert, key = env.get("BABELROOM_TLS_CERT", ""), env.get("BABELROOM_TLS_KEY", "")
    return run_coturn(CoturnConfig(secret=secret, allowed_peers=peers, cert=cert, key=key))


def check_settings(env: Mapping[str, str], kinds: Sequence[str] = WORKER_KINDS) -> None:
    """Read every setting the service's processes will read (the workers': of `kinds`); raises ValueError naming a
    bad one."""
    from gateway.options import GatewayOptions
    from gateway.web.serve import server_context
    from workers.registry import build_stage

    BusOptions.from_env(env)
    WorkerOptions.from_env(env)
    tls = GatewayOptions.from_env(env).tls
    if tls.enabled:
        server_context(tls)  # a missing or unreadable certificate, or a key that does not match it
    for kind in kinds:
        build_stage(kind, env)


def run_gateway(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from aiohttp import web

    from gateway.options import GatewayOptions
    from gateway.web.app import create_app
    from gateway.web.serve import serve
    from pipeline.bus import Bus

    options = GatewayOptions.from_env(env)
    if not options.janus.url:
        print("babelroom gateway: set BABELROOM_JANUS_URL (and its API secret and admin key), or run `babelroom up`",
              file=sys.stderr)  # fmt: skip
        return 2

    async def build() -> web.Application:
        return create_app(Bus.connect(BusOptions.from_env(env)), options)

    serve(build, args.host, args.port, options.tls)
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


def run_health(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import socket

    from babelroom.health import gateway_problem, janus_problem, worker_problem
    from pipeline.bus import Bus

    async def problem() -> str | None:
        if args.part == "gateway":
            return await gateway_problem(args.url or GATEWAY_HEALTHZ, token=env.get("BABELROOM_MONITORING_TOKEN", ""))
        if args.part == "janus":
            return await janus_problem(args.url or JANUS_API)
        bus = Bus.connect(BusOptions.from_env(env))
        try:
            return await worker_problem(bus, socket.gethostname(), args.kind)
        finally:
            await bus.close()

    found = asyncio.run(problem())
    print(f"babelroom health {args.part}: {found or 'ready'}", file=sys.stderr if found else sys.stdout)
    return 1 if found else 0


def run_token(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from urllib.parse import quote, urlencode

    from gateway.web.tokens import issue_token

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
    from pipeline.video import VIDEO_SUFFIXES, VideoError
    from workers.stage import PermanentError
    from workers.translate_file import translate_file

    if not args.input.is_file():
        print(f"babelroom translate: no such file: {args.input}", file=sys.stderr)
        return 2
    if args.input.suffix.lower() not in (".wav", *VIDEO_SUFFIXES):
        print(f"babelroom translate: {args.input.name}: expected .wav or {', '.join(VIDEO_SUFFIXES)}", file=sys.stderr)
        return 2
    try:
        result = translate_file(args.input, args.source, args.target, args.out, env)
    except (VideoError, PermanentError) as exc:
        print(f"babelroom translate: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def run_models(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from babelroom import models
    from pipeline.config import env_flag
    from workers.engines.common import DEFAULT_CACHE_DIR

    cache = env.get("BABELROOM_MODEL_CACHE", DEFAULT_CACHE_DIR)
    if getattr(args, "action", None) == "fetch":
        allowed = env_flag(env, "BABELROOM_ALLOW_DOWNLOAD")
        path = models.fetch_mt_model(args.name, cache, allowed, args.quantization)
        print(
            f"converted {args.name} to {path} ({models.size_of(path) / 1e6:.1f} MB); use it with "
            f"BABELROOM_MT_ENGINE=ctranslate2 (all models in the cache) or BABELROOM_MT_MODEL={path.name}"
        )
        return 0
    print(models.format_table(models.installed_models(cache)))
    return 0


def run_bench(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    if args.name == "report":
        from benchmarks.report import run as run_report

        run_report(args.out or Path("results"), Path("RESULTS.md"))
        return 0
    args.out = args.out or Path("out/bench")
    if args.name == "stages":
        from benchmarks.stages import run as run_stages

        run_stages(args.out)
    elif args.name == "hops":
        from benchmarks.hops import run as run_hops

        run_hops(args.out)
    elif args.name == "scaling":
        from benchmarks.scaling import run as run_scaling

        run_scaling(args.out)
    elif args.name == "lipsync":
        from benchmarks.lipsync import run as run_lipsync

        run_lipsync(args.out)
    elif args.name == "latency":
        from benchmarks.latency import run as run_latency

        run_latency(args.out)
    elif args.name == "attack":
        from benchmarks.attack import run as run_attack

        run_attack(args.out)
    elif args.name == "join":
        from benchmarks.join import run as run_join

        run_join(args.out, args.runs)
    elif args.name == "soak":
        from benchmarks.soak import run as run_soak

        run_soak(args.out, args.minutes)
    elif args.name == "asr-context":
        from benchmarks.asr_context import run as run_asr_context

        run_asr_context(args.out)
    elif args.name == "real-speech":
        from benchmarks.real_speech import run as run_real_speech

        run_real_speech(args.out)
    elif args.name == "mt-quality":
        from benchmarks.mt_quality import run as run_mt_quality
        from workers.engines.common import DEFAULT_CACHE_DIR

        run_mt_quality(args.out, env.get("BABELROOM_MODEL_CACHE", DEFAULT_CACHE_DIR))
    elif args.name == "capacity":
        from benchmarks.capacity import run as run_capacity

        run_capacity(args.out, args.nodes)
    elif args.name == "media":
        from benchmarks.media import run as run_media

        run_media(args.out, [int(n) for n in args.participants.split(",")])
    else:
        from workers.engines.common import DEFAULT_CACHE_DIR

        args.models = args.models or Path(env.get("BABELROOM_MODEL_CACHE", DEFAULT_CACHE_DIR)).expanduser() / "random"
        with private_redis(env) as redis_url:
            run_service_bench(args, redis_url)
    return 0


def run_service_bench(args: argparse.Namespace, redis_url: str) -> None:
    """The benchmarks that run the real workers: pipeline and gpu."""
    from babelroom.supervisor import babelroom_argv
    from benchmarks import gpu, pipeline

    def worker_argv(kind: str) -> list[str]:
        return babelroom_argv("worker", kind)

    rooms = {"rooms": args.rooms} if args.rooms else {}
    if args.name == "gpu":
        gpu.run(args.out, redis_url, worker_argv, args.device, bench_models(args, gpu.TARGETS), args.tiny, **rooms)
    else:
        torch_engines = args.device == "cuda" or args.tiny
        models = bench_models(args, pipeline.GPU_TARGETS) if torch_engines else None
        pipeline.run(args.out, redis_url, worker_argv, args.device, models, tiny=args.tiny, **rooms)


def bench_models(args: argparse.Namespace, targets: tuple[str, ...]) -> ModelSet:
    """The user's models where given (--asr-model, --mt-model, --voice), random-weight ones otherwise."""
    from benchmarks.models import model_set

    voices = dict(parse_voice(v) for v in args.voice)
    return model_set(args.models, targets, args.tiny, args.asr_model, args.mt_model, voices)


def parse_voice(text: str) -> tuple[str, Path]:
    language, sep, path = text.partition("=")
    if not sep or not language or not path:
        raise SystemExit(f"babelroom bench: --voice {text!r}: expected LANG=DIR, e.g. es=/models/mms-tts-spa")
    return language, Path(path)


@contextlib.contextmanager
def private_redis(env: Mapping[str, str]) -> Iterator[str]:
    """REDIS_URL when set (the benchmark keeps to streams of its own), else a redis-server of its own."""
    if env.get("REDIS_URL"):
        yield env["REDIS_URL"]
        return
    from babelroom.supervisor import free_port, redis_argv, wait_for_redis

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="babelroom-bench-redis-") as workdir:
        server = subprocess.Popen(redis_argv(port, workdir), stdout=subprocess.DEVNULL)
        try:
            url = f"redis://127.0.0.1:{port}/0"
            wait_for_redis(url)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
