"""Join tokens: signed, expiring, bound to one room."""

from __future__ import annotations

import time

import pytest

from gateway.web.tokens import TokenError, _b64, _sign, issue_token, verify_token

SECRET = "s3cret"


def test_a_fresh_token_admits_its_bearer_to_its_room() -> None:
    claims = verify_token(SECRET, issue_token(SECRET, "standup", "Ada", "host", ttl_s=60), "standup")
    assert (claims.room, claims.name, claims.role) == ("standup", "Ada", "host")
    assert claims.expires_at > time.time()


def test_an_expired_token_is_refused_with_a_clear_reason() -> None:
    token = issue_token(SECRET, "standup", "Ada", ttl_s=1)
    with pytest.raises(TokenError, match="expired"):
        verify_token(SECRET, token, "standup", now=time.time() + 2)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "required"),
        ("not-a-token", "malformed"),
        ("a.b.c", "malformed"),
        (issue_token("other secret", "standup", "Ada"), "signature"),
    ],
)
def test_forged_or_malformed_tokens_are_refused(token: str, reason: str) -> None:
    with pytest.raises(TokenError, match=reason):
        verify_token(SECRET, token, "standup")


def test_a_tampered_claim_breaks_the_signature() -> None:
    body, signature = issue_token(SECRET, "standup", "Ada").split(".")
    forged = issue_token(SECRET, "standup", "Mallory").split(".")[0]
    with pytest.raises(TokenError, match="signature"):
        verify_token(SECRET, f"{forged}.{signature}", "standup")
    assert verify_token(SECRET, f"{body}.{signature}", "standup").name == "Ada"


def test_a_token_for_another_room_is_refused() -> None:
    with pytest.raises(TokenError, match="room"):
        verify_token(SECRET, issue_token(SECRET, "standup", "Ada"), "board")


def test_issuing_needs_a_secret_and_a_known_role() -> None:
    with pytest.raises(ValueError, match="secret"):
        issue_token("", "standup", "Ada")
    with pytest.raises(ValueError, match="role"):
        issue_token(SECRET, "standup", "Ada", role="admin")


@pytest.mark.parametrize("ttl", [float("nan"), float("inf"), -1.0, 0.0])
def test_only_a_finite_positive_lifetime_is_issued(ttl: float) -> None:
    with pytest.raises(ValueError, match="positive number of seconds"):
        issue_token(SECRET, "standup", "Ada", ttl_s=ttl)


@pytest.mark.parametrize("exp", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_forged_expiry_that_never_comes_is_refused(exp: str) -> None:
    body = f'{{"room":"standup","name":"Eve","role":"host","exp":{exp}}}'.encode()
    token = f"{_b64(body)}.{_b64(_sign(SECRET, body))}"
    with pytest.raises(TokenError, match="finite expiry"):
        verify_token(SECRET, token, "standup")


ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def respell(token: str, how: str) -> str:
    """The same bytes, spelled another way."""
    body, signature = token.split(".")
    if how == "padding":
        return f"{body}.{signature}="
    if how == "standard alphabet":
        return token.replace("-", "+").replace("_", "/")
    # 32 signature bytes in 43 characters: the last one carries 2 unused bits; set one of them
    return f"{body}.{signature[:-1]}{ALPHABET[ALPHABET.index(signature[-1]) | 1]}"


@pytest.mark.parametrize("how", ["padding", "standard alphabet", "trailing bits"])
def test_only_the_canonical_spelling_is_accepted(how: str) -> None:
    tokens = (issue_token(SECRET, "standup", f"Ada {i}") for i in range(1000))
    token = next(t for t in tokens if set(t) & {"-", "_"})  # so the standard alphabet differs
    assert respell(token, how) != token
    with pytest.raises(TokenError, match="malformed"):
        verify_token(SECRET, respell(token, how), "standup")
