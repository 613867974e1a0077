"""A compiled flow as a picture: a tree for the terminal, or Mermaid and Graphviz (dot) text.

The picture is drawn from the Plan, not from the file, so it shows what a run executes:
groups as the compiler nests them, defaults filled in (retries, timeouts, undo), and the
`undo: {restore}` links from a step to the backup it would restore.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

from rich.text import Text
from rich.tree import Tree

from shipflow.workflows.plan import ActionPlan, GroupPlan, Plan


def _action_label(action: ActionPlan) -> str:
    return f"{action.id} ({action.kind}): {action.summary}"


def _details(action: ActionPlan) -> str:
    parts = []
    if action.retry.max_attempts > 1:
        parts.append(f"retries {action.retry.max_attempts - 1}")
    if action.timeout_s is not None:
        parts.append(f"timeout {_seconds(action.timeout_s)}")
    if action.undo is not None:
        if action.undo.kind == "restore":
            parts.append(f"undo: restore {action.undo.backup_step}")
        elif action.undo.kind == "command":
            parts.append("undo: " + " ".join(action.undo.command))
        else:
            parts.append("undo: previous image")
    return ", ".join(parts)


def _seconds(value: float) -> str:
    whole = int(value)
    if whole != value:
        return f"{value:g}s"
    for unit, size in (("h", 3600), ("m", 60)):
        if whole >= size and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def plan_tree(plan: Plan) -> Tree:
    """`flow → stage`, then every group and step, in the order a run takes them."""
    tree = Tree(Text(f"{plan.flow} → {plan.stage}", style="bold"), guide_style="dim")

    def add(parent: Tree, node: ActionPlan | GroupPlan) -> None:
        if isinstance(node, ActionPlan):
            line = Text(node.id, style="bold")
            line.append(f" {node.kind}", style="cyan")
            line.append(f"  {node.summary}", style="")
            details = _details(node)
            if details:
                line.append(f"  [{details}]", style="dim")
            parent.add(line)
            return
        branch = parent.add(Text(node.node, style="magenta"))
        for child in node.children:
            add(branch, child)

    for child in plan.root.children:
        add(tree, child)
    return tree


@dataclass
class _Graph:
    """Nodes and edges of the plan: a sequence chains, a parallel fans out and back in."""

    nodes: list[tuple[str, ActionPlan]] = field(default_factory=list)
    edges: list[tuple[str, str]] = field(default_factory=list)
    undo: list[tuple[str, str]] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)

    def build(self, node: ActionPlan | GroupPlan) -> tuple[list[str], list[str]]:
        """(entry nodes, exit nodes) of `node`."""
        if isinstance(node, ActionPlan):
            name = f"s{len(self.nodes)}"
            self.nodes.append((name, node))
            self.names[node.id] = name
            return [name], [name]
        parts = [self.build(child) for child in node.children]
        if node.node == "parallel":
            return [e for p in parts for e in p[0]], [x for p in parts for x in p[1]]
        for (_, exits), (entries, _) in itertools.pairwise(parts):
            self.edges += [(a, b) for a in exits for b in entries]
        return parts[0][0], parts[-1][1]

    @classmethod
    def of(cls, plan: Plan) -> _Graph:
        graph = cls()
        graph.build(plan.root)
        for name, action in graph.nodes:
            if action.undo is not None and action.undo.kind == "restore":
                backup = graph.names.get(action.undo.backup_step or "")
                if backup:
                    graph.undo.append((name, backup))
        return graph


def mermaid(plan: Plan) -> str:
    """A Mermaid flowchart (paste it into a Markdown file or mermaid.live)."""
    graph = _Graph.of(plan)
    lines = ["flowchart TD"]
    for name, action in graph.nodes:
        label = _action_label(action).replace('"', "#quot;")
        lines.append(f'  {name}["{label}"]')
    lines += [f"  {a} --> {b}" for a, b in graph.edges]
    lines += [f"  {a} -.->|undo: restore| {b}" for a, b in graph.undo]
    return "\n".join(lines) + "\n"


def dot(plan: Plan) -> str:
    """Graphviz text (`dot -Tsvg`)."""
    graph = _Graph.of(plan)
    lines = [f"digraph {json.dumps(plan.flow)} {{", "  rankdir=TB;", "  node [shape=box];"]
    for name, action in graph.nodes:
        lines.append(f"  {name} [label={json.dumps(_action_label(action))}];")
    lines += [f"  {a} -> {b};" for a, b in graph.edges]
    lines += [f'  {a} -> {b} [style=dashed, label="undo: restore"];' for a, b in graph.undo]
    lines.append("}")
    return "\n".join(lines) + "\n"
