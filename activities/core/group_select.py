"""Which groups a service or a migrate step gets, and the environment they make.

A consumer (a service of the flow's target, or a migrate step) takes the groups it names
in `env_from`, and every group whose `tags` share a tag with the flow's or its own
`tags`. The same rules run twice: at apply time on the API (so a mistake is a 422 naming
the field) and on the worker at the moment of use (groups may have changed since).

- An unknown group named in `env_from` is an error.
- A group restricted to other stages or services (`stages:`, `services:`) that is named
  in `env_from` is an error: the author asked for it explicitly, and silently leaving it
  out would deploy without it. One matched only by a tag is left out: a tag is a broad
  selector, and the restriction is what keeps it away from the other stages.
  A migrate step is no service: a group restricted to services never reaches it.
- A key in more than one selected group is an error naming both groups and the key,
  unless the flow's `env_order` names both: later in `env_order` wins.

The outcome is an ordered `{group: version}` (later wins), which is all that travels in
Temporal history and step outputs; values are read from the store only on the worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from shipflow.activities.core.groups import GroupStore, GroupView
from shipflow.workflows.spec import FlowSpec, walk_steps
from shipflow.workflows.spec import LocalTarget as LocalTargetSpec


@dataclass
class Consumer:
    """Who asks: `service` None for a migrate step. `where` prefixes problem paths."""

    stage: str
    service: str | None
    env_from: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    where: str = ""


class SelectionError(Exception):
    """The consumer's groups cannot be resolved: (path, message) problems."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{p}: {m}" if p else m for p, m in problems))


def _reaches(group: GroupView, consumer: Consumer) -> str | None:
    """Why `group` may not reach `consumer`, or None."""
    if group.stages and consumer.stage not in group.stages:
        return f"restricted to stages {', '.join(group.stages)}; this is stage {consumer.stage}"
    if group.services and (consumer.service is None or consumer.service not in group.services):
        who = f"service {consumer.service}" if consumer.service else "a migrate step"
        return f"restricted to services {', '.join(group.services)}; this is {who}"
    return None


def select(groups: Sequence[GroupView], consumer: Consumer) -> list[GroupView]:
    """The groups `consumer` gets, in the order they apply (a later one wins a key).

    Raises:
        SelectionError: an unknown or restricted group in env_from, or conflicting keys.
    """
    by_name = {g.name: g for g in groups if not g.deleted}
    problems: list[tuple[str, str]] = []
    chosen: dict[str, GroupView] = {}
    prefix = f"{consumer.where}." if consumer.where else ""
    for i, name in enumerate(consumer.env_from):
        group = by_name.get(name)
        if group is None:
            problems.append((f"{prefix}env_from[{i}]", f"no group {name!r}"))
            continue
        why = _reaches(group, consumer)
        if why is not None:
            problems.append((f"{prefix}env_from[{i}]", f"group {name!r} is {why}"))
            continue
        chosen[name] = group
    wanted = set(consumer.tags)
    if wanted:
        for group in sorted(by_name.values(), key=lambda g: g.name):
            if group.name in chosen or not wanted & set(group.tags):
                continue
            if _reaches(group, consumer) is None:
                chosen[group.name] = group
    holders: dict[str, list[str]] = {}
    for group in chosen.values():
        for key in group.keys:
            holders.setdefault(key, []).append(group.name)
    for key, names in sorted(holders.items()):
        if len(names) < 2:
            continue
        unordered = [n for n in names if n not in consumer.order]
        if unordered:
            a, b = sorted(names)[:2]
            problems.append(
                (
                    f"{prefix}env_from" if consumer.env_from else prefix.rstrip(".") or "tags",
                    f"key {key} is in both group {a!r} and group {b!r}: name both in the "
                    "flow's env_order (later wins) or remove the key from one",
                )
            )
    if problems:
        raise SelectionError(problems)
    rank = {name: i for i, name in enumerate(consumer.order)}
    # Groups not in env_order have no conflicting key: their place does not matter.
    return sorted(chosen.values(), key=lambda g: (rank.get(g.name, -1), g.name))


