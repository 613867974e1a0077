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


#: The sides a comparison can measure, in the report's order.
SIDES = ("baseline", "duties", "interpreter")


@dataclass
class Comparison:
    """Wall times (seconds) and worker CPU of the same work done by each side.

    Sides: `baseline`, the bare hand-written workflow (the activities and nothing else);
    `duties`, the hand-written workflow that also keeps a run's duties (runs index, status
    memo: `bench.orchestration_duties`), measured where the case asks for it; `interpreter`.
    The targets apply to the interpreter over `duties` when it was measured (the
    interpreter's own overhead), else over `baseline`.
    """

    name: str
    steps: int
    config: str = "tuned"
    #: Wall time per measured run (or batch), per side.
    wall: dict[str, list[float]] = field(default_factory=dict)
    #: CPU time of the worker process (all threads) per measured run, per side.
    cpu: dict[str, list[float]] = field(default_factory=dict)
    target: float | None = WALL_TARGET
    cpu_target: float | None = CPU_TARGET
    runs: int = 1
    #: History of the last run of each side.
    history: dict[str, HistoryStats] = field(default_factory=dict)

    def add(self, side: str, wall: float, cpu: float) -> None:
        self.wall.setdefault(side, []).append(wall)
        self.cpu.setdefault(side, []).append(cpu)

    @property
    def sides(self) -> list[str]:
        return [side for side in SIDES if side in self.wall]

    @property
    def reference(self) -> str:
        """The side the targets compare the interpreter with."""
        return "duties" if "duties" in self.wall else "baseline"

    def median(self, side: str) -> float:
        return statistics.median(self.wall[side])

    def wall_ratio(self, side: str, over: str) -> float:
        """`side` over `over`, medians of wall time."""
        return self.median(side) / self.median(over)

    def cpu_ratio_of(self, side: str, over: str) -> float:
        """`side` over `over`, medians of the worker's CPU."""
        return statistics.median(self.cpu[side]) / statistics.median(self.cpu[over])

    @property
    def ratio(self) -> float:
        """Interpreter over the reference side, medians of wall time."""
        return self.wall_ratio("interpreter", self.reference)

    @property
    def min_ratio(self) -> float:
        """Interpreter over the reference side, best runs: what each can do on a quiet
        machine."""
        return min(self.wall["interpreter"]) / min(self.wall[self.reference])

    @property
    def cpu_ratio(self) -> float:
        return self.cpu_ratio_of("interpreter", self.reference)

    def cpu_per_step_ms(self, samples: list[float]) -> float:
        return statistics.median(samples) * 1000 / (self.steps * self.runs)

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio <= self.target

    @property
    def cpu_met(self) -> bool | None:
        return None if self.cpu_target is None else self.cpu_ratio <= self.cpu_target

    def as_dict(self) -> dict[str, Any]:
        sides = self.sides
        return {
            "name": self.name,
            "config": self.config,
            "steps": self.steps,
            "runs": self.runs,
            "reference": self.reference,
            "wall_s": self.wall,
            "cpu_s": self.cpu,
            "median_s": {side: self.median(side) for side in sides},
            "min_s": {side: min(self.wall[side]) for side in sides},
            "ratio": self.ratio,
            "min_ratio": self.min_ratio,
            "cpu_ratio": self.cpu_ratio,
            "over_bare": {
                side: {
                    "wall": self.wall_ratio(side, "baseline"),
                    "cpu": self.cpu_ratio_of(side, "baseline"),
                }
                for side in sides
                if side != "baseline"
            },
            "history": {side: asdict(stats) for side, stats in self.history.items()},
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
            "## Orchestration overhead (ReleaseWorkflow vs hand-written workflows)",
            "",
            "Same no-op activity (`notify.send`), same count, one worker process for all "
            "sides on one task queue of a fresh in-memory Temporal dev server per config; "
            "the sides' runs interleaved (their order cycling through every permutation), "
            f"{self.reps} measured repetitions after one warm-up of each (fewer for the "
            "concurrent case, see the samples); wall time from `start_workflow` to the result. "
            "Sides: **bare**, a hand-written workflow that calls the activity as a regular "
            "activity and does nothing else; **duties**, a hand-written workflow that also "
            "keeps the two duties every shipflow run has, whoever writes it (it records its "
            "state in the runs index when it starts running and at its end: two `records.run` "
            "local activities; and mirrors its status into the memo, debounced like the "
            "interpreter's), started with the same start memo and search attributes "
            "(`bench/orchestration_duties.py`); **interpreter**, the flow as a user gets it "
            "(local activities where it chooses them, its memo, search attributes, status "
            "bookkeeping, its records). The 1.10x targets are the interpreter over "
            "*duties*, i.e. what interpreting a plan costs; over *bare* is shown beside them "
            "(the duties' cost included); cases without a duties side compare with bare. "
            "CPU is the worker process's own (all threads, the SDK's native core included); "
            "the client and the dev server run apart. All sides run outside Temporal's "
            "workflow sandbox, as the production worker does, except on config `sandbox`. On "
            "configs other than `tuned` and `sandbox` only the cases in `DEFAULT_CONFIG_CASES` "
            "run (see there why). Configs: "
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
            if c.history:
                told = "; ".join(
                    f"{_SIDE[side]} {c.history[side]}" for side in c.sides if side in c.history
                )
                lines.append(f"- {c.config}, {c.name}: {told}")
        calls = ", ".join(f"`{k}` {v}" for k, v in self.activity_calls.items())
        lines += ["", f"No-op activity calls, warm-ups included: {calls}.", ""]
        return "\n".join(lines)

    def _side_by_side(self) -> list[str]:
        configs = self.configs()
        columns = [
            (config, side)
            for config in configs
            for side in SIDES
            if any(c.config == config and side in c.wall for c in self.comparisons)
        ]
        head = " | ".join(f"{config}: {_SIDE[side]}" for config, side in columns)
        lines = [
            "### Config before/after (median wall time; per step for one run)",
            "",
            f"| case | {head} |",
            "|---|" + "---:|" * len(columns),
        ]
        names = list(dict.fromkeys(c.name for c in self.comparisons))
        for name in names:
            cells = []
            for config, side in columns:
                match = [c for c in self.comparisons if c.name == name and c.config == config]
                if not match or side not in match[0].wall:
                    cells.append("-")
                    continue
                c = match[0]
                median = c.median(side)
                each = f" ({median * 1000 / c.steps:.1f} ms/step)" if c.runs == 1 else ""
                cells.append(f"{median * 1000:.0f} ms{each}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return [*lines, ""]

    def _config_table(self, config: str) -> list[str]:
        lines = [
            f"### Config `{config}`",
            "",
            "Wall: min / median per side. Ratios: interpreter over the reference side (duties "
            "where measured, else bare), medians; *over bare*: interpreter (and duties) over "
            "bare, wall / CPU.",
            "",
            "| case | bare | duties | interpreter | ratio (median) | ratio (min) | target "
            "| met | worker CPU/step bare / duties / interpreter | CPU ratio | target | met "
            "| interpreter over bare | duties over bare |",
            "|---|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---:|:---:|---:|---:|",
        ]
        mine = [c for c in self.comparisons if c.config == config]
        for c in mine:
            target = f"<= {c.target:.2f}" if c.target is not None else "-"
            cpu_target = f"<= {c.cpu_target:.2f}" if c.cpu_target is not None else "-"
            walls = [
                f"{min(c.wall[side]) * 1000:.0f} / {c.median(side) * 1000:.0f} ms"
                if side in c.wall
                else "-"
                for side in SIDES
            ]
            cpus = " / ".join(
                f"{c.cpu_per_step_ms(c.cpu[side]):.2f}" if side in c.cpu else "-" for side in SIDES
            )
            over = [
                f"{c.wall_ratio(side, 'baseline'):.2f} / {c.cpu_ratio_of(side, 'baseline'):.2f}"
                if side in c.wall
                else "-"
                for side in ("interpreter", "duties")
            ]
            lines.append(
                f"| {c.name} | {' | '.join(walls)} "
                f"| {c.ratio:.2f} | {c.min_ratio:.2f} | {target} | {_yes(c.met)} "
                f"| {cpus} ms | {c.cpu_ratio:.2f} | {cpu_target} | {_yes(c.cpu_met)} "
                f"| {' | '.join(over)} |"
            )
        lines += ["", f"Wall-time samples (ms, in run order), `{config}`:", ""]
        for c in mine:
            told = "; ".join(f"{_SIDE[side]} {_ms(c.wall[side])}" for side in c.sides)
            lines.append(f"- {c.name}: {told}")
        return [*lines, ""]


#: How the report names each side.
_SIDE = {"baseline": "bare", "duties": "duties", "interpreter": "interpreter"}


def _ms(samples: list[float]) -> str:
    return ", ".join(f"{s * 1000:.0f}" for s in samples)
