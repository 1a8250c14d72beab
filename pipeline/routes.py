"""Which stream each message goes to: the data path in one table.

    gateway --SpeechSegment--> asr --Transcript--> mt --Translation--> tts --SynthesizedSpeech--> results
                                        \\--> results (original caption)   \\--> results (translated caption)
    tts --SynthesizedSpeech (has_frames)--> lipsync --VideoClip--> results

The gateway reads `results` for captions, playout and lip-synced video. Speech goes to `results` at
once whether or not it is also lip-synced: audio never waits for video.
"""

from __future__ import annotations

from pipeline.messages import (
    ControlEvent,
    Message,
    SpeechSegment,
    StageFailure,
    SynthesizedSpeech,
    Transcript,
    Translation,
    VideoClip,
)

ASR, MT, TTS, LIPSYNC, RESULTS, DEAD = "asr", "mt", "tts", "lipsync", "results", "dead"
SPEECH_KINDS = (ASR, MT, TTS)  # what a caption and translated speech need; lip-sync comes on top
WORKER_KINDS = (*SPEECH_KINDS, LIPSYNC)

ROUTES: dict[type[Message], tuple[str, ...]] = {
    SpeechSegment: (ASR,),
    Transcript: (MT, RESULTS),
    Translation: (TTS, RESULTS),
    SynthesizedSpeech: (RESULTS,),
    VideoClip: (RESULTS,),
    ControlEvent: (RESULTS,),
    StageFailure: (DEAD,),
}


def destinations(message: Message) -> tuple[str, ...]:
    routes = ROUTES[type(message)]
    if isinstance(message, SynthesizedSpeech) and message.has_frames and message.pcm:
        return (*routes, LIPSYNC)
    return routes
