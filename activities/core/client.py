"""The Temporal client, configured once from settings: the same for worker, API and CLI."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

from temporalio.client import Client, Interceptor
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.runtime import Runtime
from temporalio.service import GrpcCompression, PayloadLimitsConfig

from shipflow.activities.core.codec import (
    KEY_FILE_NAME,
    EncryptedFailureConverter,
    EncryptionCodec,
    KeyRing,
    PayloadKeyError,
    parse_keys,
)
from shipflow.activities.core.settings import Settings

log = logging.getLogger("shipflow.client")

FLOW_KEY = SearchAttributeKey.for_keyword("ShipflowFlow")
STAGE_KEY = SearchAttributeKey.for_keyword("ShipflowStage")
COMMIT_KEY = SearchAttributeKey.for_keyword("ShipflowCommit")
#: Registered when the embedded dev server starts (`temporal server start-dev --search-attribute`).
SEARCH_ATTRIBUTES = {
    "ShipflowFlow": "Keyword",
    "ShipflowStage": "Keyword",
    "ShipflowCommit": "Keyword",
}

#: The dynamic config key of eager activity execution (the bench turns it off to compare).
EAGER_ACTIVITIES = "system.enableActivityEagerExecution"
#: Dynamic config every embedded dev server starts with (`shipflow dev`, tests, benchmarks).
#: Updates are on. The transfer-task loader's rate limit is raised from 20 to 1000 loads a
#: second per shard: the dev server has one shard, so at 20 every workflow and activity task
#: waits ~40 ms to be loaded, which is most of a short step's latency. Eager activity
#: execution is on: `temporal server start-dev` turns it on by itself (Temporal's server
#: default is off), and it is pinned here so that a CLI upgrade cannot turn it off unseen.
#: The SDK asks for it when an activity runs on the worker's own task queue with a free
#: slot, and the server then hands the activity back in the answer to the workflow task
#: that scheduled it, instead of through a transfer task and a poll of the matching service
#: (about 5 ms of dispatch per regular step on the embedded stack; docs/benchmarks.md,
#: config `no-eager`). On a real cluster both knobs trade something (see README, "Running
#: in production").
DEV_SERVER_DYNAMIC_CONFIG = {
    "frontend.enableUpdateWorkflowExecution": "true",
    "history.transferProcessorMaxPollRPS": "1000",
    EAGER_ACTIVITIES: "true",
}


def dev_server_args() -> list[str]:
    """`--dynamic-config-value` arguments for `temporal server start-dev`."""
    args: list[str] = []
    for key, value in DEV_SERVER_DYNAMIC_CONFIG.items():
        args += ["--dynamic-config-value", f"{key}={value}"]
    return args


def payload_keys(settings: Settings) -> KeyRing | None:
    """The payload key ring: `SHIPFLOW_PAYLOAD_KEYS`, else the key file, else None.

    The key file is `SHIPFLOW_PAYLOAD_KEY_FILE` (which must then exist) or, when that is
    not set, `<data_dir>/payload-keys` if it exists (what the embedded stack writes).

    Raises:
        PayloadKeyError: the keys are malformed or the named key file cannot be read.
    """
    if settings.payload_keys is not None:
        return parse_keys(settings.payload_keys.get_secret_value(), source="SHIPFLOW_PAYLOAD_KEYS")
    path = settings.payload_key_file or settings.data_dir / KEY_FILE_NAME
    if settings.payload_key_file is None and not path.exists():
        return None
    try:
        text = path.read_text()
    except OSError as e:
        raise PayloadKeyError(f"payload key file {path}: {e.strerror or e}") from None
    return parse_keys(text, source=f"payload key file {path}")


def make_data_converter(keys: KeyRing | None) -> DataConverter:
    """pydantic_data_converter, plus the encryption codec when there are keys.

    With a codec, failure messages and stack traces are encrypted too (a failed command's
    message quotes its output); see `EncryptedFailureConverter`.
    """
    if keys is None:
        return pydantic_data_converter
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(keys),
        failure_converter_class=EncryptedFailureConverter,
    )


def data_converter(settings: Settings) -> DataConverter:
    """The one data converter of every shipflow client (worker, API, CLI, Replayer)."""
    return make_data_converter(payload_keys(settings))


#: The memo size above which the SDK logs a warning (TMPRL1103) when it sends one. The SDK's
#: default, 2 KiB, mirrors the server's *warning* default and is below a 10-step run's start
#: memo: every run start and many status flushes would log it, drowning the one that
#: matters. Shipflow keeps each run's status in its memo by design (README), so it warns at
#: a quarter of the server's default *error* limit (`limit.memoSize.error`, 2 MiB), where a
#: run is heading for trouble (a flow of several thousand steps).
MEMO_WARN_BYTES = 512 * 1024


def is_loopback(address: str) -> bool:
    """Whether a `host:port` Temporal address is this machine (localhost, 127/8, ::1)."""
    host = address.rsplit(":", 1)[0] if ":" in address else address
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def transport_options(settings: Settings) -> dict[str, Any]:
    """How every shipflow client talks to Temporal, beside the address and credentials.

    Compression: temporalio gzips every request and asks for gzipped answers by default.
    Over loopback (the embedded stack) that is CPU on both ends for no transfer saved: every
    workflow task's history, command and payload is compressed and decompressed
    (`temporal_compression` = auto turns it off there; docs/benchmarks.md has the cost).
    """
    choice = settings.temporal_compression
    if choice == "auto":
        choice = "none" if is_loopback(settings.temporal_address) else "gzip"
    return {
        "grpc_compression": GrpcCompression.NONE if choice == "none" else GrpcCompression.GZIP,
        "payload_limits": PayloadLimitsConfig(memo_warn_size=MEMO_WARN_BYTES),
    }


async def connect(
    settings: Settings,
    *,
    runtime: Runtime | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> Client:
    """A client for `settings`; `runtime` (the worker's, with its metrics endpoint) and
    `interceptors` (tracing) are passed on to every worker built from it."""
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    converter = data_converter(settings)
    codec = converter.payload_codec
    if isinstance(codec, EncryptionCodec):
        log.info(
            "payloads encrypted with key %r; %d key(s) decrypt",
            codec.keys.current_id,
            len(codec.keys.ids),
        )
    else:
        log.warning(
            "no payload keys configured (SHIPFLOW_PAYLOAD_KEYS): run data goes to Temporal in clear"
        )
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=converter,
        api_key=api_key,
        tls=settings.temporal_tls or api_key is not None,
        runtime=runtime,
        interceptors=interceptors,
        **transport_options(settings),
    )
