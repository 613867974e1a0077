"""The local runtime's key: the credential every call to its control port must carry.

The control port starts and stops processes, so it is as powerful as the worker; anyone
on the host could otherwise use it. The runtime generates a random key at its first start
into `<its data dir>/runtime.key` (mode 0600, so only its owner can read it; written whole
or not at all), or takes one given in `SHIPFLOW_RUNTIME_KEY`. The worker (and the embedded stack) send it as
`Authorization: Bearer <key>`; by default they read it from
`<SHIPFLOW_DATA_DIR>/runtime/runtime.key`, which is where `shipflow dev` puts the
runtime's data dir, so both ends agree without configuration.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

from shipflow.activities.core.settings import Settings

KEY_FILE = "runtime.key"
KEY_ENV = "SHIPFLOW_RUNTIME_KEY"


class RuntimeKeyError(Exception):
    """The key file cannot be created or read."""


def ensure_key(data_dir: Path, given: str | None = None) -> str:
    """The runtime's key: `given`, else the key file's, else a new one written there (0600).

    A new key is written whole to a temporary file (0600 from its creation) and then
    linked into place: a crash or a full disk while writing never leaves an empty key
    file behind (which every later start would refuse), and `link`, unlike `rename`,
    never replaces a key that another process starting at the same time put there first.
    """
    if given:
        return given
    path = data_dir / KEY_FILE
    if path.exists():
        return read_key_file(path)
    key = secrets.token_urlsafe(32)
    fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=f".{KEY_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return read_key_file(path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return key


def read_key_file(path: Path) -> str:
    """Read a key file, making sure that only its owner can read it.

    Raises:
        RuntimeKeyError: the file cannot be read or is empty.
    """
    try:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)  # a key others can read is no key
        key = path.read_text().strip()
    except OSError as e:
        raise RuntimeKeyError(f"cannot read the runtime key file {path}: {e.strerror or e}") from None
    if not key:
        raise RuntimeKeyError(f"the runtime key file {path} is empty")
    return key


def key_file_for(settings: Settings) -> Path:
    """Where the worker looks for the key: the setting, or the default runtime data dir."""
    if settings.runtime_key_file is not None:
        return settings.runtime_key_file
    return settings.data_dir / "runtime" / KEY_FILE


def client_key(settings: Settings) -> str | None:
    """The key a client of the runtime sends, or None when none is configured or written."""
    if settings.runtime_key is not None:
        return settings.runtime_key.get_secret_value()
    path = key_file_for(settings)
    if not path.exists():
        return None
    return read_key_file(path)


def auth_headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def key_matches(expected: str, authorization: str | None) -> bool:
    """Constant-time check of an `Authorization: Bearer <key>` header."""
    if not authorization:
        return False
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode(), expected.encode())
