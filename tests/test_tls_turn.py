"""The pieces of HTTPS and TURN that need no browser: the kept self-signed certificate, TURN REST API
credentials, the TLS and TURN settings, and what coturn's and Janus's configurations say."""

from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from babelroom import coturn, janus
from babelroom.certificate import ensure_certificate
from gateway.options import GatewayOptions, TurnOptions
from gateway.web.turn import turn_credential

LAN = ipaddress.ip_address("192.168.1.20")


def test_the_certificate_is_made_once_and_kept_while_it_covers_the_host(tmp_path: Path) -> None:
    first = ensure_certificate(tmp_path, ["localhost", "meetbox"], [LAN])
    assert first.created and first.key.stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(first.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "meetbox"]
    assert names.get_values_for_type(x509.IPAddress) == [LAN]
    openssl = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(first.cert)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert openssl.stdout.strip().endswith(first.fingerprint), "the fingerprint printed is the one browsers show"

    again = ensure_certificate(tmp_path, ["meetbox"], [LAN])
    assert not again.created and again.fingerprint == first.fingerprint, "kept: participants accept it once"
    moved = ensure_certificate(tmp_path, ["meetbox"], [ipaddress.ip_address("10.0.0.7")])
    assert moved.created and moved.fingerprint != first.fingerprint, "a new address needs a new certificate"


def test_a_certificate_near_its_end_is_made_afresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ensure_certificate(tmp_path, ["meetbox"], [LAN])
    cert = x509.load_pem_x509_certificate(first.cert.read_bytes())
    later = cert.not_valid_after_utc - datetime.timedelta(days=10)

    class Later(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> Later:
            return cls.fromtimestamp(later.timestamp(), tz)

    monkeypatch.setattr("babelroom.certificate.datetime.datetime", Later)
    assert ensure_certificate(tmp_path, ["meetbox"], [LAN]).created


def test_turn_credentials_follow_the_rest_api_convention() -> None:
    credential = turn_credential("s3cret", "abc123", 1_800_000_000.9)
    assert credential.username == "1800000000:abc123" and credential.expires_at == 1_800_000_000
    assert credential.password != turn_credential("other", "abc123", 1_800_000_000).password
    with pytest.raises(ValueError, match="cannot contain ':'"):
        turn_credential("s3cret", "a:b", 1_800_000_000)
    with pytest.raises(ValueError, match="BABELROOM_TURN_SECRET"):
        turn_credential("", "abc", 1_800_000_000)


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"BABELROOM_TLS_CERT": "/etc/cert.pem"}, "set both BABELROOM_TLS_CERT and BABELROOM_TLS_KEY"),
        ({"BABELROOM_TURN_URLS": "turn:t.example.org:3478"}, "needs BABELROOM_TURN_SECRET"),
        ({"BABELROOM_TURN_URLS": "stun:t.example.org", "BABELROOM_TURN_SECRET": "s"}, "starts with turn:"),
        ({"BABELROOM_ICE_URLS": "turn:t.example.org:3478"}, "short-lived credential instead of a static password"),
    ],
)
def test_bad_tls_and_turn_settings_are_named(env: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        GatewayOptions.from_env(env)


def test_coturn_relays_only_to_the_media_server_and_speaks_tls_with_a_certificate() -> None:
    plain = coturn.config_lines(coturn.CoturnConfig(secret="s", allowed_peers=("203.0.113.5",)))
    assert "use-auth-secret" in plain and "static-auth-secret=s" in plain and "no-tls" in plain
    assert plain.index("denied-peer-ip=0.0.0.0-255.255.255.255") < plain.index("allowed-peer-ip=203.0.113.5")
    secure = coturn.CoturnConfig(secret="s", cert="/c.pem", key="/k.pem")
    assert "cert=/c.pem" in coturn.config_lines(secure) and "tls-listening-port=5349" in coturn.config_lines(secure)
    assert secure.urls("meet.example.org")[-1] == "turns:meet.example.org:5349?transport=tcp"


def test_janus_asks_a_turn_api_beside_it_for_short_lived_credentials(tmp_path: Path) -> None:
    """Janus's configuration names an endpoint on loopback and its key, never a credential; the endpoint answers
    only that key, with a credential for the browsers' TURN server that lasts hours, not the 30 days of old."""
    turn = TurnOptions(("turns:meet.example.org:5349?transport=tcp", "turn:meet.example.org:3478?transport=udp"), "s")
    with janus.TurnApi.serving(turn) as api:
        assert api is not None
        config = janus.config_from_env({}, 8188, api)
        nat = janus.write_config(tmp_path, config).read_text().split("nat: {")[1]
        assert f'turn_rest_api = "{api.janus.url}"' in nat and f'turn_rest_api_key = "{api.key}"' in nat
        assert "turn_user" not in nat and "turn_pwd" not in nat and api.janus.url.startswith("http://127.0.0.1:")
        asked = f"{api.janus.url}?service=turn&api={api.key}&key={api.key}&username=1234"
        with urllib.request.urlopen(asked, timeout=5) as reply:
            answer = json.loads(reply.read())
        expiry, user = answer["username"].split(":")
        assert user == "janus-1234" and answer["uris"] == ["turn:meet.example.org:3478?transport=udp"]
        assert answer["password"] == turn_credential("s", user, int(expiry)).password
        assert 0 < int(expiry) - time.time() <= janus.JANUS_TURN_TTL_S <= 4 * 3600 and api.issued == 1
        for wrong in (asked.replace(api.key, "guess"), asked.replace("/turn?", "/other?")):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(wrong, timeout=5)
            assert refused.value.code == 403
    assert janus.config_from_env({}, 8188).turn is None
    with janus.TurnApi.serving(TurnOptions(("turns:meet.example.org:5349",), "s")) as none:
        assert none is None, "Janus speaks plain turn: only"
