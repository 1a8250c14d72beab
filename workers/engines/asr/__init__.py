"""Speech recognition behind one protocol: `Recognizer.transcribe(segment) -> Transcript`. One module each:

- `base`: the protocol, `AsrOptions` / `GuardOptions` and the checks every engine shares;
- `guard`: `HallucinationGuard`, language-independent checks that keep noise and loops out of captions;
- `models`: the Whisper models that install offline from wheels;
- `whisper_ct2`: `FasterWhisperRecognizer` (CTranslate2), the offline default;
- `whisper_torch`: `TransformersWhisperRecognizer` (torch), for GPUs where CTranslate2 cannot run;
- `registry`: `load_recognizer`, the configured engine (nothing in this package imports it).

Both engines use the participant's declared language and detect only when none was declared (detection on short
synthetic speech is unreliable). Engines import `base`, its helpers and `workers.engines.common`, never each other.
"""
