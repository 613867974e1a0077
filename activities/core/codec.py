"""Payload encryption: a Temporal `PayloadCodec` with AES-256-GCM and rotating keys.

Everything shipflow hands to Temporal (the Plan with its commands, run args, step outputs,
the status memo, activity summaries, failure messages) passes through a data converter.
With this codec in it, Temporal's history holds only ciphertext: whoever reads the server's
database, a dump of it, or the history without our keys learns nothing about a run's data.

A key ring is `id:base64key` entries (32-byte keys). The first entry is the *current* key:
new payloads are encrypted with it and carry its id in their metadata. Every other entry
is still accepted for decoding, so keys rotate by putting a new key first and keeping the
old ones until no history that needs them is kept any more.

Decoding passes through payloads that are not encrypted, so histories written before
encryption was turned on (and the recorded histories the replay tests use) stay readable.
An encrypted payload whose key id is not in the ring, or that does not authenticate with
the key of its id, raises `PayloadKeyError` naming the key id: never a key or plaintext.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.converter import DefaultFailureConverter, PayloadCodec, PayloadConverter

#: `encoding` metadata of an encrypted payload (the convention Temporal's samples use).
ENCODING = b"binary/encrypted"
#: Metadata entry naming the key a payload was encrypted with.
KEY_ID_METADATA = "encryption-key-id"
#: Name of the key file in the data dir (the embedded stack writes it, mode 0600).
KEY_FILE_NAME = "payload-keys"

_NONCE_BYTES = 12
_KEY_BYTES = 32
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class PayloadKeyError(Exception):
    """A payload cannot be decrypted with the configured keys, or the keys are malformed.

    The message names key ids and settings only; it never contains key material or data.
    """


class KeyRing:
    """Named AES-256 keys; the first is the one new payloads are encrypted with."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]):
        if not keys:
            raise PayloadKeyError("a payload key ring needs at least one key")
        self._keys: dict[str, AESGCM] = {}
        for key_id, key in keys:
            if not _KEY_ID.match(key_id):
                raise PayloadKeyError(
                    f"payload key id {key_id!r} is invalid: use 1-64 of [A-Za-z0-9._-]"
                )
            if len(key) != _KEY_BYTES:
                raise PayloadKeyError(
                    f"payload key {key_id!r} is {len(key)} bytes; AES-256 needs {_KEY_BYTES}"
                )
            if key_id in self._keys:
                raise PayloadKeyError(f"payload key id {key_id!r} appears twice")
            self._keys[key_id] = AESGCM(key)
        self.current_id = keys[0][0]

    @property
    def ids(self) -> list[str]:
        return list(self._keys)

    def cipher(self, key_id: str) -> AESGCM | None:
        return self._keys.get(key_id)

    def __repr__(self) -> str:  # never the keys themselves
        return f"KeyRing(current={self.current_id!r}, ids={self.ids!r})"


def parse_keys(text: str, *, source: str) -> KeyRing:
    """A KeyRing from `id:base64key` entries separated by commas or newlines.

    Blank lines and lines starting with `#` are ignored (a key file may be commented).

    Raises:
        PayloadKeyError: an entry is malformed; the message names `source` and the entry's
            position or key id, never its key.
    """
    entries: list[tuple[str, bytes]] = []
    lines = [line for line in text.splitlines() if not line.strip().startswith("#")]
    items = [item.strip() for line in lines for item in line.split(",")]
    for position, item in enumerate(i for i in items if i):
        key_id, sep, encoded = item.partition(":")
        key_id = key_id.strip()
        if not sep or not key_id:
            raise PayloadKeyError(f"{source}: entry {position + 1} is not 'id:base64key'")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise PayloadKeyError(f"{source}: the key of {key_id!r} is not valid base64") from None
        entries.append((key_id, key))
    if not entries:
        raise PayloadKeyError(f"{source} holds no key")
    try:
        return KeyRing(entries)
    except PayloadKeyError as e:
        raise PayloadKeyError(f"{source}: {e}") from None


def new_key_entry(key_id: str | None = None) -> str:
    """A fresh `id:base64key` entry with a random 256-bit key."""
    key_id = key_id or "k" + secrets.token_hex(4)
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(_KEY_BYTES)).decode()}"


def ensure_key_file(path: Path) -> bool:
    """Create a key file with one fresh key, mode 0600, unless it exists. True if created.

    The file is created with `O_EXCL` and the mode set at creation, so the key is never
    readable by others, not even for a moment.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write("# shipflow payload keys: id:base64key, the first encrypts, all decrypt\n")
        out.write(new_key_entry() + "\n")
    return True


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over the whole serialized payload (metadata included).

    Each payload gets a random 96-bit nonce, stored before the ciphertext. The key id is
    authenticated as associated data, so a payload relabelled with another key id fails
    to decrypt instead of decrypting to garbage.
    """

    def __init__(self, keys: KeyRing):
        self.keys = keys

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        key_id = self.keys.current_id
        cipher = self.keys.cipher(key_id)
        assert cipher is not None
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = cipher.encrypt(nonce, payload.SerializeToString(), key_id.encode())
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id.encode()},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        """The original payload; a payload that is not encrypted is returned as it is.

        Raises:
            PayloadKeyError: unknown key id, or the ciphertext does not authenticate.
        """
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        cipher = self.keys.cipher(key_id)
        if cipher is None:
            raise PayloadKeyError(
                f"payload was encrypted with key id {key_id!r}, which is not configured "
                f"(configured: {', '.join(self.keys.ids)}); add it to SHIPFLOW_PAYLOAD_KEYS"
            )
        data = payload.data
        try:
            plain = cipher.decrypt(data[:_NONCE_BYTES], data[_NONCE_BYTES:], key_id.encode())
        except (InvalidTag, ValueError):  # ValueError: too short to hold a nonce and tag
            raise PayloadKeyError(
                f"payload encrypted with key id {key_id!r} does not decrypt with the "
                "configured key of that id (wrong key, or the payload was altered)"
            ) from None
        return Payload.FromString(plain)


class EncryptedFailureConverter(DefaultFailureConverter):
    """Failure messages and stack traces go into the failure's encoded attributes, so the
    codec encrypts them (a failed command's message quotes its output).

    Except a `PayloadKeyError`: it says which key is missing, to the very reader who lacks
    it (a worker with the wrong key fails its workflow tasks with it), and it never holds
    data or key material, so it stays readable in the history and the worker's log.
    """

    def __init__(self) -> None:
        super().__init__(encode_common_attributes=True)

    def to_failure(
        self, exception: BaseException, payload_converter: PayloadConverter, failure: Failure
    ) -> None:
        super().to_failure(exception, payload_converter, failure)
        if isinstance(exception, PayloadKeyError):
            failure.message = str(exception)
            failure.stack_trace = ""
            failure.ClearField("encoded_attributes")
