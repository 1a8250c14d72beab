"""`babelroom bench attack --out DIR`: under attack, the room goes on (issue 28).

One room talks: the `bench latency` corpus, en->es (benchmarks/latency.py), an aiortc speaker and listener
through the real gateway, Janus and workers, with join tokens required. It talks twice: in quiet, then while
an attacker sends bad requests and frames as fast as the limits allow, at least `minimum` of them and for as
long as the room talks, from two connections:

- one from another client address (ATTACKER_ADDRESS), no token: joins with the worst bodies at the size limit
  (benchmarks/hostile.py) and with forged tokens, the worst Content-Type headers, room states and the room
  page with bad tokens, leaves and socket upgrades with wrong tickets. The limits per address answer most of
  them 429 (gateway/web/guard.py): each is sent as soon as the previous one is answered;
- one as a participant of another room (a valid token, its media up): the worst frames at each socket's
  limit on its events socket (64 KB) and its Janus socket (256 KB), each sent once the previous is answered.

Figures, for the quiet run and the attacked one: the final caption's latency after the end of speech (p50,
p95; the first interim caption and the translated speech's start too), and the gateway's event loop's worst
lag (its /healthz, polled every LAG_POLL_S: the worst of the last 10 s each time) with /healthz's own answer
time; for the attack: its items by kind, their answers and answer times, answers 5xx; and the lines of the
services' log that report an unexpected error. attack.json and attack.png.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from babelroom import netns
from benchmarks.hostile import worst_content_types, worst_json, worst_queries
from benchmarks.latency import (
    EN_ES,
    GAP_S,
    Heard,
    Utterance,
    converse,
    corpus,
    models_in_use,
    percentiles,
    summarize,
    wait_for_workers,
)

ATTACK_ITEMS = 1_000
# Another client address than the room's (any 127.0.0.0/8 address is this host's loopback).
ATTACKER_ADDRESS = "127.0.0.2"
LAG_POLL_S = 1.0
ANSWER_TIMEOUT_S = 30.0
ROOM_LANGUAGE, LISTENER_LANGUAGE = "en", "es"
# Lines of the services' log that say something went wrong that should not have.
UNEXPECTED = ("unexpected error", "Traceback", " ERROR ")
MEASURES = ("first_interim_after_onset_s", "final_caption_after_end_s", "speech_start_after_end_s")


@dataclass(frozen=True)
class Item:
    kind: str
    status: int  # the HTTP status; for a frame 200 once answered, 0 when the socket closed or never answered
    seconds: float


Move = tuple[str, Callable[[], Awaitable[int]]]


# -- the attacker -----------------------------------------------------------------------------------------
class Outsider:
    """Bad requests from ATTACKER_ADDRESS with no token: the limits per address meet them first."""

    def __init__(self, http: aiohttp.ClientSession, room: str, seat_id: str) -> None:
        self.http, self.room, self.seat_id = http, room, seat_id

    def moves(self) -> Iterator[Move]:
        join = f"/api/rooms/{self.room}/join"
        forged = _forged_token(self.room)
        valid = json.dumps({"name": "Mallory", "speak": "en", "hear": "es", "token": forged}).encode()
        moves: list[Move] = [
            (f"join, worst body: {label}", self._post(join, body)) for label, body in worst_json(64 * 1024)
        ]
        moves += [
            (f"join, Content-Type: {label}", self._post(join, valid, value)) for label, value in worst_content_types()
        ]
        moves += [
            (f"room state, token: {label}", self._get(f"/api/rooms/{self.room}?token={q}"))
            for label, q in worst_queries()
        ]
        session = f"/api/sessions/{self.seat_id}"
        moves += [
            ("join, forged token", self._post(join, valid)),
            ("room page, forged token", self._get(f"/room/{self.room}?token={forged}")),
            ("leave, wrong ticket", self._post(f"{session}/leave?ticket=guess", b"")),
            ("events socket, wrong ticket", self._get(f"{session}/events?ticket=guess", upgrade=True)),
        ]
        return itertools.cycle(moves)

    def _post(self, path: str, body: bytes, content_type: str = "application/json") -> Callable[[], Awaitable[int]]:
        async def send() -> int:
            async with self.http.post(path, data=body, headers={"Content-Type": content_type}) as reply:
                await reply.read()
                return reply.status

        return send

    def _get(self, path: str, upgrade: bool = False) -> Callable[[], Awaitable[int]]:
        headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="} if upgrade else {}  # fmt: skip

        async def send() -> int:
            async with self.http.get(path, headers=headers) as reply:
                await reply.read()
                return reply.status

        return send


class Insider:
    """A participant of another room (a valid token): the worst frames on its two sockets."""

    def __init__(self, http: aiohttp.ClientSession, seat: dict[str, Any]) -> None:
        self.http, self.seat = http, seat
        self.sockets: dict[str, aiohttp.ClientWebSocketResponse] = {}

    def moves(self) -> Iterator[Move]:
        from gateway.options import CLIENT_MAX_SIZE
        from gateway.web.proxy import MAX_FRAME_BYTES

        moves: list[Move] = []
        for socket, limit, refused in (("events", CLIENT_MAX_SIZE, ("type", "error")),
                                       ("janus", MAX_FRAME_BYTES, ("janus", "error"))):  # fmt: skip
            moves += [(f"{socket} frame: {label}", self._frame(socket, frame, refused))
                      for label, frame in worst_json(limit - 1)]  # fmt: skip
        return itertools.cycle(moves)

    async def socket(self, name: str) -> aiohttp.ClientWebSocketResponse:
        socket = self.sockets.get(name)
        if socket is None or socket.closed:
            url = f"{self.seat[name]}?ticket={self.seat['ticket']}"
            protocols = ("janus-protocol",) if name == "janus" else ()
            socket = self.sockets[name] = await self.http.ws_connect(url, protocols=protocols, max_msg_size=0)
        return socket

    def _frame(self, name: str, frame: bytes, refused: tuple[str, str]) -> Callable[[], Awaitable[int]]:
        text = frame.decode()

        async def send() -> int:
            socket = await self.socket(name)
            await socket.send_str(text)
            while (message := await socket.receive(timeout=ANSWER_TIMEOUT_S)).type is aiohttp.WSMsgType.TEXT:
                if json.loads(message.data).get(refused[0]) == refused[1]:
                    return 200
            return 0

        return send

    async def close(self) -> None:
        for socket in self.sockets.values():
            await socket.close()


async def keep_moving(moves: Iterator[Move], items: list[Item], done: Callable[[], bool]) -> None:
    """Each move as soon as the previous one is answered, until `done()`."""
    while not done():
        kind, send = next(moves)
        started = time.perf_counter()
        try:
            status = await asyncio.wait_for(send(), ANSWER_TIMEOUT_S)
        except (aiohttp.ClientError, TimeoutError, ConnectionError):
            status = 0
        items.append(Item(kind.split(":")[0], status, time.perf_counter() - started))


async def attack(base_url: str, room: str, seat: dict[str, Any], quiet: asyncio.Event, minimum: int) -> list[Item]:
    """Until the room has finished talking (`quiet`) and at least `minimum` items were sent."""
    items: list[Item] = []
    timeout = aiohttp.ClientTimeout(total=ANSWER_TIMEOUT_S)
    outside = aiohttp.TCPConnector(local_addr=(ATTACKER_ADDRESS, 0))
    async with (
        aiohttp.ClientSession(base_url=base_url, connector=outside, timeout=timeout) as outsider_http,
        aiohttp.ClientSession(base_url=base_url, timeout=timeout) as insider_http,
    ):
        insider = Insider(insider_http, seat)
        done = lambda: quiet.is_set() and len(items) >= minimum  # noqa: E731
        try:
            await asyncio.gather(
                keep_moving(Outsider(outsider_http, room, seat["id"]).moves(), items, done),
                keep_moving(insider.moves(), items, done),
            )
        finally:
            await insider.close()
    return items


def _forged_token(room: str) -> str:
    from gateway.web.tokens import issue_token

    return issue_token("a guessed secret", room, "Mallory")


# -- what the room sees ------------------------------------------------------------------------------------
@dataclass
class Responsiveness:
    lags: list[float]  # the gateway's worst event loop lag of the last 10 s, at each poll
    healthz_s: list[float]  # how long /healthz took to answer


async def watch(base_url: str, stop: asyncio.Event) -> Responsiveness:
    seen = Responsiveness([], [])
    async with aiohttp.ClientSession(base_url=base_url, timeout=aiohttp.ClientTimeout(total=10)) as http:
        while not stop.is_set():
            started = time.perf_counter()
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with http.get("/healthz") as reply:
                    body = await reply.json()
                seen.healthz_s.append(time.perf_counter() - started)
                seen.lags.append(float(body["loop_lag_s"]["recent_max"]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LAG_POLL_S)
    return seen


async def talk(
    base_url: str,
    room: str,
    utterances: Sequence[Utterance],
    gap_s: float,
    token_for: Callable[[str, str], str],
    attacked: dict[str, Any] | None,
    minimum: int,
) -> tuple[list[Heard], Responsiveness, list[Item], float]:
    """The room talks, attacked or not: what its listener saw, how the gateway answered, the attack's items and
    how long the attack lasted."""
    stop, quiet = asyncio.Event(), asyncio.Event()
    watching = asyncio.create_task(watch(base_url, stop))
    started = time.monotonic()
    attacking = asyncio.create_task(attack(base_url, room, attacked, quiet, minimum)) if attacked else None
    try:
        heard = await converse(base_url, room, utterances, gap_s, (LISTENER_LANGUAGE,), token_for)
    finally:
        quiet.set()
        items = await attacking if attacking else []
        attack_s = time.monotonic() - started
        stop.set()
    return heard, await watching, items, attack_s


async def both_runs(
    base_url: str, utterances: Sequence[Utterance], gap_s: float, secret: str, minimum: int
) -> dict[str, Any]:
    from benchmarks.latency import ScriptedSpeaker
    from benchmarks.participant import ScriptedParticipant
    from gateway.web.tokens import issue_token

    def token_for(room: str, name: str) -> str:
        return issue_token(secret, room, name)

    quiet = await talk(base_url, "attack-quiet", utterances, gap_s, token_for, None, 0)
    mallory = ScriptedParticipant(base_url, "elsewhere", "Mallory", "en", "en")
    duration = sum(u.duration_s for u in utterances) + gap_s * len(utterances) + 120
    await mallory.join(ScriptedSpeaker((), lead_s=duration).track(), token=token_for("elsewhere", "Mallory"))
    try:
        attacked = await talk(base_url, "attack-talks", utterances, gap_s, token_for, mallory.session, minimum)
    finally:
        await mallory.close()
    return {"quiet": figures(*quiet), "attacked": figures(*attacked)}


def figures(heard: list[Heard], seen: Responsiveness, items: list[Item], attack_s: float) -> dict[str, Any]:
    summary = summarize(heard)
    out: dict[str, Any] = {m: summary[m] for m in MEASURES}
    out["missed_final_captions"] = summary["missed_final_captions"]
    out["loop_lag_worst_s"] = round(max(seen.lags, default=0.0), 4)
    out["loop_lag_polls"] = len(seen.lags)
    out["healthz_answer_s"] = {**percentiles(seen.healthz_s), "max": round(max(seen.healthz_s, default=0.0), 3)}
    if items:
        out["attack"] = {
            "items": len(items),
            "seconds": round(attack_s, 1),
            "per_second": round(len(items) / attack_s, 1),
            "statuses": dict(sorted(collections.Counter(item.status for item in items).items())),
            "server_errors": sum(item.status >= 500 for item in items),
            "unanswered": sum(item.status == 0 for item in items),
            "answer_s": answer_times([item.seconds for item in items]),
            "by_kind": by_kind(items),
        }
    return out


def answer_times(seconds: Sequence[float]) -> dict[str, Any]:
    return {**percentiles(seconds), "max": round(max(seconds, default=0.0), 4)}


def by_kind(items: list[Item]) -> dict[str, Any]:
    kinds: dict[str, list[Item]] = collections.defaultdict(list)
    for item in items:
        kinds[item.kind].append(item)
    return {
        kind: {"items": len(group), "statuses": dict(sorted(collections.Counter(i.status for i in group).items())),
               "answer_s": answer_times([i.seconds for i in group])}
        for kind, group in sorted(kinds.items())
    }  # fmt: skip


def unexpected_lines(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if any(u in line for u in UNEXPECTED)]


# -- the run ---------------------------------------------------------------------------------------------
def run(
    out_dir: Path, utterances: Sequence[Utterance] | None = None, gap_s: float = GAP_S, minimum: int = ATTACK_ITEMS
) -> dict[str, Any]:
    """Talk in quiet, then under attack, through the real service; write attack.json and attack.png."""
    from benchmarks.media import media_plane
    from benchmarks.provenance import provenance, save
    from pipeline.routes import SPEECH_KINDS

    if not netns.inside():
        netns.enter()
    chosen = list(utterances) if utterances is not None else corpus(en_es=EN_ES, es_en=())
    secret = secrets.token_urlsafe(24)
    workdir = out_dir / "attack-run"
    workdir.mkdir(parents=True, exist_ok=True)
    settings = {"BABELROOM_OPEN_ROOMS": "0", "BABELROOM_TOKEN_SECRET": secret}
    with media_plane(workdir, SPEECH_KINDS, settings) as (base_url, _, _, _):
        wait_for_workers(base_url, SPEECH_KINDS)
        runs = asyncio.run(both_runs(base_url, chosen, gap_s, secret, minimum))
        unexpected = unexpected_lines(workdir / "services.log")  # before the services stop
    quiet, attacked = runs["quiet"], runs["attacked"]
    result = {
        "benchmark": "attack",
        **provenance(models_in_use(os.environ)),
        "participants": "aiortc speaker and listener through Janus and the gateway, tokens required",
        "utterances": len(chosen),
        "attack_items": attacked["attack"]["items"],
        "attack_server_errors": attacked["attack"]["server_errors"],
        "unexpected_errors_in_log": len(unexpected),
        "final_caption_p50_quiet_s": quiet["final_caption_after_end_s"]["p50"],
        "final_caption_p50_attacked_s": attacked["final_caption_after_end_s"]["p50"],
        "final_caption_p95_quiet_s": quiet["final_caption_after_end_s"]["p95"],
        "final_caption_p95_attacked_s": attacked["final_caption_after_end_s"]["p95"],
        "loop_lag_worst_quiet_s": quiet["loop_lag_worst_s"],
        "loop_lag_worst_attacked_s": attacked["loop_lag_worst_s"],
        "quiet": quiet,
        "attacked": attacked,
        "unexpected_log_lines": unexpected[:20],
    }
    save(result, out_dir, "attack", plot)
    print(json.dumps({k: v for k, v in result.items() if k not in ("quiet", "attacked")}, indent=2), flush=True)
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    """Left: each latency measure's p50 and p95, quiet and attacked. Right: the gateway's worst event loop lag
    and /healthz's slowest answer in each run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    labels = ("first interim\nafter onset", "final caption\nafter end", "speech start\nafter end")
    x = np.arange(len(MEASURES))
    bars = [("quiet", "p50"), ("quiet", "p95"), ("attacked", "p50"), ("attacked", "p95")]
    for i, (run_name, key) in enumerate(bars):
        values = [result[run_name][m][key] or 0.0 for m in MEASURES]
        left.bar(x + (i - 1.5) * 0.2, values, width=0.2, label=f"{run_name} {key}")
    left.set_xticks(x, labels)
    left.set_ylabel("seconds")
    attack = result["attacked"]["attack"]
    left.set_title(f"{result['utterances']} utterances; {attack['items']} attack items in {attack['seconds']} s")
    left.legend(fontsize=8)
    runs = ("quiet", "attacked")
    lag = [result[name]["loop_lag_worst_s"] * 1000 for name in runs]
    healthz = [result[name]["healthz_answer_s"]["max"] * 1000 for name in runs]
    right.bar(np.arange(2) - 0.2, lag, width=0.4, label="worst loop lag")
    right.bar(np.arange(2) + 0.2, healthz, width=0.4, label="slowest /healthz")
    right.set_xticks(np.arange(2), runs)
    right.set_ylabel("milliseconds")
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
