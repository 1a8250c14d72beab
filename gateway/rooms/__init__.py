"""Room state: participants and their rooms (floor, feeds, playout timelines), captions to the pages, the results
reader, the meetings' transcripts (in Redis), the overload policy and the gateway's background tasks. Imports
`pipeline`, `gateway.options` and `gateway.media`; never bridge, web or the service."""
