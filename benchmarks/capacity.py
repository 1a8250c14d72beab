"""`babelroom bench capacity --out DIR`: how many talking rooms a media node holds here, and what a room costs.

Real processes in a network namespace of its own (babelroom/netns.py): a private Redis, one worker of each speech
kind (asr, mt, tts), and one media node (`babelroom node`: a gateway and its own Janus); then two nodes on the same
machine, sharing the Redis and the workers. Talking rooms are added one step at a time. In a step every room talks at
once: its aiortc speaker says STEP_UTTERANCES utterances of the `bench latency` corpus (rooms alternate en->es and
es->en and start at different places in it, a little apart) while an aiortc listener in the other language hears
them (benchmarks/latency.py `converse`; rooms are opened through the first node, whose placement spreads them). A
step holds while the final captions' p95 after the end of speech is within P95_TARGET_S and none is missed; the
ramp ends at the first step that does not hold.

Each step records each process's CPU (cores, from /proc) and, less an idle baseline measured first, per talking
room; how busy the whole machine was (other work shares its cores: the load average is recorded too); Redis's
incoming bytes and XADD entries per second per room; the stages' mean queue waits and work (the final messages'
stamps). `first_limit` names what gave out at the first step that did not hold. capacity.json and capacity.png;
`babelroom bench report` makes its RESULTS.md section, and docs/benchmarks.md builds a capacity model on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from babelroom import netns
from benchmarks.latency import (
    Heard,
    Utterance,
    converse,
    corpus,
    models_in_use,
    results_stamps,
    summarize,
    wait_for_workers,
    with_stamps,
)

P95_TARGET_S = 1.8  # final caption after the end of speech, p95 (issue 10's target)
STEP_UTTERANCES = 5
STEP_GAP_S = 3.0  # silence after each utterance
STAGGER_S = 1.7  # between the starts of the rooms of a step: speakers do not speak in unison
MAX_ROOMS = 16
IDLE_S = 10.0  # the idle baseline's window
NODE_IDS = ("cap-a", "cap-b")
RTP_PORTS = ("20000-20999", "21000-21999")
SPEECH_KINDS = ("asr", "mt", "tts")
KEEP_RESULTS_S = 3_600  # the run reads every final's stamps back at its end
USER_HZ = os.sysconf("SC_CLK_TCK")
MACHINE_BUSY = 0.8  # past this share of every core busy, the machine is the limit (runnable work waits for a core)
ONE_CORE_BUSY = 0.85  # a one-threaded process (the gateway's event loop, an mt or tts worker) this busy is at its limit


@dataclass(frozen=True)
class Usage:
    """Counters at one moment: CPU seconds per process, the machine's busy and total jiffies, Redis's counters."""

    at: float
    cpu_s: dict[str, float]
    machine: tuple[int, int]
    redis_bytes: int
    redis_xadds: int


@dataclass(frozen=True)
class Step:
    rooms: int
    holds: bool
    final_p50_s: float | None
    final_p95_s: float | None
    missed: int
    utterances: int
    seconds: float
    cores: dict[str, float]  # CPU per process over the step
    cores_per_room: dict[str, float]  # less the idle baseline, per talking room
    machine_busy: float  # share of all the machine's cores
    load_average: float
    redis_bytes_per_s_per_room: float
    redis_entries_per_s_per_room: float
    stage_mean_s: dict[str, float]


# -- the processes ------------------------------------------------------------------------------------------------
@dataclass
class Services:
    base_url: str  # the first node's: every room is opened through it
    redis_url: str
    pids: dict[str, int]  # what is measured, by name: redis, worker-asr, ..., gateway-cap-a, janus-cap-a, ...
    nodes: tuple[str, ...]


@contextlib.contextmanager
def services(workdir: Path, nodes: int) -> Iterator[Services]:
    """Redis, one worker per speech kind, and `nodes` media nodes, all on this machine."""
    from babelroom.supervisor import free_port, redis_argv, stop_processes, wait_for_redis

    procs: list[subprocess.Popen[bytes]] = []
    log = open(workdir / f"services-{nodes}.log", "wb")  # noqa: SIM115 - closed below
    try:
        port = free_port()
        procs.append(subprocess.Popen(redis_argv(port, str(workdir)), stdout=subprocess.DEVNULL))
        redis_url = f"redis://127.0.0.1:{port}/0"
        wait_for_redis(redis_url)
        env = {**os.environ, "REDIS_URL": redis_url, "BABELROOM_OPEN_ROOMS": "1", "BABELROOM_NODE_MAX_LOAD": "0",
               "BABELROOM_RETENTION_S": str(KEEP_RESULTS_S), "BABELROOM_JANUS_ICE_INTERFACES": netns.TEST_INTERFACE,
               "TMPDIR": str(workdir)}  # fmt: skip
        pids = {"redis": procs[0].pid}
        for kind in SPEECH_KINDS:
            procs.append(subprocess.Popen(_cli("worker", kind), env=env, stdout=log, stderr=subprocess.STDOUT))
            pids[f"worker-{kind}"] = procs[-1].pid
        urls = []
        for node_id, rtp_ports in zip(NODE_IDS[:nodes], RTP_PORTS, strict=False):
            node_port = free_port()
            argv = _cli("node", "--port", str(node_port), "--public-host", netns.TEST_ADDRESS, "--node-id", node_id)
            node_env = {**env, "BABELROOM_JANUS_RTP_PORTS": rtp_ports}
            procs.append(subprocess.Popen(argv, env=node_env, stdout=log, stderr=subprocess.STDOUT))
            urls.append(f"http://{netns.TEST_ADDRESS}:{node_port}")
        for url in urls:
            wait_for_workers(url, SPEECH_KINDS)
        for node_id, supervisor in zip(NODE_IDS, procs[1 + len(SPEECH_KINDS) :], strict=False):
            pids |= {f"{name}-{node_id}": pid for name, pid in node_processes(supervisor.pid).items()}
        yield Services(urls[0], redis_url, pids, NODE_IDS[:nodes])
    finally:
        stop_processes(procs[::-1], 60.0)
        log.close()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "babelroom.cli", *args]


def node_processes(supervisor: int) -> dict[str, int]:
    """A node's gateway and Janus, children of its supervisor."""
    from benchmarks.soak import service_processes

    return {("janus" if name == "janus" else "gateway"): pid for name, pid in service_processes(supervisor).items()}


