"""The orchestration benchmark's measurements and report: per case, the wall and CPU times of
both sides, their ratios against the issue's targets, and the history each run left."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

#: Targets from issue 12: interpreter over baseline, medians of wall time and worker CPU.
WALL_TARGET = 1.10
CPU_TARGET = 1.10
#: Short steps run as local activities must beat the hand-written regular-activity workflow.
SHORT_TARGET = 1.0
CONFIG_NOTES = {
    "default": "Temporal's dynamic config defaults",
    "no-eager": "`tuned` with `system.enableActivityEagerExecution=false` (Temporal's "
    "server default; the dev server turns it on by itself)",
    "sandbox": "`tuned`, with the worker running both sides in Temporal's workflow sandbox "
    "(`SHIPFLOW_WORKFLOW_SANDBOX=true`; the worker's default before issue 12's sandbox change)",
    "tuned": "`history.transferProcessorMaxPollRPS=1000` and "
    "`system.enableActivityEagerExecution=true`, as `shipflow dev` starts it",
}


@dataclass
class HistoryStats:
    """One run's history: what the server stores, sends to workers and replays."""

    events: int
    bytes: int
    #: Bytes of the WORKFLOW_PROPERTIES_MODIFIED events (memo upserts).
    memo_bytes: int
    #: Median time from WORKFLOW_TASK_SCHEDULED to STARTED: the server's dispatch latency.
    task_dispatch_ms: float
    #: MARKER_RECORDED events: patch markers and local activities.
    markers: int = 0
    #: WORKFLOW_PROPERTIES_MODIFIED events: memo upserts.
    memo_upserts: int = 0

    def __str__(self) -> str:
        return (
            f"{self.events} events, {self.bytes / 1024:.1f} KiB "
            f"({self.memo_bytes / 1024:.1f} KiB memo), "
            f"workflow task dispatch {self.task_dispatch_ms:.1f} ms (median)"
        )


@dataclass
class Comparison:
    """Wall times (seconds) of the same work done by the baseline and by the interpreter."""

    name: str
    steps: int
    config: str = "tuned"
    baseline_s: list[float] = field(default_factory=list)
    interpreter_s: list[float] = field(default_factory=list)
    #: CPU time of the worker process (all threads) per measured run.
    baseline_cpu_s: list[float] = field(default_factory=list)
    interpreter_cpu_s: list[float] = field(default_factory=list)
    target: float | None = WALL_TARGET
    cpu_target: float | None = CPU_TARGET
    runs: int = 1
    #: History of the last run of each side.
    baseline_history: HistoryStats | None = None
    interpreter_history: HistoryStats | None = None

    @property
    def baseline_median(self) -> float:
        return statistics.median(self.baseline_s)

    @property
    def interpreter_median(self) -> float:
        return statistics.median(self.interpreter_s)

    @property
    def ratio(self) -> float:
        """Interpreter over baseline, medians of wall time."""
        return self.interpreter_median / self.baseline_median

    @property
    def min_ratio(self) -> float:
        """Interpreter over baseline, best runs: what each side can do on a quiet machine."""
        return min(self.interpreter_s) / min(self.baseline_s)

    @property
    def cpu_ratio(self) -> float:
        return statistics.median(self.interpreter_cpu_s) / statistics.median(self.baseline_cpu_s)

    def cpu_per_step_ms(self, samples: list[float]) -> float:
        return statistics.median(samples) * 1000 / (self.steps * self.runs)

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio <= self.target

    @property
    def cpu_met(self) -> bool | None:
        return None if self.cpu_target is None else self.cpu_ratio <= self.cpu_target

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": self.config,
            "steps": self.steps,
            "runs": self.runs,
            "baseline_s": self.baseline_s,
            "interpreter_s": self.interpreter_s,
            "baseline_median_s": self.baseline_median,
            "interpreter_median_s": self.interpreter_median,
            "baseline_min_s": min(self.baseline_s),
            "interpreter_min_s": min(self.interpreter_s),
            "ratio": self.ratio,
            "min_ratio": self.min_ratio,
            "baseline_cpu_s": self.baseline_cpu_s,
            "interpreter_cpu_s": self.interpreter_cpu_s,
            "cpu_ratio": self.cpu_ratio,
            "baseline_history": asdict(self.baseline_history) if self.baseline_history else None,
            "interpreter_history": (
                asdict(self.interpreter_history) if self.interpreter_history else None
            ),
            "target": self.target,
            "met": self.met,
            "cpu_target": self.cpu_target,
            "cpu_met": self.cpu_met,
        }


def _yes(met: bool | None) -> str:
    return {None: "-", True: "yes", False: "**no**"}[met]


