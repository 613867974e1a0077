"""Payload encryption end to end: Temporal's raw history holds no run data in clear, and
the API's `/codec` endpoint (what the Web UI and `temporal --codec-endpoint` call) decodes
it for viewers; keys rotate; a wrong key is a clear error.

Everything is real: the session's Temporal dev server, a worker running the flow, the
`temporal` CLI reading the history without any codec, and the API app driven through
httpx (`tests/cli/test_stack_codec.py` does the same over real sockets, from the UI's origin).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf.json_format import MessageToDict
from pydantic import SecretStr
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus

from shipflow.activities.core.client import make_data_converter
from shipflow.activities.core.codec import EncryptionCodec, new_key_entry, parse_keys
from shipflow.activities.core.settings import Settings
from shipflow.api.app import create_app
from shipflow.workflows.status import RunState
from tests.api.conftest import api_client, bearer, token_settings
from tests.conftest import TEST_PAYLOAD_KEYS
from tests.helpers import (
    cli_history,
    finish,
    new_worker,
    run_flow,
    start_flow,
    wait_until,
)

UI_ORIGIN = "http://127.0.0.1:8233"  # the Settings default SHIPFLOW_UI_URL's origin

FLOW = """
apiVersion: shipflow/v1
name: {name}
stage: codec
args:
  marker: {{default: plain}}
steps:
  - migrate: {{id: emit, command: [sh, -c, "echo OUT-$((6*7))-{tag} ${{args.marker}}"]}}
  - migrate:
      id: flaky
      retries: 1
      command: [sh, -c, "test -f {file} || {{ touch {file}; echo FAIL-$((5*5))-{tag} >&2; exit 3; }}"]
"""


def secrets_of(tag: str) -> dict[str, str]:
    """The distinctive strings of one run: none may appear in the raw history."""
    return {
        "arg": f"ARG-{tag}",
        "command": "OUT-$((6*7))",
        "output": f"OUT-42-{tag}",
        "failure output": f"FAIL-25-{tag}",
    }


async def raw_history(address: str, run_id: str) -> dict[str, Any]:
    """The run's history as the `temporal` CLI prints it with no codec configured."""
    return await asyncio.to_thread(cli_history, address, run_id)


def walk(value: Any) -> list[Any]:
    """Every dict, list and scalar nested in a JSON value."""
    out = [value]
    if isinstance(value, dict):
        for item in value.values():
            out += walk(item)
    elif isinstance(value, list):
        for item in value:
            out += walk(item)
    return out


def payloads_in(value: Any, *, clear_ok: bool = False) -> list[dict[str, Any]]:
    """Every payload (`{"metadata": ..., "data": ...}`) in the history, except the kinds
    that are clear by design: search attributes (indexed by the server: flow, stage,
    commit), a local activity marker's `data` detail (the SDK's bookkeeping: sequence
    number, attempt, activity type, times; its result is a separate, encrypted detail) and a
    patch marker's `patch_data` (the patch id written by the SDK's core, e.g.
    `index-run-states`: our own constant, never run data)."""
    if isinstance(value, dict):
        if "metadata" in value and "data" in value:
            return [] if clear_ok else [value]
        found = []
        for key, item in value.items():
            if key == "searchAttributes":
                continue
            bookkeeping = (
                key in ("data", "patch-data") and "payloads" in item
                if isinstance(item, dict)
                else False
            )
            found += payloads_in(item, clear_ok=clear_ok or bookkeeping)
        return found
    if isinstance(value, list):
        return [p for item in value for p in payloads_in(item, clear_ok=clear_ok)]
    return []


def all_text(value: Any) -> str:
    """The JSON text plus every string that is base64, decoded: clear text cannot hide."""
    parts = [json.dumps(value)]
    for item in walk(value):
        if isinstance(item, str) and len(item) >= 8:
            try:
                parts.append(base64.b64decode(item, validate=True).decode("utf-8", "replace"))
            except (binascii.Error, ValueError):
                pass
    return "\n".join(parts)


