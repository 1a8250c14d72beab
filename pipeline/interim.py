"""Interim captions: the words of the open segment while the floor holder is still speaking.

While someone speaks, the gateway sends the open segment's audio so far every `interval_s`
(`InterimTracker.request`). Each pass recognises all of it; LocalAgreement-2 (as in whisper_streaming)
commits the words that two successive hypotheses agree on after what is already committed. Committed
words are never withdrawn by a later interim, the rest of the hypothesis is shown as tentative, so the
caption grows instead of flickering. The final caption (the closed segment's own recognition, same
`seq`) replaces the interim ones.

Where the LocalAgreement state lives: with the sender, one `InterimTracker` per speaker. Each request
carries the previous hypothesis and the committed words, so ASR workers stay stateless: any worker serves
any request, none holds per-utterance memory to lose or to share through Redis, and a request needs no
Redis round trip besides its own. A reply that arrives after a newer one (two workers, out of order) is
ignored by revision; a reply for a segment that already closed is ignored too.

`interim_caption` turns an interim result into the caption payload the room page shows, the same shape
as a final caption with `final: False`. `rewrite_rate` measures how much the shown captions flicker.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.audio import float_to_pcm16
from pipeline.messages import SAMPLE_RATE, InterimRequest, InterimTranscript, InterimTranslation

INTERVAL_S = 0.6  # between requests while the floor holder speaks: fresher captions vs more ASR passes
# Until a draft has heard words, requests come this often: a first draft of 0.6 s often holds no whole word, and
# waiting INTERVAL_S for the next put the first caption 1.0-1.7 s after speech onset in 9 utterances of 26.
FIRST_INTERVAL_S = 0.3
MIN_AUDIO_S = 0.6  # a first request with less audio than this rarely holds a whole word
# No request once the speaker has paused this long: the segment may close any moment (Smart Turn asks at a
# 0.25 s pause), a draft would add no words, and it would compete with the final for the ASR worker.
MAX_PAUSE_S = 0.2
# Whether the final pass decodes after the words the interims committed (little is left to decode) or the
# whole segment afresh, the default. Drafts are greedy passes over part of the audio, and a wrong word two of them
# agree on held the final to it: drafts of the browser tests' "the house is big and the cat is black" cut at
# 1.4-1.7 s all read "How's it big?", and with those words committed the final read "How's it big and the cat is
# black?" (one full-suite run in two, and a CI run), where afresh it reads "A house is big, and a cat is black."
# On the streamed quality corpus (tests/test_quality.py, fitted finals with 5 beams) afresh made 9 Spanish word
# errors of 51 against 18 after the committed words; English 0 of 54 both.
FINAL_REUSES_COMMITTED = False
_PUNCTUATION = ".,;:!?¿¡\"'()«»…-"


@dataclass(frozen=True)
class InterimOptions:
    interval_s: float = INTERVAL_S
    first_interval_s: float = FIRST_INTERVAL_S
    min_audio_s: float = MIN_AUDIO_S
    max_pause_s: float = MAX_PAUSE_S
    final_reuses_committed: bool = FINAL_REUSES_COMMITTED


@dataclass(frozen=True)
class Agreement:
    committed: str  # stable: shown from now on
    text: str  # committed plus the tentative rest of the newest hypothesis: what the caption shows


def same_word(a: str, b: str) -> bool:
    """Words compared as a reader would: case and surrounding punctuation do not count."""
    return a.strip(_PUNCTUATION).lower() == b.strip(_PUNCTUATION).lower()


def agreed_words(a: Sequence[str], b: Sequence[str]) -> int:
    """How many leading words `a` and `b` share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if not same_word(x, y)), min(len(a), len(b)))


def local_agreement(previous: str, hypothesis: str, committed: str) -> Agreement:
    """Commit what `previous` and `hypothesis` agree on beyond `committed`; committed words never change.

    The recogniser decodes after the committed words (as a prefix), so a hypothesis normally starts with
    them; its words past that count are the tentative rest."""
    stable = committed.split()
    tail, previous_tail = hypothesis.split()[len(stable) :], previous.split()[len(stable) :]
    agreed = agreed_words(previous_tail, tail)
    return Agreement(" ".join([*stable, *tail[:agreed]]), " ".join([*stable, *tail]))


