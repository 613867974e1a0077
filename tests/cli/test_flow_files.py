"""`shipflow flow validate|schema`, argument parsing and error mapping: no servers needed."""

from __future__ import annotations

import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from shipflow.infra.cli.client import ApiError, detail_problems
from shipflow.infra.cli.main import app
from shipflow.infra.stack.embedded import EmbeddedStack
from shipflow.infra.stack.ports import PortInUse
from shipflow.infra.stack.processes import StackError
from shipflow.workflows.spec import flow_json_schema
from tests.helpers import free_ports

runner = CliRunner()
FLOWS = Path(__file__).resolve().parents[2] / "infra" / "flows"

GOOD = """\
apiVersion: shipflow/v1
kind: ReleaseFlow
name: cli-good
stage: test
args:
  image: {default: "demo:1"}
  who: {}
steps:
  - migrate: {id: migrate, command: [python, -c, "print('${args.who}')"], image: "${args.image}"}
  - parallel:
      - wait: {id: soak, duration: 1s}
      - check: {id: smoke, http: {url: "http://127.0.0.1:1/healthz"}}
  - notify: {id: tell, webhook: "http://127.0.0.1:1/hook", message: "got ${steps.migrate.exit_code}"}
"""

BAD = """\
apiVersion: shipflow/v1
kind: ReleaseFlow
name: Bad_Name
stage: test
steps:
  - migrate: {id: migrate}
  - parallel:
      - deploy: {id: api, service: api}
      - wait: {id: soak, duration: forever}
  - teleport: {id: x}
"""

BAD_REFS = """\
apiVersion: shipflow/v1
kind: ReleaseFlow
name: cli-refs
stage: test
steps:
  - migrate: {id: one, command: ["true"], undo: {restore: nowhere}}
  - migrate: {id: one, command: ["echo", "${steps.later.output}"]}
  - wait: {id: later, duration: 1s}
"""


def problems(result: Result) -> list[str]:
    """The problems printed on stdout, each without its `FILE:LINE:COLUMN: ` prefix."""
    return [line.split(": ", 1)[1] for line in result.stdout.strip().splitlines()]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_validate_good_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["flow", "validate", str(write(tmp_path, "good.yaml", GOOD))])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "ok: cli-good (4 steps)"


def test_validate_demo_flow_ships_valid() -> None:
    result = runner.invoke(app, ["flow", "validate", str(FLOWS / "demo.yaml")])
    assert result.exit_code == 0, result.output
    assert "ok: demo (6 steps)" in result.output


def test_validate_bad_file_prints_every_problem_with_its_path(tmp_path: Path) -> None:
    result = runner.invoke(app, ["flow", "validate", str(write(tmp_path, "bad.yaml", BAD))])
    assert result.exit_code == 2
    lines = problems(result)
    assert (
        "name: must be lowercase letters, digits and '-', starting and ending with a letter "
        "or digit (e.g. web-app), at most 63 characters; did you mean bad-name?"
    ) in lines
    assert "steps[0].migrate.command: field required" in lines
    assert "steps[1].parallel[0].deploy.image: field required" in lines
    assert any(line.startswith("steps[1].parallel[1].wait.duration: ") for line in lines), lines
    assert any(line.startswith("steps[2]: unknown step kind 'teleport'") for line in lines)
    assert not any(line.startswith("ok:") for line in lines)
    assert result.stderr.strip().endswith("error: 5 problems in " + str(tmp_path / "bad.yaml"))


def test_validate_reports_reference_problems_after_the_shape(tmp_path: Path) -> None:
    result = runner.invoke(app, ["flow", "validate", str(write(tmp_path, "refs.yaml", BAD_REFS))])
    assert result.exit_code == 2
    text = result.output
    assert "steps[1].migrate.id" in text  # the duplicate id, at its second place
    assert "nowhere" in text  # undo restore of an unknown backup step
    assert "later" in text  # a reference to a step that has not run yet


