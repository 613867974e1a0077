"""Secret group values at rest: AES-256-GCM with a rotating key ring from one key file.

The key file holds `id:base64key` lines like the payload key file (the first key seals
new values, every key opens; see `shipflow.activities.core.codec.KeyRing`). Its path is
the one setting `SHIPFLOW_GROUPS_KEY_FILE`, default `<data_dir>/groups-keys`; the
embedded stack writes one there at its first start (mode 0600).

A sealed value is `sf1:<key id>:<base64(nonce + ciphertext)>`, the group name and key
authenticated as associated data, so a value copied to another key or group in the
database does not open. Errors name key ids and settings, never a key or a value.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag

from shipflow.activities.core.codec import KeyRing, PayloadKeyError, ensure_key_file, parse_keys
from shipflow.activities.core.settings import Settings

PREFIX = "sf1"
KEY_FILE_NAME = "groups-keys"
_NONCE = 12


class GroupKeyError(Exception):
    """The groups key is missing or malformed, or a value does not open with it."""


def key_file(settings: Settings) -> Path:
    return settings.groups_key_file or settings.data_dir / KEY_FILE_NAME


def load_ring(settings: Settings) -> KeyRing:
    """The key ring from the key file, read afresh (a rotation takes effect at once).

    Raises:
        GroupKeyError: no key file, or a malformed one; the message says which setting.
    """
    path = key_file(settings)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise GroupKeyError(
            f"no key for secret groups: {path} does not exist; set SHIPFLOW_GROUPS_KEY_FILE "
            "to a file of 'id:base64key' lines (`shipflow dev` generates one)"
        ) from None
    except OSError as e:
        raise GroupKeyError(f"cannot read the groups key file {path}: {e.strerror}") from None
    try:
        return parse_keys(text, source=f"groups key file {path}")
    except PayloadKeyError as e:
        raise GroupKeyError(str(e)) from None


def check_key(settings: Settings) -> None:
    """At startup: a key file that was configured explicitly must load.

    Raises:
        GroupKeyError: SHIPFLOW_GROUPS_KEY_FILE is set but missing or malformed.
    """
    if settings.groups_key_file is not None:
        load_ring(settings)


def ensure_groups_key(path: Path) -> bool:
    """Create the groups key file (one fresh key, 0600) unless it exists. True if created."""
    return ensure_key_file(path)


def _aad(group: str, key: str) -> bytes:
    return f"{group}/{key}".encode()


def seal(ring: KeyRing, group: str, key: str, value: str) -> str:
    cipher = ring.cipher(ring.current_id)
    assert cipher is not None
    nonce = secrets.token_bytes(_NONCE)
    sealed = cipher.encrypt(nonce, value.encode(), _aad(group, key))
    return f"{PREFIX}:{ring.current_id}:{base64.b64encode(nonce + sealed).decode()}"


def key_id_of(sealed: str) -> str:
    return sealed.split(":", 2)[1] if sealed.count(":") >= 2 else ""


def open_value(ring: KeyRing, group: str, key: str, sealed: str) -> str:
    """The clear value of a sealed one.

    Raises:
        GroupKeyError: unknown key id, or the value does not authenticate.
    """
    prefix, _, rest = sealed.partition(":")
    key_id, _, body = rest.partition(":")
    if prefix != PREFIX or not body:
        raise GroupKeyError(f"the stored value of {group}/{key} is not a sealed value")
    cipher = ring.cipher(key_id)
    if cipher is None:
        raise GroupKeyError(
            f"{group}/{key} was sealed with key id {key_id!r}, which the groups key file does "
            f"not hold (it holds: {', '.join(ring.ids)})"
        )
    try:
        raw = base64.b64decode(body, validate=True)
        return cipher.decrypt(raw[:_NONCE], raw[_NONCE:], _aad(group, key)).decode()
    except (InvalidTag, ValueError, binascii.Error):
        raise GroupKeyError(
            f"{group}/{key} does not open with the groups key {key_id!r} (wrong key or altered)"
        ) from None


def add_key(path: Path) -> str:
    """Put a fresh key first in the key file (it seals from now on; old ones still open).

    Returns the new key's id. The file keeps its 0600 mode (rewritten through a 0600
    temporary file and a rename).
    """
    import os

    from shipflow.activities.core.codec import new_key_entry

    old = path.read_text() if path.exists() else ""
    entry = new_key_entry()
    lines = [line for line in old.splitlines() if line.strip() and not line.startswith("#")]
    text = "# shipflow groups keys: id:base64key, the first seals, all open\n"
    text += "\n".join([entry, *lines]) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)
    return entry.split(":", 1)[0]