class InterimTracker:
    """The sender's side, one per speaker: when to ask, what to send, which replies to show.

    The gateway calls `request` as audio arrives (it returns a request when one is due), `accept` for each
    interim result of this speaker on `results` (True: show it), and `close` when the segment closes,
    before publishing it with the committed words `close` returns. It stamps each request ("captured")
    and publishes it like a segment."""

    def __init__(self, options: InterimOptions | None = None) -> None:
        self.options = options or InterimOptions()
        self.seq: int | None = None
        self.revision = -1
        self.previous = ""
        self.committed = ""
        self.shown: dict[str, int] = {}  # language -> newest revision shown
        self.closed: set[int] = set()
        self._last_request_sample = 0

    def request(
        self,
        room: str,
        speaker: str,
        seq: int,
        language: str,
        targets: tuple[str, ...],
        start_sample: int,
        audio: npt.NDArray[np.floating],
    ) -> InterimRequest | None:
        """The open segment `seq` (its audio from `start_sample` up to now): a request when one is due."""
        if seq in self.closed:
            return None
        if seq != self.seq:
            self._open(seq)
        end_sample = start_sample + audio.size
        interval_s = self.options.interval_s if self.previous else self.options.first_interval_s
        due = self._last_request_sample + round(interval_s * SAMPLE_RATE)
        if audio.size < self.options.min_audio_s * SAMPLE_RATE or end_sample < due:
            return None
        self._last_request_sample = end_sample
        self.revision += 1
        return InterimRequest(
            room=room, speaker=speaker, seq=seq, revision=self.revision, language=language, targets=targets,
            start_sample=start_sample, end_sample=end_sample, pcm=float_to_pcm16(audio),
            previous=self.previous, committed=self.committed,
        )  # fmt: skip

    def accept(self, result: InterimTranscript | InterimTranslation) -> bool:
        """Whether to show an interim result: False when it is stale (its segment closed, or an older
        revision than one already shown in its language). A transcript's hypothesis and committed words
        become the state the next request carries."""
        shown = self.shown.get(result.language, -1)
        if result.seq != self.seq or result.seq in self.closed or result.revision <= shown:
            return False
        self.shown[result.language] = result.revision
        if isinstance(result, InterimTranscript):
            self.previous, self.committed = result.text, result.committed
        return True

    def close(self, seq: int) -> str:
        """The segment closed: its interim replies still on their way are not shown. Returns the words its
        interim captions committed, for the final SpeechSegment's `committed` (the final keeps them), when
        `final_reuses_committed`; else ""."""
        reuse = self.seq == seq and self.options.final_reuses_committed
        committed = self.committed if reuse else ""
        self.closed = {s for s in self.closed if s > seq - 8} | {seq}
        if self.seq == seq:
            self.seq = None
        return committed

    def _open(self, seq: int) -> None:
        self.seq, self.revision, self.shown = seq, -1, {}
        self.previous = self.committed = ""
        self._last_request_sample = 0


def interim_caption(message: InterimTranscript | InterimTranslation, speaker_name: str) -> dict[str, Any]:
    """The caption payload of an interim result, shaped like a final caption with `final: False`.

    Send an InterimTranscript's caption to the speaker and to listeners of the spoken language, an
    InterimTranslation's to the listeners of its language. `committed` is the stable start of `text`
    (for a translation, of `original`: a translated prefix is not a prefix of the translation)."""
    if isinstance(message, InterimTranscript):
        source_language, original, committed, note = message.language, message.text, message.committed, ""
    else:
        source_language, original, committed, note = message.source_language, message.source_text, "", message.note
    return {
        "type": "caption",
        "id": f"{message.speaker}:{message.seq}",
        "speaker_id": message.speaker,
        "speaker": speaker_name,
        "seq": message.seq,
        "revision": message.revision,
        "lang": message.language,
        "text": message.text,
        "committed": committed,
        "original": original,
        "source_lang": source_language,
        "final": False,
        "note": note,
        "captured_at": message.stamp("captured"),
    }


def rewrite_rate(displays: Sequence[str]) -> float:
    """How often a caption rewrites words it already showed: of the words each display shows (summed over
    every display but the last), the fraction the next display changes, from its first changed or removed
    word on (what a reader sees re-laid). Words compare as `same_word` does.
    0 is a caption that only grows; 1 rewrites everything every time. Pass the interim texts followed by
    the final one."""
    shown = changed = 0
    for before, after in itertools.pairwise(d.split() for d in displays):
        shown += len(before)
        changed += len(before) - agreed_words(before, after)
    return changed / shown if shown else 0.0
