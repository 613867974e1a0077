"""The payload codec and its keys: AES-256-GCM round trip, rotation, pass-through of clear
payloads, and clear errors for unknown keys, altered payloads and malformed key settings."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter

from shipflow.activities.core.client import data_converter, payload_keys
from shipflow.activities.core.codec import (
    ENCODING,
    KEY_FILE_NAME,
    KEY_ID_METADATA,
    EncryptionCodec,
    PayloadKeyError,
    ensure_key_file,
    new_key_entry,
    parse_keys,
)
from shipflow.activities.core.settings import Settings

OLD = new_key_entry("old")
NEW = new_key_entry("new")


def clear(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=f'"{text}"'.encode())


def key_of(entry: str) -> str:
    return entry.split(":", 1)[1]


async def test_round_trip_hides_data_and_metadata() -> None:
    codec = EncryptionCodec(parse_keys(OLD, source="test"))
    original = clear("deploy secret-value-123")
    (sealed,) = await codec.encode([original])
    assert sealed.metadata["encoding"] == ENCODING
    assert sealed.metadata[KEY_ID_METADATA] == b"old"
    assert set(sealed.metadata) == {"encoding", KEY_ID_METADATA}  # json/plain is inside
    assert b"secret-value-123" not in sealed.data and b"json/plain" not in sealed.data
    (again,) = await codec.encode([original])
    assert again.data != sealed.data, "every payload gets its own nonce"
    assert await codec.decode([sealed, again]) == [original, original]


async def test_clear_payloads_pass_through_decode() -> None:
    """Histories written before encryption (and the recorded replay histories) stay readable."""
    codec = EncryptionCodec(parse_keys(OLD, source="test"))
    original = clear("from before encryption")
    assert await codec.decode([original]) == [original]


async def test_rotation_new_key_encrypts_old_key_still_decrypts() -> None:
    before = EncryptionCodec(parse_keys(OLD, source="test"))
    (old_payload,) = await before.encode([clear("written last year")])
    after = EncryptionCodec(parse_keys(f"{NEW},{OLD}", source="test"))
    assert await after.decode([old_payload]) == [clear("written last year")]
    (new_payload,) = await after.encode([clear("written today")])
    assert new_payload.metadata[KEY_ID_METADATA] == b"new"
    # Once the old key is dropped, old payloads fail clearly, new ones still decode.
    dropped = EncryptionCodec(parse_keys(NEW, source="test"))
    assert await dropped.decode([new_payload]) == [clear("written today")]
    with pytest.raises(PayloadKeyError) as raised:
        await dropped.decode([old_payload])
    message = str(raised.value)
    assert "'old'" in message and "not configured" in message and "new" in message
    assert key_of(NEW) not in message and key_of(OLD) not in message


async def test_wrong_key_altered_payload_and_relabelled_key_id_fail_clearly() -> None:
    codec = EncryptionCodec(parse_keys(OLD, source="test"))
    (sealed,) = await codec.encode([clear("x")])
    impostor = EncryptionCodec(parse_keys(new_key_entry("old"), source="test"))  # same id
    with pytest.raises(PayloadKeyError, match="does not decrypt with the configured key"):
        await impostor.decode([sealed])
    altered = Payload()
    altered.CopyFrom(sealed)
    altered.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(PayloadKeyError, match="altered"):
        await codec.decode([altered])
    # The key id is authenticated: moving a payload under another id does not decrypt.
    both = EncryptionCodec(parse_keys(f"{OLD},other:{key_of(OLD)}", source="test"))
    relabelled = Payload()
    relabelled.CopyFrom(sealed)
    relabelled.metadata[KEY_ID_METADATA] = b"other"
    with pytest.raises(PayloadKeyError):
        await both.decode([relabelled])


@pytest.mark.parametrize("data", [b"", b"abc", b"0123456789a"])
async def test_a_truncated_payload_is_a_key_error_not_a_crash(data: bytes) -> None:
    """Regression: under 8 bytes AES-GCM raised ValueError (a 500 from /codec/decode)."""
    codec = EncryptionCodec(parse_keys(OLD, source="test"))
    (sealed,) = await codec.encode([clear("x")])
    short = Payload()
    short.CopyFrom(sealed)
    short.data = data
    with pytest.raises(PayloadKeyError, match="altered"):
        await codec.decode([short])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "holds no key"),
        ("# only a comment\n", "holds no key"),
        ("nokey", "entry 1 is not 'id:base64key'"),
        (":" + key_of(OLD), "entry 1 is not 'id:base64key'"),
        ("a:***", "the key of 'a' is not valid base64"),
        ("a:" + base64.b64encode(b"0" * 16).decode(), "'a' is 16 bytes; AES-256 needs 32"),
        (f"a:{key_of(OLD)},a:{key_of(NEW)}", "'a' appears twice"),
        (f"bad id:{key_of(OLD)}", "payload key id 'bad id' is invalid"),
    ],
    # Fixed ids: the keys are random per process, and parallel test processes must collect
    # the same test names (and a test name should not show a key either).
    ids=["empty", "comment", "no-colon", "no-id", "bad-base64", "short", "twice", "bad-id"],
)
def test_malformed_keys_are_named_never_shown(text: str, expected: str) -> None:
    with pytest.raises(PayloadKeyError) as raised:
        parse_keys(text, source="SHIPFLOW_PAYLOAD_KEYS")
    message = str(raised.value)
    assert message.startswith("SHIPFLOW_PAYLOAD_KEYS")
    assert expected in message
    assert key_of(OLD) not in message and key_of(NEW) not in message


def test_key_ring_repr_and_file_format() -> None:
    ring = parse_keys(f"# keys\n{NEW}\n\n{OLD}\n", source="file")
    assert ring.current_id == "new" and ring.ids == ["new", "old"]
    assert key_of(NEW) not in repr(ring)


def test_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "data" / KEY_FILE_NAME
    assert ensure_key_file(path) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text()
    ring = parse_keys(first, source=str(path))
    assert len(ring.ids) == 1
    assert ensure_key_file(path) is False, "an existing key file is never overwritten"
    assert path.read_text() == first


def test_where_the_keys_come_from(tmp_path: Path) -> None:
    base = Settings(data_dir=tmp_path, payload_keys=None, payload_key_file=None)
    assert payload_keys(base) is None
    assert data_converter(base) is pydantic_data_converter  # no keys: clear, as before
    ensure_key_file(tmp_path / KEY_FILE_NAME)
    from_dir = payload_keys(base)
    assert from_dir is not None and len(from_dir.ids) == 1
    assert data_converter(base).payload_codec is not None
    explicit = base.model_copy(update={"payload_keys": SecretStr(f"{NEW},{OLD}")})
    ring = payload_keys(explicit)
    assert ring is not None and ring.ids == ["new", "old"]  # the setting wins over the file
    missing = base.model_copy(update={"payload_key_file": tmp_path / "nope"})
    with pytest.raises(PayloadKeyError, match=r"payload key file .*nope"):
        payload_keys(missing)


@pytest.mark.parametrize("command", ["worker", "api"])
def test_worker_and_api_commands_refuse_malformed_keys_with_exit_2(command: str) -> None:
    shipflow = Path(sys.executable).parent / "shipflow"
    bad = "k1:" + base64.b64encode(b"too-short-key").decode()
    done = subprocess.run(
        [str(shipflow), command],
        env={**os.environ, "SHIPFLOW_PAYLOAD_KEYS": bad},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "SHIPFLOW_PAYLOAD_KEYS: payload key 'k1' is 13 bytes" in done.stderr
    assert "Traceback" not in done.stderr and bad.split(":")[1] not in done.stderr
