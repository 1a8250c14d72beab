"""Gateway options. Defaults are named constants; `from_env` is called only at entry points."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline.config import env_flag, env_float
from pipeline.segmenter import MAX_SEGMENT_S, SegmenterOptions, VadEngine
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
# Recent decoded video frames kept per participant for lip-sync (about 2 s at 15 fps).
VIDEO_WINDOW_FRAMES = 30
# Gain applied to the original voice when a listener asks to hear it quietly under the translation.
ORIGINAL_UNDER_GAIN = 0.2
MAX_NAME_CHARS = 64
MAX_PARTICIPANTS_PER_ROOM = 16


@dataclass(frozen=True)
class GatewayOptions:
    token_secret: str = ""
    open_rooms: bool = False  # anyone may join any room without a token (local use: `babelroom up`)
    languages: tuple[str, ...] = DEFAULT_LANGUAGES
    ice_urls: tuple[str, ...] = ()  # stun:/turn: URLs; none by default, so nothing leaves the machine
    ice_username: str = ""
    ice_credential: str = ""
    playout_delay_s: float = PLAYOUT_DELAY_S
    late_bound_s: float = LATE_BOUND_S
    reorder_wait_s: float = REORDER_WAIT_S
    client_max_size: int = CLIENT_MAX_SIZE
    video_window_frames: int = VIDEO_WINDOW_FRAMES
    original_under_gain: float = ORIGINAL_UNDER_GAIN
    max_participants: int = MAX_PARTICIPANTS_PER_ROOM
    floor: FloorOptions = field(default_factory=FloorOptions)
    segmenter: SegmenterOptions = field(default_factory=SegmenterOptions)

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
            ice_urls=_csv(env.get("BABELROOM_ICE_URLS", "")),
            ice_username=env.get("BABELROOM_ICE_USERNAME", ""),
            ice_credential=env.get("BABELROOM_ICE_CREDENTIAL", ""),
            playout_delay_s=env_float(env, "BABELROOM_PLAYOUT_DELAY_S", PLAYOUT_DELAY_S),
            late_bound_s=env_float(env, "BABELROOM_LATE_BOUND_S", LATE_BOUND_S),
            floor=FloorOptions(
                silence_timeout_s=env_float(env, "BABELROOM_FLOOR_SILENCE_S", SILENCE_TIMEOUT_S),
                overlap=_overlap_policy(env.get("BABELROOM_OVERLAP", OverlapPolicy.QUEUE.value)),
            ),
            segmenter=SegmenterOptions(
                vad=_vad_engine(env.get("BABELROOM_VAD", "webrtc")),
                max_segment_s=env_float(env, "BABELROOM_MAX_SEGMENT_S", MAX_SEGMENT_S),
            ),
        )


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _overlap_policy(value: str) -> OverlapPolicy:
    try:
        return OverlapPolicy(value.strip().lower())
    except ValueError:
        choices = ", ".join(p.value for p in OverlapPolicy)
        raise ValueError(f"BABELROOM_OVERLAP={value!r}: choose one of {choices}") from None


def _vad_engine(value: str) -> VadEngine:
    engines: dict[str, VadEngine] = {"webrtc": "webrtc", "silero": "silero"}
    try:
        return engines[value.strip().lower()]
    except KeyError:
        raise ValueError(f"BABELROOM_VAD={value!r}: choose one of webrtc, silero") from None
