"""Suggestions come from the models: a field another change adds to the spec is known at once."""

from __future__ import annotations

from pydantic import BaseModel

from shipflow.workflows.spec import DeploySpec, FlowSpec, LocalService, Probe
from shipflow.workflows.suggestions import field_names
from shipflow.workflows.validation import validate_text


def names(model: type[BaseModel]) -> set[str]:
    return {info.alias or name for name, info in model.model_fields.items()}


def test_field_names_are_the_models_fields_at_each_path() -> None:
    assert field_names([]) == names(FlowSpec)
    assert field_names(["steps", 0, "deploy"]) == names(DeploySpec)
    assert field_names(["target", "services", "web"]) == names(LocalService)
    assert field_names(["steps", 3, "deploy", "probes", "readiness"]) == names(Probe)


def test_every_field_of_every_step_kind_is_suggested_for_a_typo_of_it() -> None:
    """`<field>x` in each step kind's body gets `did you mean <field>?`."""
    head = "apiVersion: shipflow/v1\nname: t\nstage: s\nsteps:\n"
    for kind in ("backup", "migrate", "deploy", "promote", "check", "approve", "wait", "notify"):
        for field in sorted(field_names(["steps", 0, kind])):
            if len(field) < 4:
                continue
            report = validate_text(head + f"  - {kind}: {{id: a, {field}x: 1}}\n")
            mine = [p for p in report.problems if p.path.endswith(f".{field}x")]
            assert [p.suggestion for p in mine] == [field], (kind, field, report.problems)
