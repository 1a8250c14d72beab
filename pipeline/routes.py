"""Which stream each message goes to: the data path in one table.

    gateway --SpeechSegment--> asr --Transcript--> mt --Translation--> tts --SynthesizedSpeech--> results
                                        \\--> results (original caption)   \\--> results (translated caption)

The gateway reads `results` for captions and playout; a stage that drops late work says so there too.
"""

from __future__ import annotations

from pipeline.messages import (
    ControlEvent,
    Dropped,
    Message,
    SpeechSegment,
    StageFailure,
    SynthesizedSpeech,
    Transcript,
    Translation,
    VideoClip,
)

ASR, MT, TTS, LIPSYNC, RESULTS, DEAD = "asr", "mt", "tts", "lipsync", "results", "dead"
WORKER_KINDS = (ASR, MT, TTS)

ROUTES: dict[type[Message], tuple[str, ...]] = {
    SpeechSegment: (ASR,),
    Transcript: (MT, RESULTS),
    Translation: (TTS, RESULTS),
    SynthesizedSpeech: (RESULTS,),
    VideoClip: (RESULTS,),
    ControlEvent: (RESULTS,),
    StageFailure: (DEAD,),
    Dropped: (RESULTS,),
}


def destinations(message: Message) -> tuple[str, ...]:
    return ROUTES[type(message)]
