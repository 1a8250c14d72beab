"""What the seq2seq translation model families (NLLB-200, M2M100, Marian/OPUS-MT) name their languages, shared by
the engines that run them (torch and CTranslate2)."""

from __future__ import annotations

import re
from pathlib import Path

from workers.engines.common import EngineUnavailable

# NLLB-200 names languages by FLORES-200 codes.
NLLB_CODES = {
    "en": "eng_Latn", "es": "spa_Latn", "fr": "fra_Latn", "de": "deu_Latn", "it": "ita_Latn", "pt": "por_Latn",
    "ca": "cat_Latn", "gl": "glg_Latn", "eu": "eus_Latn", "nl": "nld_Latn", "pl": "pol_Latn", "ru": "rus_Cyrl",
    "uk": "ukr_Cyrl", "zh": "zho_Hans", "ja": "jpn_Jpan", "ko": "kor_Hang", "ar": "arb_Arab", "hi": "hin_Deva",
    "tr": "tur_Latn", "sv": "swe_Latn", "da": "dan_Latn", "fi": "fin_Latn", "el": "ell_Grek", "cs": "ces_Latn",
    "ro": "ron_Latn", "hu": "hun_Latn", "he": "heb_Hebr", "id": "ind_Latn", "vi": "vie_Latn", "th": "tha_Thai",
    "bg": "bul_Cyrl", "nb": "nob_Latn", "sk": "slk_Latn", "hr": "hrv_Latn", "sr": "srp_Cyrl", "fa": "pes_Arab",
}  # fmt: skip


def model_family(model_type: str, tokenizer_class: str) -> str:
    if model_type == "marian":
        return "marian"
    if "nllb" in tokenizer_class.lower():
        return "nllb"
    if model_type == "m2m_100":
        return "m2m100"
    raise EngineUnavailable(f"unsupported translation model type {model_type!r}: use NLLB, M2M100 or Marian")


def marian_pair(model: str) -> tuple[str, str] | None:
    """opus-mt-en-es -> ("en", "es"); None for a multi-target model (opus-mt-en-ROMANCE) or an unknown name."""
    match = re.search(r"opus-mt-([a-z]{2})-([a-z]{2})(?:$|[^a-zA-Z])", Path(model).name)
    return (match.group(1), match.group(2)) if match else None


def language_token(family: str, code: str) -> str | None:
    """The token that names a target (and, for NLLB and M2M100, a source) language; None when the family has no
    name for it. A single-pair Marian model has none: its pair is in its name."""
    if family == "nllb":
        return NLLB_CODES.get(code)
    if family == "m2m100":
        return f"__{code}__"
    return None
