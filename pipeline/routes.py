"""Which stream each message goes to: the data path in one table.

    gateway --SpeechSegment--> asr --Transcript--> mt --Translation--> tts --SynthesizedSpeech--> results
                                        \\--> results (original caption)   \\--> results (translated caption)
    tts --SynthesizedSpeech (has_frames)--> lipsync --VideoClip--> results

The gateway reads `results` for captions, playout and lip-synced video; a stage that drops late work
says so there too. Speech goes to `results` at
once whether or not it is also lip-synced: audio never waits for video.

Results go home: a message names the media node whose room it serves (`Message.node`), and its results go to
that node's own stream, `results:NODE`, which only that node reads (a gateway outside a cluster, node "", reads
the one `results`). With G nodes, each result is read once, not G times.

While the floor holder speaks, interim work takes its own streams, so it never waits in front of a final:

    gateway --InterimRequest--> asr_interim --InterimTranscript--> mt_interim --InterimTranslation--> results
                                                    \\--> results (interim caption, original words)

A worker of a kind with an interim stream serves both, finals first (workers/base.py). The gateway's WarmUp
hints (the language pairs a room will need, sent as people join) go to `warm_up`, a stream with no group that
every mt worker follows: each worker starts the pairs, since any of them may get the room's first segment.
"""

from __future__ import annotations

import re

from pipeline.messages import (
    ControlEvent,
    Dropped,
    InterimRequest,
    InterimTranscript,
    InterimTranslation,
    Message,
    SpeechSegment,
    StageFailure,
    SynthesizedSpeech,
    Transcript,
    Translation,
    VideoClip,
    WarmUp,
)

ASR, MT, TTS, LIPSYNC, RESULTS, DEAD = "asr", "mt", "tts", "lipsync", "results", "dead"
ASR_INTERIM, MT_INTERIM = "asr_interim", "mt_interim"
WARM_UP = "warm_up"
SPEECH_KINDS = (ASR, MT, TTS)  # what a caption and translated speech need; lip-sync comes on top
WORKER_KINDS = (*SPEECH_KINDS, LIPSYNC)
INTERIM_STREAMS = {ASR: ASR_INTERIM, MT: MT_INTERIM}  # a worker kind's second, lower-priority stream
BROADCAST_STREAMS = {MT: WARM_UP}  # a worker kind's hints: every worker of the kind follows it (no group)
STAGE_STREAMS = (*WORKER_KINDS, *INTERIM_STREAMS.values())  # read by a stage's consumer group
# Every stream of fixed name; results, warm_up and dead have no group (tailed, kept for operators). A cluster's
# per-node results streams (results_stream) are trimmed by the nodes (gateway/rooms/placement.py).
STREAMS = (*STAGE_STREAMS, RESULTS, WARM_UP, DEAD)
NODE_ID_CHARS = re.compile(r"[A-Za-z0-9._-]{1,64}")

ROUTES: dict[type[Message], tuple[str, ...]] = {
    SpeechSegment: (ASR,),
    Transcript: (MT, RESULTS),
    Translation: (TTS, RESULTS),
    SynthesizedSpeech: (RESULTS,),
    VideoClip: (RESULTS,),
    ControlEvent: (RESULTS,),
    StageFailure: (DEAD,),
    InterimRequest: (ASR_INTERIM,),
    InterimTranscript: (MT_INTERIM, RESULTS),
    InterimTranslation: (RESULTS,),
    Dropped: (RESULTS,),
    WarmUp: (WARM_UP,),
}


def results_stream(node: str) -> str:
    """Where the results for `node`'s rooms go: its own stream, or `results` outside a cluster (node "")."""
    if not node:
        return RESULTS
    if not NODE_ID_CHARS.fullmatch(node):
        raise ValueError(f"{node[:80]!r} cannot name a node: use 1-64 letters, digits, '.', '_' or '-'")
    return f"{RESULTS}:{node}"


def destinations(message: Message) -> tuple[str, ...]:
    routes = tuple(results_stream(message.node) if r == RESULTS else r for r in ROUTES[type(message)])
    if isinstance(message, SynthesizedSpeech) and message.has_frames and message.pcm:
        return (*routes, LIPSYNC)
    return routes
