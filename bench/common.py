"""What the benchmarks share: a fresh Temporal dev server, and running a benchmark as a script.

`runs_index_bench` and `scale_bench` (and any new benchmark) start the same dev server the
tests start, print the markdown report their `run_bench` returns, and leave with
`os._exit` once it is printed: the Python SDK can crash a process at exit after a worker
shut down (sdk-python issue 300), which would turn a finished benchmark into a failure.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from temporalio.testing import WorkflowEnvironment

from shipflow.activities.core.client import (
    COMMIT_KEY,
    FLOW_KEY,
    STAGE_KEY,
    dev_server_args,
    make_data_converter,
)
from tests.helpers import temporal_binary


async def start_dev_server(*extra_args: str) -> WorkflowEnvironment:
    """An in-memory dev server with shipflow's search attributes and the embedded stack's
    dynamic config (plus `extra_args`); payloads in clear."""
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        data_converter=make_data_converter(None),
        search_attributes=[FLOW_KEY, STAGE_KEY, COMMIT_KEY],
        dev_server_extra_args=[*dev_server_args(), *extra_args],
    )


def print_report(result: dict[str, Any]) -> dict[str, Any]:
    """Print a benchmark's markdown report; return its result (what `run_all` records)."""
    print(result["markdown"])
    return result


def run_as_script(main: Callable[[list[str]], object]) -> NoReturn:
    """`python -m bench.<name> ARGS`: run `main(ARGS)`, then leave at once (see above)."""
    main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
