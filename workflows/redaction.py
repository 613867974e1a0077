"""One redaction function for every error and log line that may carry a credential.

Connection strings and URLs reach messages from many places: a `database:` that does not
parse, a tool's stderr that echoes its connection string, an S3 error that quotes a
presigned URL, a webhook URL with a token in its query, an HTTP client's request log.
Masking each of those where it is printed is how a password ends up in a log after all,
so they all go through `redact`, which masks, wherever they occur in free text:

- the password of a URL's userinfo (`scheme://user:password@host`), keeping the user;
- libpq keyword values (`password=secret`, `password='with spaces'`, `sslpassword=`);
- query-string credentials (`?token=…`, `&key=…`, `secret=`, `access_token=`, `sig=`,
  `X-Amz-Signature=`, `X-Amz-Credential=`, `X-Amz-Security-Token=`, `api_key=`, …);
- AWS access key ids (`AKIA…`/`ASIA…`) and `aws_secret_access_key` values.

It is pure (no I/O, no clock, no environment), so workflows, activities, the API and the
worker can all import it. Masking is by pattern, so it also works on text that is not a
well-formed URL (which is exactly the text an error message quotes). Values known to be
secret (an `${env.X}` a step resolved) are masked with `redact(text, secrets=[...])`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

# Keys whose value is a credential, in a query string or as a libpq keyword.
_SECRET_KEYS = (
    r"password|passwd|pwd|sslpassword|pass|secret|client_secret|token|access_token"
    r"|refresh_token|id_token|auth|auth_token|api_key|apikey|api-key|key|sig|signature"
    r"|x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature"
    r"|x-goog-credential|aws_secret_access_key|aws_session_token|sharedaccesssignature"
)

# `scheme://user:password@host`: the password may hold anything but `@`, `/` and spaces
# ('/' would be a path already); the last `@` before the host ends it.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*):(?P<pw>[^\s/'\"]*)@")

# libpq keyword/value: `password=secret`, `password = 'with spaces and \' quotes'`.
_KEYWORD_QUOTED = re.compile(
    rf"(?P<head>(?<![A-Za-z0-9_-])(?:{_SECRET_KEYS})\s*=\s*)'(?:[^'\\]|\\.)*'(?:')?",
    re.IGNORECASE,
)
# Unquoted: up to whitespace, `&`, `;`, `#`, `,` or a quote (a query string or a keyword DSN).
_KEYWORD_PLAIN = re.compile(
    rf"(?P<head>(?<![A-Za-z0-9_-])(?:{_SECRET_KEYS})\s*=\s*)(?!'|{re.escape(MASK)})[^\s&;#,'\"]+",
    re.IGNORECASE,
)
# JSON-ish `"password": "..."` (a driver or SDK echoing its options).
_JSON_VALUE = re.compile(
    rf"(?P<head>[\"'](?:{_SECRET_KEYS})[\"']\s*:\s*)[\"'][^\"']*[\"']",
    re.IGNORECASE,
)
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every credential it may carry masked as `***`.

    Args:
        text: anything that may quote a URL, a DSN or a tool's error output.
        secrets: values known to be secret (resolved `${env.X}`s, a parsed password);
            each is masked wherever it appears, longest first. Values shorter than
            four characters are masked only inside the patterns above (masking `a`
            everywhere would garble the message and reveal the secret by its holes).

    Returns:
        The text with the user, host, port, database and options kept, credentials masked.
    """
    if not text:
        return text
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, MASK)
    text = _USERINFO.sub(lambda m: f"{m.group('head')}:{MASK}@", text)
    text = _KEYWORD_QUOTED.sub(lambda m: f"{m.group('head')}{MASK}", text)
    text = _KEYWORD_PLAIN.sub(lambda m: f"{m.group('head')}{MASK}", text)
    text = _JSON_VALUE.sub(lambda m: f'{m.group("head")}"{MASK}"', text)
    return _AWS_KEY_ID.sub(MASK, text)


__all__ = ["MASK", "redact"]
