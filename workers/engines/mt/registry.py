"""The configured MT engine. Nothing inside the engines imports this module: it imports them, each only when
chosen (each pulls its own dependencies)."""

from __future__ import annotations

from workers.engines.mt.base import APERTIUM, BERGAMOT, CTRANSLATE2, ENGINES, TRANSFORMERS, MtOptions, Translator


def load_translator(options: MtOptions) -> Translator:
    """The configured engine; its module is imported only when chosen (each pulls its own dependencies)."""
    if options.engine == APERTIUM:
        from workers.engines.mt.apertium import ApertiumTranslator

        return ApertiumTranslator(options)
    if options.engine == BERGAMOT:
        from workers.engines.mt.bergamot import BergamotTranslator

        return BergamotTranslator()
    if options.engine == CTRANSLATE2:
        from workers.engines.mt.ctranslate2 import Ctranslate2Translator

        return Ctranslate2Translator(options)
    if options.engine == TRANSFORMERS:
        from workers.engines.mt.transformers import TransformersTranslator

        return TransformersTranslator(options)
    raise ValueError(f"unknown MT engine {options.engine!r}: use one of {', '.join(ENGINES)}")
