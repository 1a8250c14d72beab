"""Which stream each message goes to: the data path in one table.

    gateway --SpeechSegment--> asr --Transcript--> mt --Translation--> tts --SynthesizedSpeech--> results
                                        \\--> results (original caption)   \\--> results (translated caption)
    tts --SynthesizedSpeech (has_frames)--> lipsync --VideoClip--> results

The gateway reads `results` for captions, playout and lip-synced video; a stage that drops late work
says so there too. Speech goes to `results` at
once whether or not it is also lip-synced: audio never waits for video.

While the floor holder speaks, interim work takes its own streams, so it never waits in front of a final:

    gateway --InterimRequest--> asr_interim --InterimTranscript--> mt_interim --InterimTranslation--> results
                                                    \\--> results (interim caption, original words)

A worker of a kind with an interim stream serves both, finals first (workers/base.py). The gateway's WarmUp
hints (the language pairs a room will need, sent as people join) take the interim stream too: disposable,
never in front of a final.
"""

from __future__ import annotations

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
SPEECH_KINDS = (ASR, MT, TTS)  # what a caption and translated speech need; lip-sync comes on top
WORKER_KINDS = (*SPEECH_KINDS, LIPSYNC)
INTERIM_STREAMS = {ASR: ASR_INTERIM, MT: MT_INTERIM}  # a worker kind's second, lower-priority stream
STAGE_STREAMS = (*WORKER_KINDS, *INTERIM_STREAMS.values())  # read by a stage's consumer group
STREAMS = (*STAGE_STREAMS, RESULTS, DEAD)  # every stream; results and dead have no group (tailed, kept for operators)

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
    WarmUp: (MT_INTERIM,),
}


def destinations(message: Message) -> tuple[str, ...]:
    routes = ROUTES[type(message)]
    if isinstance(message, SynthesizedSpeech) and message.has_frames and message.pcm:
        return (*routes, LIPSYNC)
    return routes
