"""Duration strings of the flow file (`500ms`, `0.5s`, `90s`, `10m`, `4h`, `1h30m`).

Kept apart from the spec so that activities, the CLI and the API parse durations the
same way the compiler does.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_PATTERN = r"^(\d+(\.\d+)?(ms|s|m|h|d))+$"


def parse_duration(value: Any) -> timedelta:
    """Parse a duration string or a number of seconds.

    Raises:
        ValueError: the value is not a duration; the message says what is accepted.
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 90s, 10m or 1h30m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return timedelta(seconds=float(value))
    if not isinstance(value, str):
        raise ValueError("expected a duration such as 90s, 10m or 1h30m")
    text = value.strip()
    pos = 0
    total = 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(
            f"invalid duration {value!r}: use forms like 500ms, 0.5s, 90s, 10m, 4h, 1h30m"
        )
    return timedelta(seconds=total)


def format_duration(value: timedelta | float) -> str:
    """Render seconds the way a user would write them (`1h30m`, `90s` -> `1m30s`)."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    out = ""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size:
            count = int(seconds // size)
            out += f"{count}{unit}"
            seconds -= count * size
    if seconds or not out:
        out += f"{seconds:g}s"
    return out


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {"type": "string", "pattern": DURATION_PATTERN, "examples": ["90s", "10m", "1h30m"]}
    ),
]
