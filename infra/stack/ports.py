"""The stack's loopback ports: which option moves which, whether one is free, picking free ones.

`PortInUse` names the CLI option that moves the taken port, so `shipflow dev` can say what
to change instead of failing with a child's bind error.
"""

from __future__ import annotations

import socket

from shipflow.infra.stack.processes import StackError

PORT_OPTIONS = {
    "api_port": ("API", "--api-port"),
    "temporal_port": ("Temporal", "--temporal-port"),
    "ui_port": ("Temporal Web UI", "--ui-port"),
    "runtime_port": ("local runtime", "--runtime-port"),
    "s3_port": ("S3", "--s3-port"),
    "metrics_port": ("worker metrics", "--metrics-port"),  # 0: not served
}


class PortInUse(StackError):
    def __init__(self, port: int, what: str, option: str):
        super().__init__(
            f"port {port} ({what}) is already in use on 127.0.0.1; "
            f"stop whatever listens there or pick another port with {option}"
        )
        self.port = port
        self.option = option


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
