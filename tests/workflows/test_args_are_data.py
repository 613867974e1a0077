"""Run args are data (issue #9, part 1): substituted once, literally; constrained by the flow.

Pure and fast: the compiler, the interpreter's step-output resolution and the worker's
`${env.X}` resolution, chained the way a run chains them.
"""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from shipflow.activities.envrefs import resolve_env, resolve_env_in, secret_values
from shipflow.workflows.plan import Plan, compile, resolve_step_outputs
from shipflow.workflows.spec import FlowError, load_flow_text
from shipflow.workflows.step_outputs import option_like_outputs
from shipflow.workflows.templates import literal

SECRET = "postgresql://app:Hunter2-s3cret@db/app"
ENV = {"DATABASE_URL": SECRET, "HOME_DIR": "/srv"}
LEAK = "127.0.0.1:9/leak?db=${env.DATABASE_URL}&q="


def flow(body: str) -> str:
    return "apiVersion: shipflow/v1\nname: t\nstage: s\n" + textwrap.dedent(body)


def plan_of(text: str, args: dict[str, Any] | None = None, **kwargs: Any) -> Plan:
    return compile(load_flow_text(text), args, **kwargs)


def problems(text: str, args: dict[str, Any] | None = None, **kwargs: Any) -> list[tuple[str, str]]:
    with pytest.raises(FlowError) as caught:
        plan_of(text, args, **kwargs)
    return caught.value.problems


def on_worker(value: Any) -> Any:
    """What the activity on the worker ends up using (env resolved, escapes undone)."""
    return resolve_env_in(value, ENV)


# ---------------------------------------------------------------- args are data

ECHO = flow(
    """
    args:
      note: {default: "x"}
    steps:
      - migrate: {id: m, command: [echo, "note=${args.note}", "${env.HOME_DIR}/x"],
                  env: {NOTE: "${args.note}"}}
      - notify: {id: n, webhook: "http://127.0.0.1:1/hook", message: "${args.note} / ${env.HOME_DIR}",
                 headers: {X-Note: "${args.note}"}}
    """
)


@pytest.mark.parametrize(
    "value",
    [
        "${env.DATABASE_URL}",
        "a${env.DATABASE_URL}b",
        "$${env.DATABASE_URL}",
        "${ env.DATABASE_URL }",
        "${args.note}",
        "${steps.m.output}",
        "$",
        "$$",
        "{env.DATABASE_URL}",
    ],
)
def test_an_arg_value_is_used_literally_never_expanded(value: str) -> None:
    plan = plan_of(ECHO, {"note": value})
    migrate = on_worker(plan.action("m").params)
    assert migrate["command"] == ["echo", f"note={value}", "/srv/x"]
    assert migrate["env"] == {"NOTE": value}
    params = resolve_step_outputs(plan.action("n").params, {"m": {"output": "out"}})
    notify = on_worker(params)
    assert notify["message"] == f"{value} / /srv"
    assert notify["headers"] == {"X-Note": value}
    # Nothing the worker would mask or leak: only the author's ${env.HOME_DIR} is a reference.
    assert secret_values(plan.action("m").params, ENV) == ["/srv"]
    assert SECRET not in repr(migrate) + repr(notify)
    # The args the run shows are the values as given.
    assert plan.args == {"note": value}


def test_a_dollar_at_the_end_of_an_arg_cannot_join_the_authors_brace() -> None:
    text = flow(
        """
        args:
          a: {default: x}
        steps:
          - migrate: {id: m, command: [echo, "${args.a}{env.DATABASE_URL}", "${args.a}${args.a}"]}
        """
    )
    command = on_worker(plan_of(text, {"a": "$"}).action("m").params["command"])
    assert command == ["echo", "${env.DATABASE_URL}", "$$"]
    command = on_worker(plan_of(text, {"a": "{env.DATABASE_URL}$"}).action("m").params["command"])
    assert SECRET not in "".join(command)


def test_the_author_can_write_a_literal_dollar_brace() -> None:
    text = flow(
        """
        steps:
          - migrate: {id: m, command: [echo, "$${env.DATABASE_URL}", "${env.HOME_DIR}"],
                      summary: "shows $${args.x}"}
        """
    )
    plan = plan_of(text)
    assert on_worker(plan.action("m").params["command"]) == ["echo", "${env.DATABASE_URL}", "/srv"]
    assert plan.env_refs == ["HOME_DIR"]
    assert literal(plan.action("m").summary) == "shows ${args.x}"


