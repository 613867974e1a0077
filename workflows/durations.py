"""Duration strings of the flow file (`500ms`, `0.5s`, `90s`, `10m`, `4h`, `1h30m`).

Kept apart from the spec so that activities, the CLI and the API parse durations the
same way the compiler does.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_PATTERN = r"^(\d+(\.\d+)?(ms|s|m|h|d))+$"
#: The longest duration a flow may name (a year): far beyond any sane timeout or wait, far
#: below what `timedelta` and Temporal's timers can hold, so a typo is an error, not a crash.
MAX_DURATION_S = 366 * 86400.0
MAX_DURATION_TEXT = "366d"
#: Longer duration text is refused before any number in it is converted.
MAX_DURATION_CHARS = 64


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
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("a duration must be a finite number of seconds")
        if value < 0:
            raise ValueError("a duration cannot be negative")
        if value > MAX_DURATION_S:  # before float(): a 400-digit int overflows it
            shown = str(value) if len(str(value)) <= 20 else str(value)[:20] + "..."
            raise ValueError(f"duration of {shown}s is too long: at most {MAX_DURATION_TEXT}")
        return _bounded(float(value), f"{value}s")
    if not isinstance(value, str):
        raise ValueError("expected a duration such as 90s, 10m or 1h30m")
    text = value.strip()
    if len(text) > MAX_DURATION_CHARS:
        raise ValueError(
            f"invalid duration {text[:20]}...: at most {MAX_DURATION_CHARS} characters, "
            f"and at most {MAX_DURATION_TEXT}"
        )
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
    return _bounded(total, repr(value))


def _bounded(seconds: float, shown: str) -> timedelta:
    if not math.isfinite(seconds) or seconds > MAX_DURATION_S:
        raise ValueError(f"duration {shown} is too long: at most {MAX_DURATION_TEXT}")
    return timedelta(seconds=seconds)


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
