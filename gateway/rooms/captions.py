"""Results from the workers, dispatched to the room: captions to each listener in their language
(original text alongside), translated speech onto the language's playout timeline. Interim results
become interim captions (`final: False`) when the speaker's InterimTracker still wants them; the final
caption of the same segment replaces them on the page."""

from __future__ import annotations

import logging
import time
from typing import Any

from gateway.media.playout import Clip
from gateway.rooms.room import Room
from pipeline.interim import interim_caption
from pipeline.messages import (
    Dropped,
    InterimTranscript,
    InterimTranslation,
    Message,
    SynthesizedSpeech,
    Transcript,
    Translation,
)

log = logging.getLogger(__name__)


def caption_id(message: Message) -> str:
    return f"{message.speaker}:{message.seq}"


def caption(
    room: Room, message: Message, *, lang: str, text: str, original: str, source_lang: str, final: bool, note: str = ""
) -> dict[str, Any]:
    return {
        "type": "caption",
        "id": caption_id(message),
        "speaker_id": message.speaker,
        "speaker": room.names.get(message.speaker, message.speaker),
        "seq": message.seq,
        "lang": lang,
        "text": text,
        "original": original,
        "source_lang": source_lang,
        "final": final,
        "note": note,
        "captured_at": message.stamp("captured"),
    }


def on_transcript(room: Room, message: Transcript) -> None:
    """The original words: final for the speaker and same-language listeners; for the others an interim
    caption (original text, translation pending) when a translation into their language is on its way."""
    if not message.text.strip():  # nothing was said: no caption, and no speech will follow
        for language in message.targets:
            room.timeline(language).forget(message.speaker, message.seq)
        # its interim captions, if any were shown, go: no final will replace them
        room.broadcast({"type": "retract", "id": caption_id(message)})
        return
    for listener in list(room.participants.values()):
        hear = listener.profile.hear
        pending = hear in message.targets and listener.id != message.speaker
        listener.send(
            caption(
                room,
                message,
                lang=hear if pending else message.language,
                text="" if pending else message.text,
                original=message.text,
                source_lang=message.language,
                final=not pending,
            )
        )


def on_translation(room: Room, message: Translation) -> None:
    if not message.text.strip():
        room.timeline(message.language).forget(message.speaker, message.seq)
        return
    for listener in room.listeners_for(message.language, except_id=message.speaker):
        listener.send(
            caption(
                room,
                message,
                lang=message.language,
                text=message.text,
                original=message.source_text,
                source_lang=message.source_language,
                final=True,
                note=message.note,
            )
        )


def on_interim(room: Room, message: InterimTranscript | InterimTranslation) -> None:
    """An interim transcript to the speaker and the listeners of the spoken language, an interim translation
    to the listeners of its language; stale ones (a newer revision shown, or the segment closed) to nobody."""
    speaker = room.participants.get(message.speaker)
    if speaker is None or not speaker.interim.accept(message) or not message.text.strip():
        return
    payload = interim_caption(message, room.names.get(message.speaker, message.speaker))
    if isinstance(message, InterimTranscript):
        speaker.send(payload)
    for listener in room.listeners_for(message.language, except_id=message.speaker):
        listener.send(payload)


def on_speech(room: Room, message: SynthesizedSpeech, now: float | None = None) -> str:
    """Place translated speech on its language's timeline; returns the timeline's verdict."""
    now = time.time() if now is None else now
    timeline = room.timeline(message.language)
    if not message.pcm:
        timeline.forget(message.speaker, message.seq)
        return "empty"
    clip = Clip.from_pcm16(
        message.speaker, message.seq, message.pcm, message.sample_rate, message.stamp("captured"), now
    )
    outcome, _ = timeline.offer(clip, now)
    log.info("%s %s: %s; %s", message.log_context, message.language, outcome, stage_times(message, now))
    if outcome in ("late", "out_of_order"):
        log.info("%s: %s speech, shown as captions only", message.log_context, outcome)
        notice = {"type": "late", "id": caption_id(message), "lang": message.language, "reason": outcome}
        for listener in room.listeners_for(message.language, except_id=message.speaker):
            listener.send(notice)
    return outcome


def on_dropped(room: Room, message: Dropped) -> None:
    """A stage dropped this segment rather than deliver it late: stop waiting for its speech, and tell
    its listeners (the page shows it like late speech)."""
    reason = f"dropped by {message.stage}: {message.reason}"
    for language in message.languages:
        room.timeline(language).forget(message.speaker, message.seq)
        notice = {"type": "late", "id": caption_id(message), "lang": language, "reason": reason}
        for listener in room.listeners_for(language, except_id=message.speaker):
            listener.send(notice)


def stage_times(message: Message, now: float) -> str:
    """Each stage's stamp as seconds after the speech was captured: where the latency went."""
    captured = message.stamp("captured")
    if captured is None:
        return "no capture stamp"
    steps = [f"{stage}=+{at - captured:.2f}s" for stage, at in message.stamps if stage != "captured"]
    return " ".join([*steps, f"gateway=+{now - captured:.2f}s"])


def dispatch(rooms: dict[str, Room], message: Message) -> None:
    room = rooms.get(message.room)
    if room is None:
        return  # another gateway's room, or one that emptied
    if isinstance(message, Transcript):
        on_transcript(room, message)
    elif isinstance(message, Translation):
        on_translation(room, message)
    elif isinstance(message, SynthesizedSpeech):
        on_speech(room, message)
    elif isinstance(message, Dropped):
        on_dropped(room, message)
    elif isinstance(message, InterimTranscript | InterimTranslation):
        on_interim(room, message)
