"""The bridge's two halves, kept apart: ingest (a participant's audio -> segmenter -> turn-taking -> the bus) and
egress (each room's per-language feeds published into Janus), and the lip-sync frame path (camera frames out to
the bus, clips back to the feeds). Imports `pipeline`, `gateway.options`, `gateway.media` and `gateway.rooms`."""
