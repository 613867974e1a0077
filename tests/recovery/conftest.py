"""Recovery runs need a local runtime and an S3 endpoint: the same fixtures as their own suites."""

from tests.backup.conftest import bucket, s3, s3_endpoint
from tests.local.conftest import runtime

__all__ = ["bucket", "runtime", "s3", "s3_endpoint"]