# -- measuring ----------------------------------------------------------------------------------------------------
def usage(services: Services) -> Usage:
    children = child_table()
    cpu_s = {name: tree_cpu_seconds(pid, children) for name, pid in services.pids.items()}
    cpu_s["bench (the aiortc participants)"] = cpu_seconds(os.getpid())
    client = redis.Redis.from_url(services.redis_url)
    stats, commands = client.info("stats"), client.info("commandstats")
    xadds = int(commands.get("cmdstat_xadd", {}).get("calls", 0))
    return Usage(time.monotonic(), cpu_s, machine_jiffies(), int(stats["total_net_input_bytes"]), xadds)


def cpu_seconds(pid: int) -> float:
    """A process's own CPU time, and its reaped children's."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # gone meanwhile
    return sum(int(f) for f in fields[11:15]) / USER_HZ  # utime, stime, cutime, cstime


def child_table() -> dict[int, list[int]]:
    """Every live process's children, by parent."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    return children


def tree_cpu_seconds(pid: int, children: dict[int, list[int]]) -> float:
    """A process's CPU time and its descendants' (an mt worker's Apertium pipelines run as processes of their own)."""
    return cpu_seconds(pid) + sum(tree_cpu_seconds(child, children) for child in children.get(pid, ()))


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of every core since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values) - idle, sum(values)


def rates(before: Usage, after: Usage) -> tuple[dict[str, float], float, float, float]:
    """Cores per process, the machine's busy share, Redis bytes and entries per second, between two usages."""
    seconds = after.at - before.at
    cores = {name: round((after.cpu_s[name] - before.cpu_s[name]) / seconds, 3) for name in after.cpu_s}
    busy = (after.machine[0] - before.machine[0]) / max(1, after.machine[1] - before.machine[1])
    return (
        cores,
        round(busy, 3),
        (after.redis_bytes - before.redis_bytes) / seconds,
        (after.redis_xadds - before.redis_xadds) / seconds,
    )


