"""Subtitle files from timed cues: WebVTT, SubRip and plain text. One writer for the meeting's transcript
(gateway/rooms/transcript.py) and for `babelroom translate` (workers/translate_file.py).

The libraries write the files and check their structure: webvtt-py refuses a cue that would not read back,
`srt` drops the blank lines that would end a subtitle. What they leave to the caller is WebVTT's escaping of
cue text, which the spec defines as HTML's character references (`&amp;`, `&lt;`, `&gt;`): html.escape
writes them, so `<`, `&` and `-->` in what someone said stay words. A line break in a text or a name never
makes an empty line: texts keep their lines, minus blank ones; a speaker's name becomes one line.
"""

from __future__ import annotations

import datetime
import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import srt
import webvtt
from webvtt.models import Timestamp

MIN_CUE_S = 0.5  # a cue that would end before it starts (or at once) lasts this long: players skip empty spans
NOTE_CUE_S = 5.0  # SubRip has no comments: a note is a cue of its own this long, after the last one
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # WebVTT's line terminators; SubRip readers split on the same


@dataclass(frozen=True)
class Cue:
    """Words on screen from `start_s` to `end_s` (seconds from the start of the file), said by `voice`."""

    start_s: float
    end_s: float
    text: str
    voice: str = ""

    @property
    def lines(self) -> list[str]:
        """The text's lines, without blank ones (an empty line ends a cue in both formats)."""
        return [line for line in _LINE_BREAK.split(self.text) if line.strip()]

    @property
    def speaker(self) -> str:
        return " ".join(self.voice.split())

    @property
    def span(self) -> tuple[float, float]:
        start = max(0.0, self.start_s)
        return start, max(self.end_s, start + MIN_CUE_S) if self.end_s <= start else self.end_s


def vtt(cues: Iterable[Cue], notes: Sequence[str] = ()) -> str:
    """WebVTT: each speaker's words in a `<v Name>` voice span; `notes` as NOTE blocks at the end."""
    captions = []
    for cue in cues:
        lines = [html.escape(line, quote=False) for line in cue.lines]
        if not lines:
            continue
        if cue.speaker:
            lines[0] = f"<v {html.escape(cue.speaker, quote=False)}>{lines[0]}"
        start, end = cue.span
        captions.append(webvtt.Caption(str(Timestamp.from_seconds(start)), str(Timestamp.from_seconds(end)), lines))
    return str(webvtt.WebVTT(captions=captions, footer_comments=[_one_line(n) for n in notes]).content)


def srt_text(cues: Iterable[Cue], notes: Sequence[str] = ()) -> str:
    """SubRip: the speaker's name before their words (the format has no voices); `notes` as a last cue."""
    subtitles: list[srt.Subtitle] = []
    end = 0.0
    for cue in cues:
        lines = cue.lines
        if not lines:
            continue
        if cue.speaker:
            lines[0] = f"{cue.speaker}: {lines[0]}"
        start, end = cue.span
        subtitles.append(srt.Subtitle(len(subtitles) + 1, _delta(start), _delta(end), "\n".join(lines)))
    for note in notes:
        subtitles.append(srt.Subtitle(len(subtitles) + 1, _delta(end), _delta(end + NOTE_CUE_S), _one_line(note)))
        end += NOTE_CUE_S
    return str(srt.compose(subtitles, reindex=False))


def plain_text(cues: Iterable[Cue], notes: Sequence[str] = ()) -> str:
    """One paragraph per cue, `[HH:MM:SS] Name: words`, its further lines indented; `notes` at the end."""
    paragraphs = []
    for cue in cues:
        lines = cue.lines
        if not lines:
            continue
        who = f"{cue.speaker}: " if cue.speaker else ""
        paragraphs.append("\n".join([f"[{clock(cue.span[0])}] {who}{lines[0]}", *(f"    {x}" for x in lines[1:])]))
    paragraphs += [_one_line(note) for note in notes]
    return "\n\n".join(paragraphs) + "\n" if paragraphs else ""


def clock(seconds: float) -> str:
    """HH:MM:SS, the whole seconds of a time from the start."""
    whole = int(max(0.0, seconds))
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _delta(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(milliseconds=round(seconds * 1000))


def _one_line(note: str) -> str:
    """A note of this program's own, on one line: NOTE blocks must not hold an empty line or an arrow."""
    return " ".join(note.split()).replace("-->", "->")
