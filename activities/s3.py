"""S3 clients, the embedded S3 endpoint, and S3 errors mapped to Temporal's retry semantics.

One boto3 client per endpoint is built by `S3Factory` (the worker builds the factory
once and hands it to `BackupActivities`). The endpoint is the step's `endpoint`, else
`SHIPFLOW_S3_ENDPOINT`, else AWS itself; credentials always come from the standard AWS
chain (environment, shared config, instance role), never from the flow file.

`start_local_s3` runs moto's server mode as a subprocess: a real HTTP S3 endpoint for
`shipflow dev`, the demo and the tests. It keeps objects in memory, so they are gone
when the process stops.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from temporalio.exceptions import ApplicationError

from shipflow.activities.core.settings import Settings
from shipflow.workflows.redaction import redact

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
else:
    S3Client = Any

# Codes that no retry can fix: the bucket or key is wrong, or we may not touch it.
PERMANENT_CODES = frozenset(
    {
        "NoSuchBucket",
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidBucketName",
        "NoSuchKey",
        "InvalidArgument",
        "InvalidStorageClass",
        "InvalidRequest",
        "KMS.NotFoundException",
        "403",
        "404",
    }
)


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> (`bucket`, `some/key`).

    Raises:
        ApplicationError: (non-retryable) not an s3:// URL or no bucket.
    """
    if not url.startswith("s3://") or len(url) <= len("s3://"):
        raise ApplicationError(
            redact(f"not an s3:// URL: {url}"), type="InvalidS3Url", non_retryable=True
        )
    bucket, _, key = url[len("s3://") :].partition("/")
    if not bucket:
        raise ApplicationError(
            redact(f"no bucket in {url}"), type="InvalidS3Url", non_retryable=True
        )
    return bucket, key


class S3Factory:
    """Builds (and caches, per endpoint) the boto3 S3 clients of this process.

    boto3 clients are thread-safe, so the worker's activity threads share them. Client
    retries are few and quick: Temporal owns the real retry policy, and a dead endpoint
    must surface as a failed attempt within seconds rather than minutes.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self._clients: dict[str | None, S3Client] = {}
        self._lock = threading.Lock()

    def endpoint_for(self, endpoint: str | None) -> str | None:
        return endpoint or self.settings.s3_endpoint

    def __call__(self, endpoint: str | None = None) -> S3Client:
        url = self.endpoint_for(endpoint)
        with self._lock:
            client = self._clients.get(url)
            if client is None:
                client = make_s3_client(url, region=self.settings.s3_region)
                self._clients[url] = client
            return client


def make_s3_client(endpoint: str | None, *, region: str = "us-east-1") -> S3Client:
    """A boto3 S3 client for `endpoint` (None: AWS), credentials from the AWS chain."""
    config = Config(
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        s3={"addressing_style": "path"} if endpoint else None,
        max_pool_connections=20,
    )
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint, region_name=region, config=config)


def endpoint_of(client: S3Client) -> str:
    return str(client.meta.endpoint_url)


def raise_s3_error(e: BaseException, client: S3Client, what: str) -> NoReturn:
    """Turn a boto3 failure into the ApplicationError Temporal should see.

    An unreachable endpoint is retryable (it may come back); NoSuchBucket, AccessDenied
    and other client errors are not. Messages name the endpoint and what was being done.
    """
    endpoint = endpoint_of(client)
    if isinstance(e, BotoConnectionError | HTTPClientError):
        raise ApplicationError(
            redact(f"S3 endpoint {endpoint} unreachable while {what}: {e}"), type="S3Unreachable"
        ) from e
    if isinstance(e, ClientError):
        code = str(e.response.get("Error", {}).get("Code", ""))
        message = e.response.get("Error", {}).get("Message", "") or str(e)
        permanent = code in PERMANENT_CODES
        raise ApplicationError(
            redact(f"S3 {code or 'error'} while {what} ({endpoint}): {message}"),
            type=f"S3{code}" if code else "S3Error",
            non_retryable=permanent,
        ) from e
    if isinstance(e, BotoCoreError):
        raise ApplicationError(redact(f"S3 client error while {what}: {e}"), type="S3Error") from e
    raise e


def ensure_bucket(client: S3Client, name: str) -> None:
    """Create bucket `name` unless it exists (idempotent: the dev stack calls it on every start)."""
    try:
        client.head_bucket(Bucket=name)
        return
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise_s3_error(e, client, f"checking bucket {name}")
    except BotoCoreError as e:
        raise_s3_error(e, client, f"checking bucket {name}")
    try:
        client.create_bucket(Bucket=name)
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise_s3_error(e, client, f"creating bucket {name}")
    except BotoCoreError as e:
        raise_s3_error(e, client, f"creating bucket {name}")


#: What moto's server mode needs; a production install (without the `embedded` extra) has none.
EMBEDDED_S3_MODULES = ("moto", "flask", "flask_cors")


def missing_embedded_s3() -> str | None:
    """Why the local S3 endpoint cannot start here, or None when it can.

    moto (with Flask, docker and cfn-lint behind it) is only for the embedded dev stack and
    the tests, so it is the optional extra `embedded`, not a dependency of shipflow itself."""
    absent = [name for name in EMBEDDED_S3_MODULES if importlib.util.find_spec(name) is None]
    if not absent:
        return None
    return (
        f"the local S3 endpoint needs moto's server mode ({', '.join(absent)} not installed): "
        "install shipflow with its `embedded` extra, e.g. pip install 'shipflow[embedded]'"
    )


def start_local_s3(
    port: int,
    data_dir: Path,
    *,
    env: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start moto's S3 server on 127.0.0.1:`port` and wait until it answers.

    Args:
        port: TCP port on loopback.
        data_dir: where the server's log (`moto-s3.log`) goes; moto keeps objects in memory.
        env: extra environment for the server (e.g. `S3_UPLOAD_PART_MIN_SIZE` in tests).
        timeout_s: how long to wait for the endpoint to answer.

    Returns:
        The process (stop it with `terminate()`; the caller owns it) and the endpoint URL.

    Raises:
        RuntimeError: moto's server mode is not installed (the `embedded` extra), or the
            server exited or did not answer in time (the log's tail is included).
    """
    missing = missing_embedded_s3()
    if missing:
        raise RuntimeError(missing)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "moto-s3.log"
    child_env = {**os.environ, **(env or {})}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
            env=child_env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                if sock.recv(12).startswith(b"HTTP/"):
                    return proc, url
        except OSError:
            pass
        time.sleep(0.1)
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=10)
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"moto S3 server on {url} did not start: {tail}")
