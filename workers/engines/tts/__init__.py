"""Speech synthesis behind one protocol: `Synthesizer.synthesize(text, language) -> Audio`. One module each:

- `base`: the protocol, `Audio`, `TtsOptions` and the phoneme symbols the engines share;
- `espeak`: `EspeakSynthesizer`, espeak-ng through libespeak-ng, with phoneme timings;
- `piper`: `PiperSynthesizer`, a Piper ONNX voice, with phoneme timings from its alignments;
- `vits`: `VitsSynthesizer`, MMS-TTS on torch (GPU hosts), batched by length;
- `render`: fitting the speech to the speaker (trim, pitch, duration), for every engine;
- `registry`: `VoiceRouter`, the voice for each language (nothing in this package imports it).

Engines import `base` and `workers.engines.common`, never each other.
"""
