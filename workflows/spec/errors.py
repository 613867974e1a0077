"""`FlowError` and the paths in it, as the user wrote them (`steps[2].deploy.image`)."""

from __future__ import annotations

from pydantic import ValidationError

from shipflow.workflows.spec.steps import STEP_KINDS


class FlowError(ValueError):
    """A flow file is invalid. `problems` is a list of (path, message), path as written."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{p}: {m}" if p else m for p, m in problems))

    def as_detail(self) -> list[dict[str, str]]:
        return [{"loc": path, "msg": msg} for path, msg in self.problems]


def format_loc(loc: tuple[int | str, ...]) -> str:
    """`('steps', 2, 'parallel', 0, 'deploy', 'deploy', 'image')` -> `steps[2].parallel[0].deploy.image`.

    Tagged unions repeat the tag before the field; that repeat is dropped so the path is
    the one in the user's file. Field aliases are shown as written (`from`, `apiVersion`).
    """
    parts: list[str] = []
    previous: int | str | None = None
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]" if parts else f"[{item}]"]
        elif (item in STEP_KINDS and previous == item) or (
            isinstance(item, str) and item.startswith("function-")
        ):
            continue
        else:
            parts.append(str(item))
        previous = item
    return ".".join(parts)


_FRIENDLY = {
    "missing": "field required",
    "extra_forbidden": "unknown field",
}


def problems_from(error: ValidationError) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for item in error.errors():
        message = _FRIENDLY.get(item["type"], item["msg"])
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        out.append((format_loc(tuple(item["loc"])), message))
    return out
