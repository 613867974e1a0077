"""When a child of the stack counts as started: Temporal answers with the search attributes,
the worker polls its task queue, an HTTP endpoint is green.

The stack starts the next child only once the previous one is ready (`_wait_for`), and a
child that dies or stays unready past `start_timeout_s` fails the start with its log tail.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

import httpx

from shipflow.activities.core.client import SEARCH_ATTRIBUTES
from shipflow.infra.stack.processes import Child, ChildProcesses, StackError, _Pending


class Readiness(ChildProcesses):
    """Waiting until a started child is really usable (mixed into `EmbeddedStack`)."""

    def _await(self, pending: _Pending | None) -> None:
        if pending is not None:
            self._wait_for(*pending)

    def _wait_for(self, child: Child, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self._stopping.is_set() and self._supervisor is not None:
                raise StackError(f"{child.name}: the stack is stopping")
            if not child.alive():
                raise StackError(
                    f"{child.name} exited with code {child.proc.returncode} while waiting for "
                    f"{what}; its log ({child.log_path}) ends with:\n{child.log_tail()}"
                )
            if ready():
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"{child.name}: timed out after {self.start_timeout_s:g}s waiting for {what}; "
                    f"its log ({child.log_path}) ends with:\n{child.log_tail()}"
                )
            time.sleep(0.2)

    def _temporal_ready(self) -> bool:
        if not _tcp_open("127.0.0.1", self.temporal_port):
            return False
        return _run_async(self._temporal_usable())

    async def _temporal_usable(self) -> bool:
        """The namespace answers and our search attributes are registered."""
        from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
        from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
        from temporalio.client import Client

        try:
            client = await asyncio.wait_for(Client.connect(self.temporal_address), timeout=5)
            await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace="default"), timeout=_td(3)
            )
            found = await client.operator_service.list_search_attributes(
                ListSearchAttributesRequest(namespace="default"), timeout=_td(3)
            )
        except Exception:
            return False
        return all(name in found.custom_attributes for name in SEARCH_ATTRIBUTES)

    def _worker_polling(self) -> bool:
        return _run_async(self._has_pollers())

    async def _has_pollers(self) -> bool:
        from temporalio.api.enums.v1 import TaskQueueType
        from temporalio.api.taskqueue.v1 import TaskQueue
        from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
        from temporalio.client import Client

        try:
            client = await asyncio.wait_for(Client.connect(self.temporal_address), timeout=5)
            answer = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace="default",
                    task_queue=TaskQueue(name=self.task_queue),
                    task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
                ),
                timeout=_td(3),
            )
        except Exception:
            return False
        return len(answer.pollers) > 0


def _run_async(work: Coroutine[Any, Any, bool]) -> bool:
    """Run a readiness check on a private event loop.

    Not `asyncio.run`: that resets the thread's current loop when it ends, which would
    pull the loop out from under a caller that has one (pytest-asyncio, notebooks).
    """
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(work)
    finally:
        loop.close()


def _td(seconds: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=seconds)


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False
