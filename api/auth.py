"""API tokens: bearer tokens with roles viewer < operator < admin, hashed at rest.

Only the sha256 of a token is ever configured (`SHIPFLOW_TOKENS`), so a leaked settings
file or environment does not leak a usable token. Tokens are compared with
`hmac.compare_digest` against every entry, so timing does not reveal which one nearly
matched. A token value is never logged, echoed in an error, or stored.

With no tokens configured the API is open: every caller is an anonymous admin. That is
only allowed when `SHIPFLOW_OPEN_DEV_INSTANCE` says so (`shipflow.api.app.create_app` refuses to
start otherwise), so a deployment is never open by accident; `shipflow dev` configures a
token and prints it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from enum import StrEnum

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from shipflow.activities.core.settings import Settings

TOKEN_PREFIX = "sf_"


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANKS = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


class TokenEntry(BaseModel):
    """One configured token: who it is, what it may do, and the hex sha256 of its value."""

    name: str = Field(min_length=1)
    role: Role
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")


class Caller(BaseModel):
    """Who makes a request: a token's name, or `anonymous` when the API is open."""

    name: str
    role: Role


ANONYMOUS = Caller(name="anonymous", role=Role.ADMIN)


class AuthError(Exception):
    """The request carries no usable token (401). The message never contains the token."""


def hash_token(token: str) -> str:
    """The hex sha256 of a token: what goes into `SHIPFLOW_TOKENS`."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (about 256 bits), recognisable by its `sf_` prefix."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def load_tokens(settings: Settings) -> list[TokenEntry]:
    """Parse `Settings.tokens` (a JSON list of {name, role, sha256}).

    Raises:
        ValueError: the setting is not valid JSON or an entry is malformed. The message
            names the entry, never a hash.
    """
    if settings.tokens is None:
        return []
    text = settings.tokens.get_secret_value().strip()
    if not text:
        return []
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"SHIPFLOW_TOKENS is not valid JSON (line {e.lineno})") from None
    try:
        return TypeAdapter(list[TokenEntry]).validate_python(raw)
    except ValidationError as e:
        where = ", ".join(
            ".".join(str(p) for p in err["loc"]) + f": {err['msg']}" for err in e.errors()
        )
        raise ValueError(f"SHIPFLOW_TOKENS has a malformed entry ({where})") from None


class Authenticator:
    """Maps an `Authorization` header to a Caller, from the configured token hashes."""

    def __init__(self, tokens: list[TokenEntry]):
        self._tokens = [(t, bytes.fromhex(t.sha256)) for t in tokens]

    @property
    def open(self) -> bool:
        """No tokens configured: everyone is an anonymous admin."""
        return not self._tokens

    def authenticate(self, authorization: str | None) -> Caller:
        """Raises:
        AuthError: no bearer token, or one that matches no configured hash.
        """
        if self.open:
            return ANONYMOUS
        if not authorization:
            raise AuthError("missing bearer token")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("use the header 'Authorization: Bearer <token>'")
        digest = hashlib.sha256(token.encode()).digest()
        found: TokenEntry | None = None
        for entry, expected in self._tokens:  # no early exit: constant work per request
            if hmac.compare_digest(digest, expected) and found is None:
                found = entry
        if found is None:
            raise AuthError("invalid token")
        return Caller(name=found.name, role=found.role)