class GroupSource(BaseModel):
    """One group version with its values, for a target that materialises groups itself
    (kubernetes: a Secret or ConfigMap per version). Its repr shows keys, never values."""

    name: str
    version: int
    kind: str
    values: dict[str, str] = Field(default_factory=dict)

    def __repr_args__(self):  # type: ignore[no-untyped-def]
        for name, value in super().__repr_args__():
            yield name, (sorted(value) if name == "values" else value)


@dataclass
class Resolved:
    """A consumer's environment from groups: values (worker memory only) and versions.

    `env` is the merged environment (later group wins); `sources` the same groups one by
    one, in order, for targets that reference each group version instead of copying it.
    """

    env: dict[str, str]
    versions: dict[str, int]
    secrets: list[str]
    sources: list[GroupSource] = field(default_factory=list)


def resolve(
    store: GroupStore, consumer: Consumer, pinned: Mapping[str, int] | None = None
) -> Resolved:
    """Select (or take the `pinned` versions, in their order) and read the values.

    Raises:
        SelectionError: see `select`.
        GroupNotFound: a pinned version no longer exists.
        GroupKeyMissing: a secret group and no key.
    """
    if pinned is not None:
        chosen = [store.get(name, version) for name, version in pinned.items()]
    else:
        chosen = select(store.all(), consumer)
    env: dict[str, str] = {}
    versions: dict[str, int] = {}
    secrets: list[str] = []
    sources: list[GroupSource] = []
    for group in chosen:
        values = store.values(group.name, group.version)
        env.update(values)
        versions[group.name] = group.version
        sources.append(
            GroupSource(name=group.name, version=group.version, kind=group.kind, values=values)
        )
        if group.kind == "secret":
            secrets += [v for v in values.values() if v]
    return Resolved(env=env, versions=versions, secrets=secrets, sources=sources)


def flow_problems(groups: Sequence[GroupView], spec: FlowSpec) -> list[tuple[str, str]]:
    """What in `spec` selects groups wrongly, as apply reports it (the current groups).

    Checks every service of a local target (every deployed service of a kubernetes one,
    which the flow's tags select for) and every migrate step.
    """
    problems: list[tuple[str, str]] = []
    consumers: list[Consumer] = []
    if isinstance(spec.target, LocalTargetSpec):
        for name, service in spec.target.services.items():
            consumers.append(
                Consumer(
                    stage=spec.stage,
                    service=name,
                    env_from=list(service.env_from),
                    tags=[*spec.tags, *service.tags],
                    order=list(spec.env_order),
                    where=f"target.services.{name}",
                )
            )
    else:
        # Kubernetes declares no services in the flow: its deploys get the flow's tags.
        services = {
            body.service: here
            for here, kind, body in walk_steps(spec.steps, "steps")
            if kind in ("deploy", "promote")
        }
        for name, here in services.items():
            consumers.append(
                Consumer(
                    stage=spec.stage,
                    service=name,
                    tags=list(spec.tags),
                    order=list(spec.env_order),
                    where=here,
                )
            )
    for here, kind, body in walk_steps(spec.steps, "steps"):
        if kind == "migrate":
            consumers.append(
                Consumer(
                    stage=spec.stage,
                    service=None,
                    env_from=list(body.env_from),
                    tags=[*spec.tags, *body.tags],
                    order=list(spec.env_order),
                    where=here,
                )
            )
    known = {g.name for g in groups if not g.deleted}
    for i, name in enumerate(spec.env_order):
        if name not in known:
            problems.append((f"env_order[{i}]", f"no group {name!r}"))
    for consumer in consumers:
        try:
            select(groups, consumer)
        except SelectionError as e:
            problems += e.problems
    return problems
