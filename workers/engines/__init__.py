"""The engines behind each stage's protocol: one package per stage (`asr`, `mt`, `tts`, `lipsync`), each with
`base` (protocol, options, result types), one module per engine and a `registry` that picks the configured one.
`common` holds what every stage shares (the missing-dependency error, the model cache, torch's loading)."""