# -- the ramp -----------------------------------------------------------------------------------------------------
def step_utterances(utterances: Sequence[Utterance], step: int, room: int) -> list[Utterance]:
    """Room `room`'s lines in step `step`: one direction per room (alternating), from its own place in the corpus."""
    directions = sorted({u.language for u in utterances})
    mine = [u for u in utterances if u.language == directions[room % len(directions)]]
    start = (step * STEP_UTTERANCES + room * 3) % len(mine)
    return [mine[(start + i) % len(mine)] for i in range(STEP_UTTERANCES)]


async def talk(base_url: str, rooms: int, step: int, utterances: Sequence[Utterance], label: str) -> list[Heard]:
    async def room(index: int) -> list[Heard]:
        await asyncio.sleep(index * STAGGER_S)
        lines = step_utterances(utterances, step, index)
        return await converse(base_url, f"{label}-{step}-{index}", lines, STEP_GAP_S, (lines[0].target,))

    heard = await asyncio.gather(*(room(i) for i in range(rooms)))
    return [h for room_heard in heard for h in room_heard]


def measure_step(services: Services, rooms: int, step: int, utterances: Sequence[Utterance], idle: dict[str, float],
                 label: str) -> tuple[Step, list[Heard]]:  # fmt: skip
    before = usage(services)
    heard = asyncio.run(talk(services.base_url, rooms, step, utterances, label))
    after = usage(services)
    cores, busy, bytes_per_s, entries_per_s = rates(before, after)
    figures = summarize(heard)
    final = figures["final_caption_after_end_s"]
    holds = final["p95"] is not None and final["p95"] <= P95_TARGET_S and figures["missed_final_captions"] == 0
    per_room = {name: round(max(0.0, cores[name] - idle.get(name, 0.0)) / rooms, 3) for name in cores}
    step_figures = Step(
        rooms=rooms, holds=holds, final_p50_s=final["p50"], final_p95_s=final["p95"],
        missed=figures["missed_final_captions"], utterances=len(heard), seconds=round(after.at - before.at, 1),
        cores=cores, cores_per_room=per_room, machine_busy=busy, load_average=round(os.getloadavg()[0], 2),
        redis_bytes_per_s_per_room=round(max(0.0, bytes_per_s - idle["redis bytes/s"]) / rooms),
        redis_entries_per_s_per_room=round(max(0.0, entries_per_s - idle["redis entries/s"]) / rooms, 2),
        stage_mean_s={},
    )  # fmt: skip
    print(json.dumps({k: v for k, v in asdict(step_figures).items() if k != "stage_mean_s"}), flush=True)
    return step_figures, heard


def idle_baseline(services: Services) -> dict[str, float]:
    before = usage(services)
    time.sleep(IDLE_S)
    cores, _, bytes_per_s, entries_per_s = rates(before, usage(services))
    return {**cores, "redis bytes/s": bytes_per_s, "redis entries/s": entries_per_s}


def ramp(workdir: Path, nodes: int, utterances: Sequence[Utterance], max_rooms: int) -> dict[str, Any]:
    """Steps of 1, 2, ... talking rooms until one does not hold (or max_rooms held)."""
    label = f"cap{nodes}n"
    steps: list[Step] = []
    heard_by_step: list[list[Heard]] = []
    with services(workdir, nodes) as running:
        idle = idle_baseline(running)
        for rooms in range(1, max_rooms + 1):
            step, heard = measure_step(running, rooms, len(steps), utterances, idle, label)
            steps.append(step)
            heard_by_step.append(heard)
            if not step.holds:
                break
        streams = [f"results:{node}" for node in running.nodes]
        stamps = asyncio.run(results_stamps(running.redis_url, streams))
    steps = [
        Step(**{**asdict(s), "stage_mean_s": summarize([with_stamps(h, stamps) for h in heard])["stage_mean_s"]})
        for s, heard in zip(steps, heard_by_step, strict=True)
    ]
    held = [s for s in steps if s.holds]
    return {
        "nodes": nodes,
        "rooms_held": held[-1].rooms if held else 0,
        "idle_cores": {k: v for k, v in idle.items() if not k.startswith("redis")},
        "first_limit": first_limit(steps, idle),
        "steps": [asdict(s) for s in steps],
    }


