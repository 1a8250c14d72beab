"""The Janus side and the media plane: the Janus client and the VideoRoom API, RTP forwarded out of Janus,
participants' audio and video as samples and frames, the playout timeline of each language's feed, the feed's
video, and the echo guard. Imports `pipeline` and `gateway.options` only: nothing of rooms, bridge or web."""