def test_a_step_output_is_data_too() -> None:
    """A command prints `${env.X}`: the next step that quotes its output must not expand it."""
    text = flow(
        """
        steps:
          - migrate: {id: m, command: ["true"]}
          - notify: {id: n, webhook: "http://127.0.0.1:1/hook",
                     message: "got ${steps.m.output} at ${env.HOME_DIR}"}
          - migrate: {id: again, command: [echo, "${steps.m.output}"]}
        """
    )
    plan = plan_of(text)
    outputs = {"m": {"output": "${env.DATABASE_URL} $${env.DATABASE_URL} $"}}
    notify = on_worker(resolve_step_outputs(plan.action("n").params, outputs))
    assert notify["message"] == "got ${env.DATABASE_URL} $${env.DATABASE_URL} $ at /srv"
    again = on_worker(resolve_step_outputs(plan.action("again").params, outputs))
    assert again["command"] == ["echo", "${env.DATABASE_URL} $${env.DATABASE_URL} $"]


def test_git_values_are_data() -> None:
    text = flow(
        """
        steps:
          - notify: {id: n, webhook: "http://127.0.0.1:1/hook", message: "by ${git.author}"}
        """
    )
    plan = plan_of(text, context={"git": {"author": "eve ${env.DATABASE_URL}"}})
    assert on_worker(plan.action("n").params)["message"] == "by eve ${env.DATABASE_URL}"


def test_resolve_env_still_resolves_what_the_author_wrote() -> None:
    assert resolve_env("${env.HOME_DIR}/a $${env.HOME_DIR} ${steps.x.y}", ENV) == (
        "/srv/a ${env.HOME_DIR} ${steps.x.y}"
    )


# ---------------------------------------------------------------- constraints

CONSTRAINED = flow(
    """
    args:
      count: {type: integer, default: 3}
      dry_run: {type: boolean, default: false}
      colour: {enum: [red, green], default: red}
      ticket: {pattern: "[A-Z]+-[0-9]+"}
      short: {max_length: 5, default: ab}
    steps:
      - migrate: {id: m, command: [echo, "${args.count}", "${args.dry_run}", "${args.colour}",
                                   "${args.ticket}", "${args.short}"]}
    """
)


def test_constrained_args_accept_what_they_allow() -> None:
    plan = plan_of(CONSTRAINED, {"ticket": "OPS-12", "count": 10, "dry_run": True})
    assert plan.action("m").params["command"] == ["echo", "10", "true", "red", "OPS-12", "ab"]


@pytest.mark.parametrize(
    ("args", "loc", "message"),
    [
        ({"count": "3; rm -rf /"}, "args.count", "the value is not an integer"),
        ({"count": "1.5"}, "args.count", "the value is not an integer"),
        ({"dry_run": "yes"}, "args.dry_run", "the value is not a boolean (true or false)"),
        ({"colour": "blue"}, "args.colour", "the value is not one of: red, green"),
        ({"ticket": "OPS-12 extra"}, "args.ticket", "does not match the pattern"),
        ({"ticket": "xOPS-12"}, "args.ticket", "does not match the pattern"),
        ({"short": "abcdef"}, "args.short", "is 6 characters long; at most 5 allowed"),
        ({"ticket": "A-1" + "1" * 5000}, "args.ticket", "at most 4096 allowed"),
    ],
)
def test_an_arg_that_breaks_a_constraint_is_refused_by_name(
    args: dict[str, str], loc: str, message: str
) -> None:
    found = problems(CONSTRAINED, {"ticket": "OPS-1", **args})
    assert len(found) == 1 and found[0][0] == loc, found
    assert message in found[0][1]


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("{type: integer, default: abc}", "the default 'abc' is not an integer"),
        ("{enum: [a, b], default: c}", "is not one of: a, b"),
        ("{pattern: '[a-z]+', default: ABC}", "does not match the pattern"),
        ("{pattern: '[a-z'}", "invalid regular expression"),
        ("{type: float}", "Input should be 'string', 'integer' or 'boolean'"),
        ("{max_length: 0}", "greater than or equal to 1"),
    ],
)
def test_bad_arg_declarations_are_refused_with_their_path(arg: str, message: str) -> None:
    text = flow(f"args:\n  x: {arg}\nsteps:\n  - wait: {{id: w, duration: 1s}}\n")
    with pytest.raises(FlowError) as caught:
        load_flow_text(text)
    assert [p for p, _ in caught.value.problems] == [p for p, _ in caught.value.problems if p]
    assert any(p.startswith("args.x") and message in m for p, m in caught.value.problems), (
        caught.value.problems
    )


