"""The size limits of a flow (nesting depth, number of steps), checked on the decoded
document before any model or recursive walk sees it."""

from __future__ import annotations

from typing import Any

from shipflow.workflows.spec.steps import GROUP_KINDS

#: How deep `sequence` and `parallel` may nest. The interpreter walks the plan recursively in
#: a workflow task: a flow far deeper would fail that task forever, out of reach of cancel.
MAX_NESTING = 20
#: How many steps (actions and groups) a flow may have. The Plan is workflow input and must
#: stay inside Temporal's 2 MB payload limit: a step costs about 0.25-0.55 KB of plan plus
#: about 0.23 KB of start memo (more with long commands), so 1,000 ordinary steps stay near
#: 0.55 MB of plan; `plan.MAX_PLAN_BYTES` refuses what would not fit whatever the count.
#: A 1,000-step flow applies, starts and runs (`bench.scale_bench` measures it).
MAX_STEPS = 1_500


def limit_problems(data: Any) -> list[tuple[str, str]]:
    """Nesting depth and step count of a decoded flow, checked before the models see it.

    Iterative on purpose: the point is to refuse a pathological flow cheaply, before
    anything recursive (validation, compiling, the interpreter) walks it.
    """
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, list):
        return []
    problems: list[tuple[str, str]] = []
    count = 0
    pending: list[tuple[list[Any], str, int]] = [(steps, "steps", 1)]
    while pending:
        items, path, depth = pending.pop()
        count += len(items)
        for index, item in enumerate(items):
            if not (isinstance(item, dict) and len(item) == 1):
                continue
            ((kind, children),) = item.items()
            if kind in GROUP_KINDS and isinstance(children, list):
                here = f"{path}[{index}].{kind}"
                if depth >= MAX_NESTING:
                    problems.append(
                        (
                            here,
                            f"nested too deeply: sequence and parallel nest at most "
                            f"{MAX_NESTING} levels (limit: nesting depth)",
                        )
                    )
                    continue
                pending.append((children, here, depth + 1))
    if count > MAX_STEPS:
        problems.insert(
            0,
            (
                "steps",
                f"{count} steps: a flow has at most {MAX_STEPS} steps, parallel and "
                "sequence included (limit: number of steps)",
            ),
        )
    return problems