@dataclass
class OrchestrationReport:
    comparisons: list[Comparison]
    reps: int
    activity_calls: dict[str, int]

    def ratios(self) -> dict[str, float]:
        return {f"{c.config}: {c.name}": c.ratio for c in self.comparisons}

    def configs(self) -> list[str]:
        return list(dict.fromkeys(c.config for c in self.comparisons))

    def as_dict(self) -> dict[str, Any]:
        return {
            "reps": self.reps,
            "ratios": self.ratios(),
            "comparisons": [c.as_dict() for c in self.comparisons],
            "activity_calls": self.activity_calls,
            "markdown": self.markdown(),
        }

    def markdown(self) -> str:
        lines = [
            "## Orchestration overhead (ReleaseWorkflow vs hand-written workflow)",
            "",
            "Same no-op activity (`notify.send`), same count, one worker process for both "
            "sides on one task queue of a fresh in-memory Temporal dev server per config; "
            "baseline and interpreter runs interleaved (order alternating), "
            f"{self.reps} measured repetitions after one warm-up of each (fewer for the "
            "concurrent case, see the samples); wall time from `start_workflow` to the result. "
            "The baseline calls the activity as a regular activity; the interpreter runs the "
            "flow as a user would get it (local activities where it chooses them, its memo, "
            "search attributes, status bookkeeping and its two `records.run` calls: running, then final). "
            "CPU is the worker process's own (all threads, the SDK's native core included); "
            "the client and the dev server run apart. Both sides run outside Temporal's workflow "
            "sandbox, as the production worker does, except on config `sandbox`. On configs "
            "other than `tuned` and `sandbox` only the cases in `DEFAULT_CONFIG_CASES` run "
            "(see there why). Configs: "
            + "; ".join(
                f"`{name}`: {CONFIG_NOTES[name]}" for name in self.configs() if name in CONFIG_NOTES
            )
            + ".",
            "",
        ]
        if len(self.configs()) > 1:
            lines += self._side_by_side()
        for config in self.configs():
            lines += self._config_table(config)
        lines += [
            "History of one run (the last of each side): events, size, of which memo "
            "upserts, and the median wait of a workflow task between scheduled and started:",
            "",
        ]
        for c in self.comparisons:
            if c.baseline_history and c.interpreter_history:
                lines.append(
                    f"- {c.config}, {c.name}: baseline {c.baseline_history}; "
                    f"interpreter {c.interpreter_history}"
                )
        calls = ", ".join(f"`{k}` {v}" for k, v in self.activity_calls.items())
        lines += ["", f"No-op activity calls, warm-ups included: {calls}.", ""]
        return "\n".join(lines)

    def _side_by_side(self) -> list[str]:
        configs = self.configs()
        head = " | ".join(f"{c}: baseline | {c}: interpreter" for c in configs)
        lines = [
            "### Config before/after (median wall time; per step for one run)",
            "",
            f"| case | {head} |",
            "|---|" + "---:|" * (2 * len(configs)),
        ]
        names = list(dict.fromkeys(c.name for c in self.comparisons))
        for name in names:
            cells = []
            for config in configs:
                match = [c for c in self.comparisons if c.name == name and c.config == config]
                if not match:
                    cells += ["-", "-"]
                    continue
                c = match[0]
                for median in (c.baseline_median, c.interpreter_median):
                    per_step = median * 1000 / c.steps if c.runs == 1 else None
                    each = f" ({per_step:.1f} ms/step)" if per_step is not None else ""
                    cells.append(f"{median * 1000:.0f} ms{each}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return [*lines, ""]

    def _config_table(self, config: str) -> list[str]:
        lines = [
            f"### Config `{config}`",
            "",
            "| case | baseline min / median | interpreter min / median | ratio (median) "
            "| ratio (min) | target | met | worker CPU/step baseline | interpreter "
            "| CPU ratio | target | met |",
            "|---|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|:---:|",
        ]
        mine = [c for c in self.comparisons if c.config == config]
        for c in mine:
            target = f"<= {c.target:.2f}" if c.target is not None else "-"
            cpu_target = f"<= {c.cpu_target:.2f}" if c.cpu_target is not None else "-"
            lines.append(
                f"| {c.name} | {min(c.baseline_s) * 1000:.0f} / {c.baseline_median * 1000:.0f} ms "
                f"| {min(c.interpreter_s) * 1000:.0f} / {c.interpreter_median * 1000:.0f} ms "
                f"| {c.ratio:.2f} | {c.min_ratio:.2f} | {target} | {_yes(c.met)} "
                f"| {c.cpu_per_step_ms(c.baseline_cpu_s):.2f} ms "
                f"| {c.cpu_per_step_ms(c.interpreter_cpu_s):.2f} ms "
                f"| {c.cpu_ratio:.2f} | {cpu_target} | {_yes(c.cpu_met)} |"
            )
        lines += ["", f"Wall-time samples (ms, in run order), `{config}`:", ""]
        for c in mine:
            lines.append(
                f"- {c.name}: baseline {_ms(c.baseline_s)}; interpreter {_ms(c.interpreter_s)}"
            )
        return [*lines, ""]


def _ms(samples: list[float]) -> str:
    return ", ".join(f"{s * 1000:.0f}" for s in samples)