def test_validate_invalid_yaml_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.yaml", "apiVersion: shipflow/v1\nsteps: [\n  - a: b\n")
    result = runner.invoke(app, ["flow", "validate", str(path)])
    assert result.exit_code == 2
    assert result.stdout.startswith(f"{path}:3:3: invalid YAML")


@pytest.mark.parametrize(
    ("duration", "message"),
    [
        ("99999999999h", "is too long: at most 366d"),
        (".inf", "must be a finite number of seconds"),
        ("9" * 400, "is too long: at most 366d"),
    ],
)
def test_validate_bad_durations_exit_2_without_a_traceback(
    tmp_path: Path, duration: str, message: str
) -> None:
    text = GOOD.replace("duration: 1s", f"duration: {duration}")
    result = runner.invoke(app, ["flow", "validate", str(write(tmp_path, "d.yaml", text))])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = problems(result)
    assert len(lines) == 1 and lines[0].startswith("steps[1].parallel[0].wait.duration: "), lines
    assert message in lines[0]


def test_validate_refuses_what_apply_refuses(tmp_path: Path) -> None:
    """Constraints, arg placement, literal secrets and limits: the same answer as the API."""
    text = GOOD.replace(
        'webhook: "http://127.0.0.1:1/hook"', 'webhook: "http://127.0.0.1:1/hook?token=abc"'
    )
    result = runner.invoke(app, ["flow", "validate", str(write(tmp_path, "s.yaml", text))])
    assert result.exit_code == 2, result.output
    assert problems(result)[0].startswith(
        "steps[2].notify.webhook: a 'token' in the URL's query is written literally"
    )
    assert "abc" not in result.output

    typed = GOOD.replace('image: {default: "demo:1"}', 'image: {default: "demo:1", type: integer}')
    result = runner.invoke(app, ["flow", "validate", str(write(tmp_path, "t.yaml", typed))])
    assert result.exit_code == 2, result.output
    assert "args.image: the default 'demo:1' is not an integer" in result.output

    host = GOOD.replace('url: "http://127.0.0.1:1/healthz"', 'url: "http://${args.who}/x"')
    result = runner.invoke(app, ["flow", "validate", str(write(tmp_path, "h.yaml", host))])
    assert result.exit_code == 2, result.output
    assert problems(result)[0].startswith("args.who: lands in the scheme or host of the URL")

    deep = (
        "apiVersion: shipflow/v1\nname: deep\nstage: s\nsteps:\n"
        + "".join("  " * (i + 1) + "- sequence:\n" for i in range(100))
        + "  " * 101
        + "- wait: {id: w, duration: 1s}\n"
    )
    result = runner.invoke(app, ["flow", "validate", str(write(tmp_path, "deep.yaml", deep))])
    assert result.exit_code == 2, result.output
    assert "limit: nesting depth" in result.output


def test_validate_missing_file_is_bad_input(tmp_path: Path) -> None:
    result = runner.invoke(app, ["flow", "validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "cannot read" in result.output


def test_schema_is_the_flow_json_schema() -> None:
    result = runner.invoke(app, ["flow", "schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema == flow_json_schema()
    assert {"apiVersion", "name", "stage", "steps"} <= set(schema["properties"])


def test_bad_run_argument_is_bad_input() -> None:
    # Rejected before any request is sent: no API needs to run.
    result = runner.invoke(app, ["--api", "http://127.0.0.1:1", "run", "x", "--arg", "novalue"])
    assert result.exit_code == 2
    assert "is not KEY=VALUE" in result.output
    assert "--arg NAME=VALUE" in result.output


def test_unknown_status_filter_is_bad_input() -> None:
    result = runner.invoke(app, ["--api", "http://127.0.0.1:1", "runs", "--status", "great"])
    assert result.exit_code == 2
    assert "not a run state" in result.output


def test_unreachable_api_exits_1_with_a_hint() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connection refused
        result = runner.invoke(app, ["--api", f"http://127.0.0.1:{port}", "runs"])
    assert result.exit_code == 1
    assert f"cannot reach the shipflow API at http://127.0.0.1:{port}" in result.output
    assert "shipflow dev" in result.output


class _Failing(BaseHTTPRequestHandler):
    """An API that answers every request with one fixed error."""

    status = 503
    body = b'{"detail": "temporal: unreachable"}'

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.mark.parametrize(
    ("status", "body", "code", "printed"),
    [
        (503, b'{"detail": "temporal: unreachable"}', 1, "temporal: unreachable"),
        (500, b"<html>oops</html>", 1, "HTTP 500: <html>oops</html>"),
        (404, b'{"detail": "run nope not found"}', 2, "run nope not found"),
        (
            409,
            b'{"detail": [{"loc": "step", "msg": "step \'x\' is not waiting"}]}',
            2,
            "step: step 'x' is not waiting",
        ),
    ],
)
def test_api_errors_map_to_exit_codes(status: int, body: bytes, code: int, printed: str) -> None:
    handler = type("Handler", (_Failing,), {"status": status, "body": body})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        api = f"http://127.0.0.1:{server.server_address[1]}"
        result = runner.invoke(app, ["--api", api, "status", "nope"])
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == code, result.output
    assert printed in result.output


def test_error_details_become_path_message_pairs() -> None:
    assert detail_problems("run x not found") == [("", "run x not found")]
    assert detail_problems([{"loc": "args.image", "msg": "required argument not given"}]) == [
        ("args.image", "required argument not given")
    ]
    assert detail_problems([{"loc": ["body", "step"], "msg": "field required"}]) == [
        ("step", "field required")
    ]
    assert str(ApiError(422, [("a.b", "bad"), ("", "worse")])) == "a.b: bad; worse"
    assert ApiError(409, []).is_client_error and not ApiError(503, []).is_client_error


def test_port_in_use_names_the_port_and_the_option(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        others = free_ports(4)
        stack = EmbeddedStack(
            tmp_path,
            api_port=others[0],
            temporal_port=others[1],
            ui_port=port,
            runtime_port=others[2],
            s3_port=others[3],
        )
        with pytest.raises(PortInUse) as caught:
            stack.start()
        assert caught.value.port == port
        assert f"port {port} (Temporal Web UI) is already in use" in str(caught.value)
        assert "--ui-port" in str(caught.value)
        assert stack.children == []

        # The API port is checked first, so the other (default) ports do not matter.
        argv = ["dev", "--data-dir", str(tmp_path), "--api-port", str(port), "--sink-port", "0"]
        result = runner.invoke(app, argv)
    assert result.exit_code == 2
    assert f"port {port} (API) is already in use" in result.output
    assert "--api-port" in result.output


def test_one_stack_per_data_dir(tmp_path: Path) -> None:
    ports = free_ports(5)
    first = EmbeddedStack(tmp_path, *ports)
    first._lock_data_dir()  # what start() does first: held while the stack runs
    try:
        second = EmbeddedStack(tmp_path, *free_ports(5))
        with pytest.raises(StackError) as caught:
            second.start()
        message = str(caught.value)
        assert f"the data dir {tmp_path.resolve()} is in use" in message
        assert f"(pid {os.getpid()})" in message and "--data-dir" in message
        assert second.children == []
    finally:
        first.stop()  # releases it
    again = EmbeddedStack(tmp_path, *free_ports(5))
    again._lock_data_dir()
    again.stop()
