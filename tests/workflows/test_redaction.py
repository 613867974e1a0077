"""`shipflow.workflows.redaction.redact`: what every error and log line goes through."""

from __future__ import annotations

import pytest

from shipflow.workflows.redaction import redact

# (text, secret substrings that must vanish, substrings that must stay)
CASES: list[tuple[str, list[str], list[str]]] = [
    (
        "postgresql://app:s3cr3t@db.internal:5432/shop",
        ["s3cr3t"],
        ["postgresql://app:***@db.internal:5432/shop"],
    ),
    (
        "could not connect to postgres://u:p%40ss%2Fw@h/db?sslmode=require: refused",
        ["p%40ss%2Fw"],
        ["postgres://u:***@h/db?sslmode=require", "refused"],
    ),
    (
        "unsupported database URL host=db.internal port=5432 user=app password=hunter22 dbname=shop",
        ["hunter22"],
        ["host=db.internal", "user=app", "password=***", "dbname=shop"],
    ),
    (
        "host=db user=app password='correct horse \\' battery' dbname=shop",
        ["correct", "horse", "battery"],
        ["host=db", "password=***", "dbname=shop"],
    ),
    (
        "host=db PASSWORD = 'with spaces' sslpassword=keypass sslmode=verify-full",
        ["with spaces", "keypass"],
        ["host=db", "sslmode=verify-full"],
    ),
    (
        "POST https://hooks.example/notify?token=tok123abc&channel=ops failed",
        ["tok123abc"],
        ["https://hooks.example/notify?token=***&channel=ops", "failed"],
    ),
    (
        "GET https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20260101&X-Amz-Signature=abcdef0123456789"
        "&X-Amz-Security-Token=FQoGZXIvYXdzEJr",
        ["AKIAIOSFODNN7EXAMPLE", "abcdef0123456789", "FQoGZXIvYXdzEJr"],
        ["X-Amz-Algorithm=AWS4-HMAC-SHA256", "https://b.s3.amazonaws.com/k?"],
    ),
    (
        "https://api.example/v1?api_key=k-9f8e7d&access_token=at-555&sig=zz99&secret=shh1&key=kk77",
        ["k-9f8e7d", "at-555", "zz99", "shh1", "kk77"],
        ["https://api.example/v1?"],
    ),
    (
        "aws_access_key_id=AKIAIOSFODNN7EXAMPLE aws_secret_access_key=wJalrXUtnFEMI/K7MDENG",
        ["AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG"],
        [],
    ),
    ('{"user": "app", "password": "js0n-pw"}', ["js0n-pw"], ['"user": "app"']),
    (
        "sqlite:////var/lib/app/db.sqlite3 and http://127.0.0.1:8080/healthz stay as they are",
        [],
        ["sqlite:////var/lib/app/db.sqlite3 and http://127.0.0.1:8080/healthz stay as they are"],
    ),
    ("keyboard=1 monkey=2 turnkey", [], ["keyboard=1 monkey=2 turnkey"]),
]


@pytest.mark.parametrize(("text", "gone", "kept"), CASES)
def test_redact_masks_credentials_and_keeps_the_rest(
    text: str, gone: list[str], kept: list[str]
) -> None:
    out = redact(text)
    for secret in gone:
        assert secret not in out, out
    for part in kept:
        assert part in out, out
    if gone:
        assert "***" in out


def test_known_secret_values_are_masked_wherever_they_appear() -> None:
    out = redact("FATAL: password for user app was wr0ngPass! (wr0ngPass!)", ["wr0ngPass!"])
    assert "wr0ngPass" not in out
    assert out.count("***") == 2
    # A very short value is not masked everywhere (that would garble the message).
    assert redact("a b c", ["a"]) == "a b c"


def test_redaction_is_idempotent() -> None:
    once = redact("postgresql://u:pw@h/db password=x token=y")
    assert redact(once) == once