# ---------------------------------------------------------------- where an arg lands

HOST = flow(
    """
    args:
      sink: {default: "127.0.0.1:9"}
    steps:
      - check: {id: c, http: {url: "http://${args.sink}/check"}}
    """
)


def test_the_issue_repro_an_arg_in_a_url_host_needs_a_pattern() -> None:
    for args in ({}, {"sink": LEAK}):
        found = problems(HOST, args)
        assert [p for p, _ in found] == ["args.sink"]
        assert "host of the URL at steps[0].check.http.url" in found[0][1]
        assert "pattern" in found[0][1]
    # Even as a stand-in for a required arg (apply time): the place itself is the problem.
    assert [p for p, _ in problems(HOST, {"sink": "x"}, placeholders={"sink"})] == ["args.sink"]


@pytest.mark.parametrize(
    "field",
    [
        "notify: {id: s, webhook: '${args.h}', message: hi}",
        "check: {id: s, http: {url: 'https://user@${args.h}:8443/x'}}",
        "check: {id: s, http: {url: 'http://127.0.0.1:${args.h}/x'}}",
        "check: {id: s, tcp: {host: '${args.h}', port: 80}}",
        "notify: {id: s, webhook: 'https://${args.h}.example.com/x', message: hi}",
        "backup: {id: s, database: 'postgresql://app@${args.h}/db', to: 's3://b/'}",
        "backup: {id: s, database: 'sqlite:///x.db', to: 's3://${args.h}/p/'}",
        "migrate: {id: s, command: [curl, 'http://${args.h}/x']}",
    ],
)
def test_every_host_position_needs_a_pattern(field: str) -> None:
    text = flow(f"args:\n  h: {{default: 'x'}}\nsteps:\n  - {field}\n")
    found = problems(text)
    assert [p for p, _ in found] == ["args.h"], found
    allowed = text.replace("h: {default: 'x'}", "h: {default: 'x', pattern: '[a-z0-9.:]+'}")
    plan_of(allowed)
    enum = text.replace("h: {default: 'x'}", "h: {default: 'x', enum: [x, y]}")
    plan_of(enum)


def test_an_arg_with_a_pattern_in_the_host_is_still_only_data() -> None:
    text = HOST.replace('sink: {default: "127.0.0.1:9"}', 'sink: {default: "h", pattern: ".*"}')
    url = on_worker(plan_of(text, {"sink": LEAK}).action("c").params["http"]["url"])
    assert url == "http://127.0.0.1:9/leak?db=${env.DATABASE_URL}&q=/check"
    assert SECRET not in url


def test_args_in_a_url_path_or_query_are_percent_encoded() -> None:
    text = flow(
        """
        args:
          p: {default: x}
        steps:
          - check: {id: c, http: {url: "https://api.example.com/v1/${args.p}?q=${args.p}&k=v#${args.p}"}}
          - notify: {id: n, webhook: "${env.HOOK_BASE}/x/${args.p}", message: "${args.p}"}
        """
    )
    value = "../admin?x=1&db=${env.DATABASE_URL} #é"
    plan = plan_of(text, {"p": value})
    encoded = "..%2Fadmin%3Fx%3D1%26db%3D%24%7Benv.DATABASE_URL%7D%20%23%C3%A9"
    assert plan.action("c").params["http"]["url"] == (
        f"https://api.example.com/v1/{encoded}?q={encoded}&k=v#{encoded}"
    )
    # After the author's own `${env.X}` base, the arg is in the path: encoded.
    assert plan.action("n").params["webhook"] == f"${{env.HOOK_BASE}}/x/{encoded}"
    assert literal(plan.action("n").params["message"]) == value


def test_an_arg_that_would_start_a_command_argument_with_a_dash_is_refused() -> None:
    text = flow(
        """
        args:
          version: {default: v1}
        target:
          kind: local
          services:
            web: {command: [app, "${args.version}"], port: 8080,
                  probes: {readiness: {exec: {command: [check, "${args.version}"]}}}}
        steps:
          - migrate: {id: m, command: [migrate, --to, "${args.version}"],
                      undo: {command: [migrate, "${args.version}"]}}
          - migrate: {id: ok, command: [migrate, "--to=${args.version}", "v${args.version}"]}
        """
    )
    found = problems(text, {"version": "--drop-everything"})
    assert {p for p, _ in found} == {"args.version"}
    where = sorted(m.split("command argument ")[1].split(",")[0] for _, m in found)
    assert where == [
        "steps[0].migrate.command[2]",
        "steps[0].migrate.undo.command[1]",
        "target.services.web.command[1]",
        "target.services.web.probes.readiness.exec.command[1]",
    ]
    assert all("would be read as an option" in m for _, m in found)
    # Not at the start of an argument, not starting with '-', or an explicit pattern: fine.
    plan_of(text, {"version": "v2-rc1"})
    patterned = text.replace(
        "version: {default: v1}", "version: {default: v1, pattern: '-?v[0-9]+'}"
    )
    assert plan_of(patterned, {"version": "-v2"}).action("m").params["command"][2] == "-v2"
    # A stand-in value (apply time) is not a value anyone gave.
    plan_of(text, {"version": "-x"}, placeholders={"version"})