async def test_raw_history_holds_no_run_data_and_the_codec_endpoint_decodes_it(
    temporal_client: Client, settings: Settings, temporal_address: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:10]
    name = f"codec-{tag[:6]}"
    text = FLOW.format(name=name, tag=tag, file=tmp_path / "flaky-once")
    hidden = secrets_of(tag)
    async with new_worker(temporal_client, settings):
        status = await run_flow(temporal_client, settings, text, {"marker": hidden["arg"]})
    assert status.state == RunState.SUCCEEDED, status
    # The run really carried the strings: the client (with the key) sees them.
    emit = next(s for s in status.steps if s.id == "emit")
    assert hidden["output"] in json.dumps(emit.output)
    flaky = next(s for s in status.steps if s.id == "flaky")
    assert flaky.attempts == 2

    history = await raw_history(temporal_address, status.run_id)
    raw = all_text(history)
    for what, value in hidden.items():
        assert value not in raw, f"the run's {what} is in the raw history"
    payloads = payloads_in(history)
    assert len(payloads) >= 5
    for payload in payloads:
        encoding = base64.b64decode(payload["metadata"]["encoding"])
        assert encoding == b"binary/encrypted", payload["metadata"]
        assert base64.b64decode(payload["metadata"]["encryption-key-id"]) == b"test-1"
    # The failed attempt's message (it quotes stderr) is encrypted too, not just inputs.
    failures = [v for v in walk(history) if isinstance(v, dict) and "encodedAttributes" in v]
    assert failures, "failure messages should travel in encoded attributes"

    secured = token_settings(settings)
    async with api_client(secured) as http:
        body = {"payloads": payloads}
        answer = await http.post(
            "/codec/decode", json=body, headers={**bearer("viewer"), "X-Namespace": "default"}
        )
        assert answer.status_code == 200, answer.text
        decoded = answer.json()["payloads"]
        assert len(decoded) == len(payloads)
        assert all(
            base64.b64decode(p["metadata"]["encoding"]) != b"binary/encrypted" for p in decoded
        )
        clear = all_text(decoded)
        for what, value in hidden.items():
            assert value in clear, f"the decoded payloads lack the run's {what}"

        missing = await http.post("/codec/decode", json=body)
        assert missing.status_code == 401
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        assert hidden["arg"] not in missing.text
        bad = await http.post(
            "/codec/decode", json=body, headers={"Authorization": "Bearer not-a-real-token"}
        )
        assert bad.status_code == 401


