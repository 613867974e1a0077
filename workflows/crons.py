"""Cron triggers checked without Temporal: expressions, time zones, schedule ids, their args.

Shared by the flow validator (`shipflow flow validate`, `POST /flows`) and the schedule
sync in the API, so that what validates is exactly what can be scheduled.
"""

from __future__ import annotations

import difflib
import zoneinfo
from functools import cache

from croniter import croniter

from shipflow.workflows.spec import CronTrigger, FlowSpec

MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


def validate_cron(expr: str, tz: str = "UTC") -> None:
    """Check a cron expression (5 fields, or a macro like `@daily`) and an IANA zone.

    Raises:
        ValueError: with a message naming what is wrong; the message starts with
            `timezone` when it is the zone that is wrong.
    """
    text = expr.strip()
    if text.lower() not in MACROS:
        fields = text.split()
        if len(fields) != 5:
            raise ValueError(
                f"cron {expr!r} must have 5 fields (minute hour day-of-month month "
                f"day-of-week) or be one of {', '.join(sorted(MACROS))}; it has {len(fields)}"
            )
        try:
            croniter(text)
        except (ValueError, KeyError) as e:  # croniter's errors are ValueErrors
            raise ValueError(f"invalid cron {expr!r}: {e}") from None
    validate_timezone(tz)


def validate_timezone(tz: str) -> None:
    """Raises ValueError unless `tz` is an IANA time zone name (`Europe/Berlin`, `UTC`)."""
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"timezone {tz!r} is not an IANA time zone name (e.g. UTC, Europe/Berlin)"
        ) from None


@cache
def _zones() -> tuple[str, ...]:
    return tuple(sorted(zoneinfo.available_timezones()))


def closest_timezone(tz: str) -> str | None:
    """The known zone name closest to `tz` (`Europe/Berln` -> `Europe/Berlin`), if any."""
    by_lower = {zone.lower(): zone for zone in _zones()}
    if tz.lower() in by_lower:
        return by_lower[tz.lower()]
    found = difflib.get_close_matches(tz.lower(), list(by_lower), n=1, cutoff=0.75)
    return by_lower[found[0]] if found else None


def cron_triggers(spec: FlowSpec) -> list[tuple[int, CronTrigger]]:
    return [(i, t) for i, t in enumerate(spec.triggers) if isinstance(t, CronTrigger)]


def trigger_problems(spec: FlowSpec) -> list[tuple[str, str]]:
    """Every problem of the flow's cron triggers, as (path, message) like FlowError.

    Checks the expression, the zone, that two triggers do not map to one schedule id
    (`shipflow-<flow>-<id or index>`), and that the trigger's args give every required
    argument (a cron run has nobody to ask for a missing one).
    """
    problems: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for index, trigger in cron_triggers(spec):
        where = f"triggers[{index}]"
        try:
            validate_timezone(trigger.timezone)
        except ValueError as e:
            problems.append((f"{where}.timezone", str(e)))
        try:
            validate_cron(trigger.cron)
        except ValueError as e:
            problems.append((f"{where}.cron", str(e)))
        key = trigger.id or str(index)
        if key in seen:
            problems.append(
                (
                    f"{where}.id",
                    f"schedule id 'shipflow-{spec.name}-{key}' is already used by "
                    f"triggers[{seen[key]}]: give each cron trigger its own id",
                )
            )
        seen.setdefault(key, index)
        missing = [n for n, a in spec.args.items() if a.default is None and n not in trigger.args]
        for name in missing:
            problems.append(
                (f"{where}.args.{name}", "required argument: a cron trigger must give it")
            )
    return problems