# ---------------------------------------------------------------- git values and step outputs land like args

GIT_HOST = flow(
    """
    steps:
      - notify: {id: n, webhook: "https://${git.branch}.preview.example/hook?t=${git.branch}",
                 message: hi}
    """
)
PUSH = {
    "sha": "a" * 40,
    "short_sha": "aaaaaaa",
    "branch": "evil.com#",
    "ref": "refs/heads/x",
    "repo": "org/app",
    "author": "eve",
}


def test_the_review_repro_a_git_value_in_a_url_host_is_refused() -> None:
    """Branch `evil.com#` would send the flow's request to evil.com: refused, at run start
    (with the push's values) and at apply (no values yet), naming the field."""
    for context in ({"git": PUSH}, None):
        found = [(p, m) for p, m in problems(GIT_HOST, context=context) if "lands in" in m]
        assert found == [
            (
                "steps[0].notify.webhook",
                "${git.branch} lands in the scheme or host of the URL at steps[0].notify.webhook, "
                "where it would choose what is contacted, and no `pattern` can be declared for it: "
                "write the host in the flow (it may be used in the URL's path, query or fragment), "
                "or pass it through an argument with a `pattern`",
            )
        ]


@pytest.mark.parametrize("expression", ["${git.branch}", "${git.author}", "${steps.m.output}"])
@pytest.mark.parametrize(
    "field",
    [
        "notify: {id: s, webhook: 'EXPR', message: hi}",
        "notify: {id: s, webhook: 'https://EXPR.example.com/x', message: hi}",
        "check: {id: s, http: {url: 'https://user@EXPR:8443/x'}}",
        "check: {id: s, http: {url: 'http://127.0.0.1:EXPR/x'}}",
        "check: {id: s, tcp: {host: 'EXPR', port: 80}}",
        "backup: {id: s, database: 'postgresql://app@EXPR/db', to: 's3://b/'}",
        "backup: {id: s, database: 'sqlite:///x.db', to: 's3://EXPR/p/'}",
        "migrate: {id: s, command: [curl, 'http://EXPR/x']}",
        "notify: {id: s, webhook: '${env.HOOK_BASE}EXPR/x', message: hi}",
    ],
)
def test_a_git_value_or_step_output_in_any_host_position_is_refused(
    expression: str, field: str
) -> None:
    text = flow(
        "steps:\n  - migrate: {id: m, command: ['true']}\n"
        f"  - {field.replace('EXPR', expression)}\n"
    )
    found = problems(text, context={"git": PUSH})
    assert len(found) == 1, found
    path, message = found[0]
    assert path.startswith("steps[1].") and f"{expression} lands in the " in message
    assert "host" in message and "no `pattern` can be declared" in message


GIT_PATH = flow(
    """
    steps:
      - check: {id: c, http: {url: "https://api.example.com/v1/${git.branch}?q=${git.author}&k=v#${git.ref}"}}
      - notify: {id: n, webhook: "${env.HOOK_BASE}/x/${git.branch}", message: "${git.branch}"}
    """
)
HOSTILE = "../admin?x=1&db=${env.DATABASE_URL} #é"
ENCODED = "..%2Fadmin%3Fx%3D1%26db%3D%24%7Benv.DATABASE_URL%7D%20%23%C3%A9"


def test_git_values_in_a_url_path_query_or_fragment_are_percent_encoded() -> None:
    push = {**PUSH, "branch": HOSTILE, "author": HOSTILE, "ref": HOSTILE}
    plan = plan_of(GIT_PATH, context={"git": push})
    assert plan.action("c").params["http"]["url"] == (
        f"https://api.example.com/v1/{ENCODED}?q={ENCODED}&k=v#{ENCODED}"
    )
    assert plan.action("n").params["webhook"] == f"${{env.HOOK_BASE}}/x/{ENCODED}"
    # Outside a URL a git value is plain data, as before.
    assert literal(plan.action("n").params["message"]) == HOSTILE


