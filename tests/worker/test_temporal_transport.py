"""How shipflow's clients talk to Temporal: no gzip over loopback, gzip to a remote server,
and no SDK warning for the status memo every run carries."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from temporalio.service import GrpcCompression

from shipflow.activities.core.client import MEMO_WARN_BYTES, is_loopback, transport_options
from shipflow.activities.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("address", "choice", "expected"),
    [
        ("127.0.0.1:7233", "auto", GrpcCompression.NONE),
        ("localhost:7233", "auto", GrpcCompression.NONE),
        ("[::1]:7233", "auto", GrpcCompression.NONE),
        ("127.0.0.2:7233", "auto", GrpcCompression.NONE),
        ("temporal.internal:7233", "auto", GrpcCompression.GZIP),
        ("my-ns.a1b2c.tmprl.cloud:7233", "auto", GrpcCompression.GZIP),
        ("10.0.0.5:7233", "auto", GrpcCompression.GZIP),
        ("127.0.0.1:7233", "gzip", GrpcCompression.GZIP),
        ("temporal.internal:7233", "none", GrpcCompression.NONE),
    ],
)
def test_compression_follows_the_address(
    address: str, choice: str, expected: GrpcCompression
) -> None:
    settings = Settings(temporal_address=address, temporal_compression=choice)  # type: ignore[arg-type]
    assert transport_options(settings)["grpc_compression"] == expected


def test_is_loopback_reads_host_port_forms() -> None:
    assert is_loopback("localhost") and is_loopback("[::1]:7233") and is_loopback("127.9.9.9:1")
    assert not is_loopback("temporal:7233") and not is_loopback("[2001:db8::1]:7233")


def test_an_unknown_compression_is_refused_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="temporal_compression"):
        Settings(temporal_compression="zstd")  # type: ignore[arg-type]


# Starts a run-sized workflow (a memo like a 20-step flow's start memo, no worker needed)
# with shipflow's client, or with the SDK's defaults, and prints the compression in use.
START = textwrap.dedent(
    """
    import asyncio, os, sys, uuid
    from temporalio.client import Client
    from shipflow.activities.core.client import connect
    from shipflow.activities.core.settings import Settings

    async def main():
        address, how = sys.argv[1], sys.argv[2]
        if how == "shipflow":
            client = await connect(Settings(temporal_address=address))
        else:
            client = await Client.connect(address)
        memo = {f"step.s{i}": {"id": f"s{i}", "summary": "x" * 200} for i in range(20)}
        handle = await client.start_workflow(
            "NoWorkerNeeded", id=f"memo-{uuid.uuid4().hex}", task_queue="nowhere", memo=memo
        )
        assert len(await (await handle.describe()).memo()) == 20
        await handle.terminate("test done")
        print(type(client.service_client.config.grpc_compression).__name__, flush=True)

    asyncio.run(main())
    sys.stdout.flush()
    sys.stderr.flush()
    # The SDK can abort the interpreter at teardown (PyGILState_Release) after the work is
    # done; leave with the real result instead.
    os._exit(0)
    """
)


def _start(address: str, how: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", START, address, how],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )


def test_a_run_sized_memo_starts_without_an_sdk_warning(temporal_address: str) -> None:
    """The SDK warns (TMPRL1103) for any memo over 2 KiB, which a 10-step flow's status
    memo already is: every run start and many status flushes would log it. Shipflow's
    client warns only near the server's limit; it talks to a loopback server uncompressed.
    The SDK's defaults, on the same server, do warn: the check can fail."""
    default = _start(temporal_address, "sdk")
    assert default.returncode == 0, default.stderr
    # The SDK's native core logs to standard output.
    assert "TMPRL1103" in default.stdout + default.stderr
    assert default.stdout.strip().splitlines()[-1] == "_GzipGrpcCompression"

    ours = _start(temporal_address, "shipflow")
    assert ours.returncode == 0, ours.stderr
    assert "TMPRL1103" not in ours.stdout + ours.stderr, ours.stdout
    assert ours.stdout.strip().splitlines()[-1] == "_NoGrpcCompression"
    assert MEMO_WARN_BYTES >= 256 * 1024
