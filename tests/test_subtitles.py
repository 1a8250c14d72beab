"""The subtitle writer (pipeline/subtitles.py) on odd input: names and words with quotes, `-->`, `<`, `&`, line
breaks and emoji come out as WebVTT and SubRip that their parsers (webvtt-py strict, srt) read back to the same
speakers, words and times; the plain text keeps them as said. `babelroom translate` writes with it too."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest
import srt
import webvtt

from pipeline.audio import float_to_pcm16
from pipeline.messages import SynthesizedSpeech
from pipeline.subtitles import MIN_CUE_S, Cue, clock, plain_text, srt_text, vtt
from workers.translate_file import CAPTION_CHARS, caption_cues

ODD = [
    Cue(1.25, 3.5, 'He said "stop" --> then <b>left</b> & came back', 'Ana "la Jefa" <O\'Neil> & co'),
    Cue(4.0, 6.0, "first line\n\nsecond line 😀\r\nthird --> line", "Ben\nNewline"),
    Cue(7.0, 9.0, "00:00:01.000 --> 00:00:02.000", "José 🎉"),
    Cue(10.0, 12.5, "&amp; is not an ampersand here; <v Eve>nor is this a voice", "Zoë & Ümit"),
    Cue(13.0, 13.0, "no length", "Ana"),  # lasts MIN_CUE_S
    Cue(14.0, 15.0, " \n\t\n ", "Nobody"),  # nothing to show: no cue
]
SHOWN = [c for c in ODD if c.lines]


def expected_lines(cue: Cue) -> list[str]:
    return [line for line in re.split(r"\r\n|\r|\n", cue.text) if line.strip()]


def test_odd_names_and_words_make_valid_webvtt_that_reads_back_the_same() -> None:
    text = vtt(ODD, notes=["the transcript was cut short --> here"])
    parsed = webvtt.from_string(text, strict=True)
    assert len(parsed.captions) == len(SHOWN)
    for caption, cue in zip(parsed.captions, SHOWN, strict=True):
        assert html.unescape(caption.voice or "") == " ".join(cue.voice.split())
        assert html.unescape(caption.text).split("\n") == expected_lines(cue)
        assert caption.start_time.in_milliseconds() == round(cue.start_s * 1000)
        assert caption.end_time.in_milliseconds() == round(max(cue.end_s, cue.start_s + MIN_CUE_S) * 1000)
    assert parsed.footer_comments == ["the transcript was cut short -> here"]
    cue_lines = text.split("\n\n")[1:]
    assert all(block.count("-->") == 1 for block in cue_lines if not block.startswith("NOTE")), "one arrow per cue"


def test_odd_names_and_words_make_valid_subrip_that_reads_back_the_same() -> None:
    text = srt_text(ODD, notes=["cut short"])
    parsed = list(srt.parse(text))
    assert [s.index for s in parsed] == list(range(1, len(SHOWN) + 2))
    for subtitle, cue in zip(parsed[:-1], SHOWN, strict=True):
        lines = expected_lines(cue)
        lines[0] = f"{' '.join(cue.voice.split())}: {lines[0]}"
        assert subtitle.content.split("\n") == lines
        assert subtitle.start.total_seconds() == pytest.approx(cue.start_s)
    assert parsed[-1].content == "cut short" and parsed[-1].start >= parsed[-2].end


def test_plain_text_is_one_paragraph_per_cue_with_its_time_and_speaker() -> None:
    text = plain_text(ODD, notes=["cut short"])
    paragraphs = text.rstrip("\n").split("\n\n")
    assert paragraphs[0] == '[00:00:01] Ana "la Jefa" <O\'Neil> & co: He said "stop" --> then <b>left</b> & came back'
    assert paragraphs[1] == "[00:00:04] Ben Newline: first line\n    second line 😀\n    third --> line"
    assert paragraphs[-1] == "cut short" and len(paragraphs) == len(SHOWN) + 1
    assert clock(3 * 3600 + 12 * 60 + 5.9) == "03:12:05" and clock(-1) == "00:00:00"


def test_nothing_to_say_is_still_a_valid_file() -> None:
    assert webvtt.from_string(vtt([]), strict=True).captions == []
    assert list(srt.parse(srt_text([]))) == []
    assert plain_text([]) == ""


def test_babelroom_translate_writes_its_captions_with_the_same_writer() -> None:
    words = "la casa es muy grande y el gato es negro. mañana vamos al mercado con mi hermana pequeña"
    speech = SynthesizedSpeech(room="file", speaker="in", seq=0, language="es", text=words,
                               pcm=float_to_pcm16(np.zeros(16_000 * 6, dtype=np.float32)))  # fmt: skip
    parsed = webvtt.from_string(vtt(caption_cues(words, speech)), strict=True)
    assert " ".join(c.text for c in parsed.captions) == words
    assert all(len(c.text) <= CAPTION_CHARS for c in parsed.captions)
    assert parsed.captions[0].start == "00:00:00.000" and parsed.captions[-1].end == "00:00:06.000"
    starts = [c.start_time.in_milliseconds() for c in parsed.captions]
    assert starts == sorted(starts)
