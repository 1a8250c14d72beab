"""The gateway: the bridge between Janus (the SFU) and the translation pipeline. Its parts, one way down:

- `web/`: the HTTP application, the events and Janus sockets, access (tokens, TURN credentials, the proxy);
- `service`: the `Gateway`, which owns the rooms, Janus and the bus, and joins the parts below;
- `bridge/`: the two halves of the bridge, ingest (participants' audio -> segments on the bus) and egress
  (results -> captions and per-language feeds), and the lip-sync frame path;
- `rooms/`: room state (participants, floor, captions, results, overload, background tasks);
- `media/`: the Janus side and the media plane (Janus client, VideoRoom, RTP in, playout, video, echo guard);
- `options`, `validation`: settings and input rules every part uses.

Arrows: web -> service -> bridge -> rooms -> media. Nothing imports upward; `tests/test_layers.py` checks it.
"""