STEP_URLS = flow(
    """
    steps:
      - migrate: {id: m, command: ["true"]}
      - check: {id: c, http: {url: "https://api.example.com/v1/${steps.m.output}?q=${steps.m.output}#${steps.m.output}"}}
      - notify: {id: n, webhook: "${env.HOOK_BASE}/x/${steps.m.output}", message: "got ${steps.m.output}",
                 headers: {X-Out: "${steps.m.output}"}}
      - backup: {id: b, database: "sqlite:///x.db", to: "s3://bucket/${steps.m.output}/"}
      - migrate: {id: curl, command: [curl, "http://127.0.0.1:9/x?v=${steps.m.output}", "${steps.m.output}"],
                  undo: {command: [curl, "http://127.0.0.1:9/undo/${steps.m.output}"]}}
    """
)


def test_step_outputs_in_a_url_are_percent_encoded_at_run_time() -> None:
    """A command printed `../admin?x=1&db=${env.DATABASE_URL} #é`: quoted in a later step's
    URL it stays one path/query/fragment component; elsewhere it is the text as printed."""
    plan = plan_of(STEP_URLS)
    outputs = {"m": {"output": HOSTILE}}

    def run_time(step_id: str) -> Any:
        return on_worker(resolve_step_outputs(plan.action(step_id).params, outputs))

    assert run_time("c")["http"]["url"] == (
        f"https://api.example.com/v1/{ENCODED}?q={ENCODED}#{ENCODED}"
    )
    notify = resolve_env_in(
        resolve_step_outputs(plan.action("n").params, outputs), {**ENV, "HOOK_BASE": "https://h"}
    )
    assert notify["webhook"] == f"https://h/x/{ENCODED}"
    assert notify["message"] == f"got {HOSTILE}"
    assert notify["headers"] == {"X-Out": HOSTILE}
    assert run_time("b")["to"] == f"s3://bucket/{ENCODED}/"
    assert run_time("curl")["command"] == ["curl", f"http://127.0.0.1:9/x?v={ENCODED}", HOSTILE]
    undo = plan.action("curl").undo
    assert undo is not None
    # The interpreter resolves an undo command on its own (a list, no field name around it).
    assert on_worker(resolve_step_outputs(undo.command, outputs)) == [
        "curl",
        f"http://127.0.0.1:9/undo/{ENCODED}",
    ]


def test_a_git_value_that_would_begin_a_command_argument_with_a_dash_is_refused() -> None:
    """Regression: `${git.X}` at the start of an argv element was passed even when the push
    made it start with `-` (an author name `--upload-pack=...` becomes an option). No pattern
    can be declared for a git value, so the run is refused; after literal text it is data."""
    text = flow(
        """
        steps:
          - migrate: {id: m, command: [git, log, "${git.author}", "--author=${git.author}"]}
        """
    )
    hostile = {**PUSH, "author": "--output=/etc/passwd"}
    found = problems(text, context={"git": hostile})
    assert len(found) == 1, found
    path, message = found[0]
    assert path == "steps[0].migrate.command[2]"
    assert "${git.author} starts with '-'" in message and "read as an option" in message
    # A value that does not start with '-' passes, and after literal text any value is data.
    plan = plan_of(text, context={"git": {**PUSH, "author": "eve"}})
    assert plan.action("m").params["command"][2:] == ["eve", "--author=eve"]


# ---------------------------------------------------------------- step outputs as options


@pytest.mark.parametrize(
    ("params", "refused"),
    [
        ({"command": ["tool", "${steps.a.out}"]}, ["command[1]"]),
        ({"command": ["tool", "--ref=${steps.a.out}", "-v"]}, []),  # the author's own text
        ({"command": ["tool", "x"], "env": {"REF": "${steps.a.out}"}}, []),  # not an argument
        ({"message": "${steps.a.out}"}, []),
        ({"command": ["${steps.a.out}${steps.a.out}", "ok"]}, ["command[0]"]),
    ],
)
def test_a_step_output_that_would_begin_an_argument_with_a_dash_is_found(
    params: dict[str, Any], refused: list[str]
) -> None:
    resolved = resolve_step_outputs(params, {"a": {"out": "--upload-pack=x"}})
    found = option_like_outputs(params, resolved)
    assert [problem.split(":")[0] for problem in found] == refused
    harmless = resolve_step_outputs(params, {"a": {"out": "main"}})
    assert option_like_outputs(params, harmless) == []
