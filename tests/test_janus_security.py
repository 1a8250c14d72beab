"""A client without a valid join gets nothing from the real Janus: not through the gateway's proxy (the
only door a browser has), and not by talking to Janus directly without the gateway's secrets.

Eve plays the attacker with a raw Janus-protocol WebSocket. Through the proxy, with a valid join to
room A, she may do exactly what the page does (her own publisher join, subscriptions in her room) and
nothing else: no other room, no other identity, no creating, destroying, listing or forwarding. Each
refusal is checked against a control that the same request, made the allowed way, succeeds.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientSession, WSServerHandshakeError
from aiohttp.test_utils import BaseTestServer, TestServer

from babelroom.janus import JanusConfig
from benchmarks.participant import ScriptedParticipant
from gateway.media.janus import PROTOCOL
from gateway.web.app import create_app
from gateway.web.tokens import issue_token
from pipeline.bus import Bus
from pipeline.config import BusOptions
from tests.speech import silence
from tests.test_gateway import SECRET, SpeechTrack, gateway_options, wait_for_janus

PLUGIN = "janus.plugin.videoroom"


class RawJanus:
    """A bare Janus-protocol client: sends what it is told, returns Janus's (or the proxy's) answer."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse, apisecret: str = "") -> None:
        self.socket = socket
        self.apisecret = apisecret
        self.session = 0
        self.handle = 0
        self._ids = itertools.count()

    async def ask(self, janus: str, **fields: Any) -> dict[str, Any]:
        transaction = f"eve{next(self._ids)}"
        request = {"janus": janus, "transaction": transaction, **fields}
        if self.apisecret:
            request["apisecret"] = self.apisecret
        if self.session and "session_id" not in fields and janus != "create":
            request["session_id"] = self.session
        await self.socket.send_json(request)
        while True:
            reply = await self.socket.receive_json(timeout=10)
            if reply.get("transaction") == transaction and reply.get("janus") != "ack":
                return dict(reply)

    async def open(self) -> None:
        self.session = (await self.ask("create"))["data"]["id"]
        self.handle = (await self.ask("attach", plugin=PLUGIN))["data"]["id"]

    async def plugin(self, body: dict[str, Any], **fields: Any) -> dict[str, Any]:
        return await self.ask("message", handle_id=fields.pop("handle_id", self.handle), body=body, **fields)


def refused(reply: dict[str, Any]) -> bool:
    """A refusal by the proxy or by Janus, or a VideoRoom error."""
    data = reply.get("plugindata", {}).get("data", {})
    return reply.get("janus") == "error" or "error_code" in data


@pytest.fixture
async def server(redis_url: str, stream_prefix: str, janus_config: JanusConfig) -> AsyncIterator[BaseTestServer]:
    app = create_app(Bus.connect(BusOptions(redis_url=redis_url, prefix=stream_prefix)), gateway_options(janus_config))
    async with TestServer(app, host="127.0.0.1") as server:
        yield server


async def enter(server: BaseTestServer, room: str, name: str) -> ScriptedParticipant:
    person = ScriptedParticipant(str(server.make_url("")).rstrip("/"), room, name, "en", "en")
    await person.join(SpeechTrack(silence(60)), token=issue_token(SECRET, room, name))
    await person.wait_for(
        lambda: any(p["feed"] for p in (person.latest("roster") or {}).get("participants", [])), "published"
    )
    return person


