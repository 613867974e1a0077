"""Run pytest and exit with its real result.

The Temporal SDK's native runtime can crash while the interpreter tears down after all
workers and servers are shut down (sdk-python issue 300). The tests are over by then, so
we flush and leave with pytest's own exit code instead of letting teardown decide it.
"""

from __future__ import annotations

import os
import sys

import pytest


def main() -> None:
    code = pytest.main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code))


if __name__ == "__main__":
    main()
