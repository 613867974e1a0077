"""Oversized webhook bodies: refused at 413 while they stream, never buffered.

The API runs as its own process (as deployed), so its resident memory can be read
from /proc while a 200 MB unsigned body is pushed at it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shipflow.api.hook_requests import MAX_PAYLOAD_BYTES
from tests.api.served import ApiProcess
from tests.triggers.test_hooks import SECRET

BIG = 200 * 1024 * 1024
CHUNK = 1024 * 1024


@pytest.fixture
def served(tmp_path: Path, temporal_address: str) -> Iterator[ApiProcess]:
    api = ApiProcess(
        {
            "SHIPFLOW_TEMPORAL_ADDRESS": temporal_address,
            "SHIPFLOW_OPEN_DEV_INSTANCE": "true",
            "SHIPFLOW_GITHUB_SECRET": SECRET,
            "SHIPFLOW_GITLAB_TOKEN": "gl-token",
        },
        tmp_path / "shipflow",
    )
    try:
        api.wait_ready()
        yield api
    finally:
        api.close()


def _head_only(url: str, path: str, length: int) -> bytes:
    """Send a request's headers declaring `length` bytes, none of the body; the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"X-GitHub-Event: push\r\nContent-Length: {length}\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer


@pytest.mark.parametrize("path", ["/hooks/github", "/hooks/gitlab"])
def test_declared_length_over_the_limit_is_refused_before_the_body(
    served: ApiProcess, path: str
) -> None:
    # On the buffering reader the server waited for 200 MB that never came (timeout).
    answer = _head_only(served.url, path, BIG)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def _chunks() -> Iterator[bytes]:
    block = b"x" * CHUNK
    for _ in range(BIG // CHUNK):
        yield block


@pytest.mark.parametrize("path", ["/hooks/github", "/hooks/gitlab"])
def test_a_200mb_streamed_body_does_not_grow_the_api(served: ApiProcess, path: str) -> None:
    before = served.peak_rss_kb()
    with httpx.Client(base_url=served.url, timeout=60) as http:
        # No Content-Length: the body arrives chunked, so only reading it can bound it.
        try:
            response = http.post(
                path,
                content=_chunks(),
                headers={"content-type": "application/json", "x-github-event": "push"},
            )
        except httpx.TransportError:  # the server may close before all 200 MB are sent
            response = None
    grown_mb = (served.peak_rss_kb() - before) / 1024
    assert grown_mb < 4 * MAX_PAYLOAD_BYTES / 1e6, f"the API grew by {grown_mb:.0f} MB"
    if response is not None:
        assert response.status_code == 413, response.text
        assert "too large" in response.json()["detail"]
    assert served.process.poll() is None
    with httpx.Client(base_url=served.url) as http:  # and it still serves
        assert http.get("/healthz").status_code == 200