async def test_through_the_proxy_a_participant_reaches_only_their_own_room_as_themselves(
    server: BaseTestServer, janus_config: JanusConfig
) -> None:
    base = str(server.make_url("")).rstrip("/")
    async with ClientSession(base_url=base) as http:
        await wait_for_janus(http)
        ana = await enter(server, "room-a", "Ana")
        bob = await enter(server, "room-b", "Bob")
        try:
            body = {"speak": "en", "hear": "en", "token": issue_token(SECRET, "room-a", "Eve")}
            async with http.post("/api/rooms/room-a/join", json=body) as response:
                eve_join = await response.json()
            ana_feed, bob_feed = ana.session["feed_id"], bob.session["feed_id"]
            room_a, room_b = eve_join["room_id"], bob.session["room_id"]

            # No join, or a wrong ticket: no socket at all.
            for query in ("", "?ticket=forged"):
                with pytest.raises(WSServerHandshakeError) as no_door:
                    await http.ws_connect(f"/api/sessions/{eve_join['id']}/janus{query}", protocols=(PROTOCOL,))
                assert no_door.value.status == 401

            async with http.ws_connect(f"{eve_join['janus']}?ticket={eve_join['ticket']}", protocols=(PROTOCOL,)) as ws:
                eve = RawJanus(ws)
                assert refused(await eve.ask("attach", plugin=PLUGIN, session_id=123)), "a session that is not hers"
                await eve.open()
                assert refused(await eve.ask("attach", plugin="janus.plugin.echotest")), "another plugin"
                assert refused(await eve.ask("info")) and refused(await eve.ask("claim"))
                for request in (
                    {"request": "create", "room": 42, "admin_key": "guess"},
                    {"request": "destroy", "room": room_a, "secret": "guess"},
                    {"request": "edit", "room": room_a, "secret": "guess", "new_pin": "mine"},
                    {"request": "list"},
                    {"request": "listparticipants", "room": room_b},
                    {"request": "exists", "room": room_b},
                    {"request": "kick", "room": room_a, "id": ana_feed, "secret": "guess"},
                    {
                        "request": "rtp_forward",
                        "room": room_a,
                        "publisher_id": ana_feed,
                        "host": "198.18.0.1",
                        "audio_port": 5004,
                    },
                    {"request": "enable_recording", "room": room_a, "record": True},
                    {"request": "moderate", "room": room_a, "id": ana_feed, "mid": "0", "mute": True},
                ):
                    assert refused(await eve.plugin(request)), request["request"]
                # Another room, even with its real id: refused; someone else's identity: refused.
                assert refused(
                    await eve.plugin(
                        {"request": "join", "ptype": "subscriber", "room": room_b, "streams": [{"feed": bob_feed}]}
                    )
                )
                assert refused(
                    await eve.plugin(
                        {"request": "join", "ptype": "subscriber", "room": room_a, "streams": [{"feed": bob_feed}]}
                    )
                )
                assert refused(
                    await eve.plugin({"request": "join", "ptype": "publisher", "room": room_a, "id": ana_feed})
                )
                assert refused(await eve.plugin({"request": "configure", "record": True, "filename": "/tmp/x"}))

                # Controls: what the page does is allowed.
                joined = await eve.plugin(
                    {
                        "request": "join",
                        "ptype": "publisher",
                        "room": room_a,
                        "id": eve_join["feed_id"],
                        "display": "Mallory",
                    }
                )
                data = joined["plugindata"]["data"]
                assert data["videoroom"] == "joined" and data["id"] == eve_join["feed_id"]
                assert [p["display"] for p in data["publishers"] if p["id"] == ana_feed] == ["Ana"]
                sub = (await eve.ask("attach", plugin=PLUGIN))["data"]["id"]
                watched = await eve.plugin(
                    {"request": "join", "ptype": "subscriber", "room": room_a, "streams": [{"feed": ana_feed}]},
                    handle_id=sub,
                )
                assert (
                    watched["plugindata"]["data"]["videoroom"] == "attached"
                    and watched.get("jsep", {}).get("type") == "offer"
                )
                async with http.ws_connect(janus_config.url, protocols=(PROTOCOL,)) as direct:
                    gateway_eye = RawJanus(direct, apisecret=janus_config.api_secret)
                    await gateway_eye.open()
                    seen = await gateway_eye.plugin({"request": "listparticipants", "room": room_a})
                    names = {p["id"]: p.get("display") for p in seen["plugindata"]["data"]["participants"]}
                    assert names[eve_join["feed_id"]] == "Eve", "Janus knows her by the name the gateway gave"
        finally:
            await ana.close()
            await bob.close()


async def test_janus_itself_refuses_anyone_without_the_gateways_secrets(
    server: BaseTestServer, janus_config: JanusConfig
) -> None:
    async with ClientSession(base_url=str(server.make_url(""))) as http:
        await wait_for_janus(http)
        ana = await enter(server, "room-a", "Ana")
        try:
            room_a = ana.session["room_id"]
            async with http.ws_connect(janus_config.url, protocols=(PROTOCOL,)) as ws:
                stranger = RawJanus(ws)
                assert refused(await stranger.ask("create")), "no API secret: no session"
            async with http.ws_connect(janus_config.url, protocols=(PROTOCOL,)) as ws:
                insider = RawJanus(ws, apisecret=janus_config.api_secret)  # even with the API secret:
                await insider.open()
                listed = await insider.plugin({"request": "list"})
                assert room_a not in [r["room"] for r in listed["plugindata"]["data"]["list"]], "rooms are private"
                for request in (
                    {"request": "create", "room": 42},
                    {"request": "join", "ptype": "publisher", "room": room_a},
                    {"request": "destroy", "room": room_a},
                    {"request": "edit", "room": room_a, "new_is_private": False},
                    {
                        "request": "rtp_forward",
                        "room": room_a,
                        "publisher_id": ana.session["feed_id"],
                        "host": "198.18.0.1",
                        "audio_port": 5004,
                    },
                ):
                    assert refused(await insider.plugin(request)), request["request"]
        finally:
            await ana.close()