async def test_cors_preflight_and_headers_for_the_web_ui(settings: Settings) -> None:
    async with api_client(token_settings(settings)) as http:
        preflight = await http.options(
            "/codec/decode",
            headers={
                "Origin": UI_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
            },
        )
        assert preflight.status_code == 204, preflight.text
        assert preflight.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
        assert {"authorization", "content-type", "x-namespace"} <= {
            h.strip() for h in allowed.split(",")
        }
        assert preflight.headers["Access-Control-Allow-Credentials"] == "true"
        # The UI's origin as typed with `localhost` is the same UI.
        alias = await http.options(
            "/codec/encode",
            headers={"Origin": "http://localhost:8233", "Access-Control-Request-Method": "POST"},
        )
        assert alias.headers["Access-Control-Allow-Origin"] == "http://localhost:8233"

        foreign = await http.options(
            "/codec/decode",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert foreign.status_code == 403
        assert "Access-Control-Allow-Origin" not in foreign.headers
        assert "evil.example" in foreign.json()["detail"]

        # Errors carry the CORS headers too, or the browser hides them behind a CORS error.
        refused = await http.post(
            "/codec/decode", json={"payloads": []}, headers={"Origin": UI_ORIGIN}
        )
        assert refused.status_code == 401
        assert refused.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
        served = await http.post(
            "/codec/encode",
            json={"payloads": []},
            headers={"Origin": UI_ORIGIN, **bearer("viewer")},
        )
        assert served.status_code == 200 and served.json() == {"payloads": []}
        assert served.headers["Access-Control-Allow-Origin"] == UI_ORIGIN


async def test_loopback_web_ui_decodes_without_a_token_only_when_enabled(
    settings: Settings,
) -> None:
    """The Web UI cannot send a shipflow token; the embedded stack opens /codec to it on
    loopback. Off by default; and even when on, only for the UI's origin."""
    secured = token_settings(settings)
    async with api_client(secured) as http:
        closed = await http.post(
            "/codec/encode", json={"payloads": []}, headers={"Origin": UI_ORIGIN}
        )
        assert closed.status_code == 401
    opened = secured.model_copy(update={"codec_loopback_open": True})
    async with api_client(opened) as http:  # httpx's ASGI transport is a 127.0.0.1 client
        payload = {
            "metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
            "data": base64.b64encode(b'"hello"').decode(),
        }
        encoded = await http.post(
            "/codec/encode", json={"payloads": [payload]}, headers={"Origin": UI_ORIGIN}
        )
        assert encoded.status_code == 200, encoded.text
        sealed = encoded.json()["payloads"][0]
        assert b"hello" not in base64.b64decode(sealed["data"])
        decoded = await http.post(
            "/codec/decode", json={"payloads": [sealed]}, headers={"Origin": UI_ORIGIN}
        )
        assert decoded.status_code == 200, decoded.text
        assert decoded.json()["payloads"] == [payload]
        # No Origin (a script, not the UI) or another origin: a token is still needed.
        script = await http.post("/codec/decode", json={"payloads": [sealed]})
        assert script.status_code == 401
        other = await http.post(
            "/codec/decode", json={"payloads": [sealed]}, headers={"Origin": "https://x.example"}
        )
        assert other.status_code == 401
    app = create_app(opened)
    async with app.router.lifespan_context(app):
        remote = httpx.ASGITransport(app=app, client=("10.1.2.3", 4000))
        async with httpx.AsyncClient(transport=remote, base_url="http://shipflow.test") as http:
            answer = await http.post(
                "/codec/encode", json={"payloads": []}, headers={"Origin": UI_ORIGIN}
            )
            assert answer.status_code == 401, "not loopback: the token is required"


async def test_bad_codec_requests_are_4xx_naming_the_field(settings: Settings) -> None:
    async with api_client(settings) as http:  # open API: only the body is wrong
        cases: list[tuple[Any, dict[str, str], str]] = [
            ({}, {}, "payloads: field required"),
            ({"payloads": "x"}, {}, "payloads: field required"),
            ({"payloads": [1]}, {}, "payloads[0]: not an object"),
            ({"payloads": [{"metadata": "x"}]}, {}, "payloads[0]: "),
            ({"payloads": []}, {"X-Namespace": "other"}, "X-Namespace"),
        ]
        for body, headers, expected in cases:
            answer = await http.post("/codec/decode", json=body, headers=headers)
            assert answer.status_code == 422, (body, answer.text)
            assert expected in answer.json()["detail"], (body, answer.text)
        notjson = await http.post(
            "/codec/decode", content=b"{", headers={"Content-Type": "application/json"}
        )
        assert notjson.status_code == 422 and "not JSON" in notjson.json()["detail"]
        nothing = await http.options("/codec/nothing", headers={"Origin": UI_ORIGIN})
        assert nothing.status_code == 404


async def test_rotated_keys_read_old_runs_and_a_missing_key_is_a_clear_error(
    temporal_client: Client, settings: Settings, tmp_path: Path
) -> None:
    """A run encrypted with the old key (`test-1`) stays readable after a new current key
    is put first; an API without the old key answers with an error naming the key id."""
    tag = uuid.uuid4().hex[:10]
    text = FLOW.format(name=f"rotate-{tag[:6]}", tag=tag, file=tmp_path / "flaky-once")
    async with new_worker(temporal_client, settings):
        status = await run_flow(temporal_client, settings, text, {"marker": f"ARG-{tag}"})
    assert status.state == RunState.SUCCEEDED

    new_entry = new_key_entry("test-2")
    rotated = settings.model_copy(
        update={"payload_keys": SecretStr(f"{new_entry},{TEST_PAYLOAD_KEYS}")}
    )
    async with api_client(rotated) as http:
        answer = await http.get(f"/runs/{status.run_id}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["state"] == "succeeded"
        assert f"ARG-{tag}" in answer.text
        # New payloads use the new current key; they and old ones both decode.
        payload = {
            "metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
            "data": base64.b64encode(b'"x"').decode(),
        }
        sealed = (await http.post("/codec/encode", json={"payloads": [payload]})).json()
        key_id = sealed["payloads"][0]["metadata"]["encryption-key-id"]
        assert base64.b64decode(key_id) == b"test-2"

    only_new = settings.model_copy(update={"payload_keys": SecretStr(new_entry)})
    async with api_client(only_new) as http:
        answer = await asyncio.wait_for(http.get(f"/runs/{status.run_id}"), timeout=30)
        assert answer.status_code == 503
        detail = answer.json()["detail"]
        assert "'test-1'" in detail and "not configured" in detail
        assert new_entry.split(":", 1)[1] not in detail
        old_codec = EncryptionCodec(parse_keys(TEST_PAYLOAD_KEYS, source="tests"))
        old = MessageToDict(old_codec.encrypt(Payload(metadata={"encoding": b"json/plain"})))
        decode = await http.post("/codec/decode", json={"payloads": [sealed["payloads"][0], old]})
        assert decode.status_code == 422
        detail = decode.json()["detail"]
        assert detail.startswith("payloads[1]: ") and "'test-1'" in detail


@pytest.mark.parametrize(
    "keys, expected",
    [
        ("k1", "entry 1 is not 'id:base64key'"),
        ("k1:!!notbase64!!", "the key of 'k1' is not valid base64"),
        ("k1:" + base64.b64encode(b"short").decode(), "'k1' is 5 bytes; AES-256 needs 32"),
    ],
)
async def test_malformed_keys_stop_the_api_at_start_with_a_clear_error(
    settings: Settings, keys: str, expected: str
) -> None:
    broken = settings.model_copy(update={"payload_keys": SecretStr(keys)})
    with pytest.raises(Exception) as raised:
        async with api_client(broken):
            pass
    assert "SHIPFLOW_PAYLOAD_KEYS" in str(raised.value)
    assert expected in str(raised.value)


async def test_a_worker_with_the_wrong_key_stalls_the_run_until_a_right_one_takes_over(
    temporal_client: Client, settings: Settings, temporal_address: str
) -> None:
    """A misconfigured worker must not fail runs: its workflow tasks fail (Temporal retries
    them) and the run continues, untouched, once a worker with the right key is back."""
    wrong = await Client.connect(
        temporal_address,
        data_converter=make_data_converter(parse_keys(new_key_entry("test-1"), source="wrong")),
    )
    text = """
apiVersion: shipflow/v1
name: wrongkey
stage: codec
steps:
  - migrate: {id: one, command: ["true"]}
"""
    handle = await start_flow(temporal_client, settings, text)

    async def task_failed() -> bool:
        history = await handle.fetch_history()
        return any(
            e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED for e in history.events
        )

    async with new_worker(wrong, settings):
        await wait_until(task_failed, timeout=30)
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    # The reason is readable in the history without any key: it names the key id.
    history = await handle.fetch_history()
    failure = next(
        e.workflow_task_failed_event_attributes.failure
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    )
    assert "key id 'test-1' does not decrypt with the configured key" in failure.message
    async with new_worker(temporal_client, settings):
        status = await asyncio.wait_for(finish(handle), timeout=60)
    assert status.state == RunState.SUCCEEDED