def first_limit(steps: Sequence[Step], idle: dict[str, float]) -> str:
    """What gave out first, at the first step that did not hold: the machine's cores (busy past MACHINE_BUSY), or one
    process's core (a single event loop or engine thread); and the part of a final's way that grew the most since the
    last step that held (a stage's queue: its workers fell behind; its work: it got less CPU)."""
    failed = next((s for s in steps if not s.holds), None)
    if failed is None:
        return f"nothing: every step up to {steps[-1].rooms} rooms held" if steps else "no step ran"
    service = {k: v for k, v in failed.cores.items() if not k.startswith("bench")}
    busiest = max(service, key=service.__getitem__)
    before = ([s for s in steps if s.holds] or [failed])[-1].stage_mean_s
    grown = {k: v - before.get(k, 0.0) for k, v in failed.stage_mean_s.items()}
    span = max(grown, key=grown.__getitem__) if grown else ""
    slowed = f"; of a final's way, {span} grew the most (+{grown[span]:.2f} s)" if span and grown[span] > 0 else ""
    cores = os.cpu_count() or 1
    if failed.machine_busy >= MACHINE_BUSY:
        return (f"the machine's {cores} cores ({failed.machine_busy:.0%} busy at {failed.rooms} rooms, other work "
                f"included; of the service, {busiest} took the most, {service[busiest]} cores){slowed}")  # fmt: skip
    single = {k: v for k, v in service.items() if v >= ONE_CORE_BUSY and not k.startswith(("janus", "worker-asr"))}
    if single:
        name = max(single, key=single.__getitem__)
        return f"{name}: {single[name]} of its one core at {failed.rooms} rooms{slowed}"
    most = f"{busiest}: {service[busiest]} cores, the machine {failed.machine_busy:.0%} busy"
    return f"no process at its limit ({most}){slowed}"


# -- the run ------------------------------------------------------------------------------------------------------
def run(out_dir: Path, node_counts: Sequence[int] = (1, 2), max_rooms: int = MAX_ROOMS) -> dict[str, Any]:
    """Ramp each of `node_counts`, and write capacity.json and capacity.png (a run of some counts keeps the others'
    figures from an earlier capacity.json)."""
    from benchmarks.provenance import provenance, save

    if not netns.inside():
        netns.enter()
    workdir = out_dir / "capacity-run"
    workdir.mkdir(parents=True, exist_ok=True)
    utterances = corpus()
    earlier = out_dir / "capacity.json"
    configs = {c["nodes"]: c for c in json.loads(earlier.read_text())["configs"]} if earlier.exists() else {}
    for config in configs.values():  # judged again by this build's rule
        config["first_limit"] = first_limit([Step(**s) for s in config["steps"]], config["idle_cores"])
    for nodes in node_counts:
        configs[nodes] = {**ramp(workdir, nodes, utterances, max_rooms), **provenance(models_in_use(os.environ))}
    result = {
        "benchmark": "capacity",
        **provenance(models_in_use(os.environ)),
        "target_final_p95_s": P95_TARGET_S,
        "step_utterances": STEP_UTTERANCES,
        "participants": "per room an aiortc speaker and an aiortc listener in the other language (in the benchmark's"
        " own process, on the same cores)",
        "configs": [configs[n] for n in sorted(configs)],
    }
    save(result, out_dir, "capacity", plot)
    print(json.dumps({n: (c["rooms_held"], c["first_limit"]) for n, c in configs.items()}, indent=2), flush=True)
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    """The final captions' p95 against talking rooms per configuration; each process's CPU per talking room."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    for config in result["configs"]:
        steps = config["steps"]
        label = f"{config['nodes']} node(s): {config['rooms_held']} rooms held"
        left.plot([s["rooms"] for s in steps], [s["final_p95_s"] or 0 for s in steps], marker="o", label=label)
    left.axhline(result["target_final_p95_s"], color="black", linestyle="dashed", label="p95 target")
    left.set_xlabel("talking rooms")
    left.set_ylabel("final caption after end of speech, p95 (s)")
    left.legend()
    config = result["configs"][0]
    held = [s for s in config["steps"] if s["holds"]] or config["steps"]
    per_room = {k: v for k, v in held[-1]["cores_per_room"].items() if v > 0}
    right.barh(list(per_room), list(per_room.values()))
    right.set_xlabel(f"cores per talking room ({config['nodes']} node, {held[-1]['rooms']} rooms, less idle)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
