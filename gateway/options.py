"""Gateway options. Defaults are named constants; `from_env` is called only at entry points."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline.config import env_flag, env_float, env_int
from pipeline.interim import FINAL_REUSES_COMMITTED, InterimOptions
from pipeline.interim import INTERVAL_S as INTERIM_INTERVAL_S
from pipeline.routes import NODE_ID_CHARS as NODE_ID
from pipeline.segmenter import (
    DEFAULT_END_OF_TURN,
    END_OF_TURN_MODES,
    MAX_SEGMENT_S,
    EndOfTurn,
    SegmenterOptions,
    VadEngine,
)
from pipeline.turns import SILENCE_TIMEOUT_S, FloorOptions, OverlapPolicy

# Languages a participant may speak or hear unless the deployment says otherwise.
DEFAULT_LANGUAGES = ("en", "es", "ca", "gl", "pt", "fr", "de", "it")
# Translated speech starts this long after it is ready: enough to absorb jitter in the next segment's
# arrival, short enough to stay conversational. Every listener hears the same, predictable delay.
PLAYOUT_DELAY_S = 0.3
# Speech ready later than this after its words were spoken is shown as captions only (and counted):
# hearing it would talk over the conversation that has moved on.
LATE_BOUND_S = 15.0
# A segment held back because an earlier one of the same speaker is still in the pipeline waits at
# most this long for it before it plays anyway (the earlier one then becomes captions only).
REORDER_WAIT_S = 4.0
# Enough for a JSON body with SDP for a dozen media sections; anything bigger is not signaling.
CLIENT_MAX_SIZE = 64 * 1024
# Recent camera frames kept per consenting speaker for lip-sync: about 12 s at 15 fps, the longest
# segment (MAX_SEGMENT_S) with its pre-roll.
VIDEO_WINDOW_FRAMES = 180
MAX_NAME_CHARS = 64
MAX_PARTICIPANTS_PER_ROOM = 16
# A participant whose media never reaches Janus this long after joining is removed: a join that never
# connects must not hold a place in the room.
MEDIA_TIMEOUT_S = 30.0
# Where the gateway receives participants' audio from Janus: loopback, for a Janus on the same host.
RTP_BIND = "127.0.0.1"
# A participant whose sockets all closed (tab closed, network lost) is removed after this grace; a page
# that reconnects sooner keeps its place.
DISCONNECT_GRACE_S = 10.0
# Where the gateway serves HTTPS when given a certificate; plain HTTP stays on its own port (localhost).
HTTPS_PORT = 8443
# TURN credentials of a join without a token (open rooms) last this long; with a token, as long as it.
TURN_TTL_S = 4 * 3600


@dataclass(frozen=True)
class TlsOptions:
    """HTTPS: a certificate and its key (PEM files), served on their own port beside plain HTTP."""

    cert: str = ""
    key: str = ""
    port: int = HTTPS_PORT

    @property
    def enabled(self) -> bool:
        return bool(self.cert)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TlsOptions:
        cert, key = env.get("BABELROOM_TLS_CERT", ""), env.get("BABELROOM_TLS_KEY", "")
        if bool(cert) != bool(key):
            raise ValueError("set both BABELROOM_TLS_CERT and BABELROOM_TLS_KEY (certificate and key), or neither")
        return cls(cert, key, env_int(env, "BABELROOM_HTTPS_PORT", HTTPS_PORT))


@dataclass(frozen=True)
class TurnOptions:
    """A TURN server sharing `secret` with the gateway (coturn's use-auth-secret): each join gets its own
    short-lived credential for `urls` (see gateway/web/turn.py)."""

    urls: tuple[str, ...] = ()  # turn:/turns: URLs, e.g. turn:turn.example.org:3478?transport=udp
    secret: str = ""
    ttl_s: float = TURN_TTL_S

    @property
    def enabled(self) -> bool:
        return bool(self.urls)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TurnOptions:
        urls, secret = _csv(env.get("BABELROOM_TURN_URLS", "")), env.get("BABELROOM_TURN_SECRET", "")
        if urls and not secret:
            raise ValueError("BABELROOM_TURN_URLS needs BABELROOM_TURN_SECRET (coturn's static-auth-secret)")
        if not all(url.startswith(("turn:", "turns:")) for url in urls):
            raise ValueError(f"BABELROOM_TURN_URLS={','.join(urls)!r}: each URL starts with turn: or turns:")
        return cls(urls, secret, env_float(env, "BABELROOM_TURN_TTL_S", TURN_TTL_S))


# The echo guard (gateway/bridge/echo.py): a participant's segment is echo when what they were played, delayed by
# ECHO_MIN_LAG_S to ECHO_MAX_LAG_S and scaled, explains at least ECHO_SHARE of its energy. Echo measured
# 0.87-0.99 (Opus both ways, reverberation, 100-500 ms); own speech over the echo, at an equal level, 0.5-0.55.
ECHO_SHARE = 0.8
ECHO_MIN_LAG_S = 0.05
# Network, jitter buffer, output and input buffers and air make 50-800 ms; but on a loaded machine the
# gateway reads a participant's audio late: with a load average of 23-28 on 2 cores, Chromium's speech
# reached the gateway's segmenter 1.7-2.6 s after the page played it.
ECHO_MAX_LAG_S = 3.0


@dataclass(frozen=True)
class JanusOptions:
    """Where the SFU is, and the secrets only the gateway holds (see babelroom/janus.py)."""

    url: str = ""  # the Janus WebSocket API, e.g. ws://127.0.0.1:8188; `babelroom up` starts its own
    api_secret: str = ""
    admin_key: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> JanusOptions:
        return cls(
            url=env.get("BABELROOM_JANUS_URL", ""),
            api_secret=env.get("BABELROOM_JANUS_API_SECRET", ""),
            admin_key=env.get("BABELROOM_JANUS_ADMIN_KEY", ""),
        )


# A media node (gateway/rooms/placement.py) reports itself this often, and is dead once it has not for NODE_LIVE_S
# (LiveKit's bound): its rooms are placed again at their next join.
NODE_REPORT_S = 1.0
NODE_LIVE_S = 5.0
# A node takes no new room past this share of one core for its gateway process (one event loop: its limit).
NODE_MAX_LOAD = 0.85
# A draining node's rooms go on this long at most; then their pages are sent to rejoin on another node.
DRAIN_GRACE_S = 600.0


@dataclass(frozen=True)
class NodeOptions:
    """This gateway as a media node of a cluster sharing one Redis. `id` empty: not a node (the gateway reads the
    one `results` stream and places nothing: tests that build a gateway in-process)."""

    id: str = ""
    url: str = ""  # what browsers reach this node by, e.g. https://node-a.example.org:8443
    max_rooms: int = 0  # 0: no limit
    max_load: float = NODE_MAX_LOAD  # 0: no limit
    report_s: float = NODE_REPORT_S
    live_s: float = NODE_LIVE_S
    drain_grace_s: float = DRAIN_GRACE_S
    cluster_url: str = ""  # where pages rejoin after losing their node; empty: the address they were opened at

    def __post_init__(self) -> None:
        if self.id and not NODE_ID.fullmatch(self.id):
            raise ValueError(f"node id {self.id[:80]!r}: use 1-64 letters, digits, '.', '_' or '-'")
        if self.max_rooms < 0 or self.max_load < 0 or self.drain_grace_s < 0:
            raise ValueError("a node's room and load limits and its drain grace cannot be negative")
        if self.report_s <= 0 or self.live_s <= self.report_s:
            raise ValueError("a node reports more often than the time after which it counts as dead")
        for name, url in (("node URL", self.url), ("BABELROOM_CLUSTER_URL", self.cluster_url)):
            if url and not url.startswith(("http://", "https://")):
                raise ValueError(f"{name} {url!r}: expected an http:// or https:// URL")

    @classmethod
    def from_env(cls, env: Mapping[str, str], node_id: str = "", url: str = "") -> NodeOptions:
        return cls(
            id=node_id or env.get("BABELROOM_NODE_ID", ""),
            url=(url or env.get("BABELROOM_PUBLIC_URL", "")).rstrip("/"),
            max_rooms=env_int(env, "BABELROOM_NODE_MAX_ROOMS", 0),
            max_load=env_float(env, "BABELROOM_NODE_MAX_LOAD", NODE_MAX_LOAD),
            live_s=env_float(env, "BABELROOM_NODE_LIVE_S", NODE_LIVE_S),
            drain_grace_s=env_float(env, "BABELROOM_DRAIN_GRACE_S", DRAIN_GRACE_S),
            cluster_url=env.get("BABELROOM_CLUSTER_URL", "").rstrip("/"),
        )


@dataclass(frozen=True)
class EchoOptions:
    enabled: bool = True
    echo_share: float = ECHO_SHARE
    min_lag_s: float = ECHO_MIN_LAG_S
    max_lag_s: float = ECHO_MAX_LAG_S


@dataclass(frozen=True)
class GatewayOptions:
    token_secret: str = ""
    open_rooms: bool = False  # anyone may join any room without a token (local use: `babelroom up`)
    languages: tuple[str, ...] = DEFAULT_LANGUAGES
    ice_urls: tuple[str, ...] = ()  # stun: URLs; none by default, so nothing leaves the machine
    turn: TurnOptions = field(default_factory=TurnOptions)
    tls: TlsOptions = field(default_factory=TlsOptions)
    playout_delay_s: float = PLAYOUT_DELAY_S
    late_bound_s: float = LATE_BOUND_S
    reorder_wait_s: float = REORDER_WAIT_S
    client_max_size: int = CLIENT_MAX_SIZE
    video_window_frames: int = VIDEO_WINDOW_FRAMES
    max_participants: int = MAX_PARTICIPANTS_PER_ROOM
    media_timeout_s: float = MEDIA_TIMEOUT_S
    disconnect_grace_s: float = DISCONNECT_GRACE_S
    janus: JanusOptions = field(default_factory=JanusOptions)
    rtp_bind: str = RTP_BIND  # the UDP address Janus forwards participants' audio to (see gateway/media/rtp.py)
    rtp_port: int = 0  # 0: any free port
    rtp_host: str = ""  # the address Janus should send to, when it differs from rtp_bind (NAT, containers)
    floor: FloorOptions = field(default_factory=FloorOptions)
    segmenter: SegmenterOptions = field(default_factory=SegmenterOptions)
    interim: InterimOptions = field(default_factory=InterimOptions)
    echo: EchoOptions = field(default_factory=EchoOptions)
    node: NodeOptions = field(default_factory=NodeOptions)

    @property
    def tokens_required(self) -> bool:
        return not self.open_rooms

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GatewayOptions:
        languages = _csv(env.get("BABELROOM_LANGUAGES", "")) or DEFAULT_LANGUAGES
        return cls(
            token_secret=env.get("BABELROOM_TOKEN_SECRET", ""),
            open_rooms=env_flag(env, "BABELROOM_OPEN_ROOMS"),
            languages=languages,
            ice_urls=_ice_urls(env.get("BABELROOM_ICE_URLS", "")),
            turn=TurnOptions.from_env(env),
            tls=TlsOptions.from_env(env),
            playout_delay_s=env_float(env, "BABELROOM_PLAYOUT_DELAY_S", PLAYOUT_DELAY_S),
            late_bound_s=env_float(env, "BABELROOM_LATE_BOUND_S", LATE_BOUND_S),
            janus=JanusOptions.from_env(env),
            rtp_bind=env.get("BABELROOM_RTP_BIND", RTP_BIND),
            rtp_port=env_int(env, "BABELROOM_RTP_PORT", 0),
            rtp_host=env.get("BABELROOM_RTP_HOST", ""),
            floor=FloorOptions(
                silence_timeout_s=env_float(env, "BABELROOM_FLOOR_SILENCE_S", SILENCE_TIMEOUT_S),
                overlap=_overlap_policy(env.get("BABELROOM_OVERLAP", OverlapPolicy.QUEUE.value)),
            ),
            segmenter=SegmenterOptions(
                vad=_vad_engine(env.get("BABELROOM_VAD", "webrtc")),
                max_segment_s=env_float(env, "BABELROOM_MAX_SEGMENT_S", MAX_SEGMENT_S),
                end_of_turn=_end_of_turn(env.get("BABELROOM_END_OF_TURN", DEFAULT_END_OF_TURN)),
            ),
            interim=InterimOptions(
                interval_s=env_float(env, "BABELROOM_INTERIM_INTERVAL_S", INTERIM_INTERVAL_S),
                final_reuses_committed=env_flag(env, "BABELROOM_FINAL_REUSES_COMMITTED", FINAL_REUSES_COMMITTED),
            ),
            echo=EchoOptions(enabled=env_flag(env, "BABELROOM_ECHO_GUARD", True)),
            node=NodeOptions.from_env(env),
        )


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _ice_urls(value: str) -> tuple[str, ...]:
    urls = _csv(value)
    if any(url.startswith(("turn:", "turns:")) for url in urls):
        raise ValueError(
            "BABELROOM_ICE_URLS names a TURN server: give it as BABELROOM_TURN_URLS with BABELROOM_TURN_SECRET,"
            " so each browser gets a short-lived credential instead of a static password"
        )
    return urls


def _overlap_policy(value: str) -> OverlapPolicy:
    try:
        return OverlapPolicy(value.strip().lower())
    except ValueError:
        choices = ", ".join(p.value for p in OverlapPolicy)
        raise ValueError(f"BABELROOM_OVERLAP={value!r}: choose one of {choices}") from None


def _end_of_turn(value: str) -> EndOfTurn:
    mode = value.strip().lower()
    for known in END_OF_TURN_MODES:
        if mode == known:
            return known
    raise ValueError(f"BABELROOM_END_OF_TURN={value!r}: choose one of {', '.join(END_OF_TURN_MODES)}")


def _vad_engine(value: str) -> VadEngine:
    engines: dict[str, VadEngine] = {"webrtc": "webrtc", "silero": "silero"}
    try:
        return engines[value.strip().lower()]
    except KeyError:
        raise ValueError(f"BABELROOM_VAD={value!r}: choose one of webrtc, silero") from None
