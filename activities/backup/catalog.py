"""What a backup is called and how to find it: keys, the manifest, listing, retention, opening a store.

Object layout: `<prefix>/<flow>/<stage>/<run_id>/<step_id>.pgdump` (or `.sqlite`) and,
next to it, the manifest `<key>.json` (`BackupManifest`), written last: it marks the backup
complete, so listings (`list_backups`), retention (`apply_retention`) and restores by key
(`read_manifest`) see only complete backups. The API, the CLI and the activities all read
backups through these functions, whatever the store.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from importlib import metadata as importlib_metadata

from pydantic import BaseModel, ValidationError
from temporalio.exceptions import ApplicationError

from shipflow.activities.backup.s3store import S3Store
from shipflow.activities.backup.stores import (
    MANIFEST_SUFFIX,
    BackupStore,
    FileStore,
    parse_file_url,
)
from shipflow.activities.dbdump.database import (
    SUFFIXES,
    DatabaseKind,
)
from shipflow.activities.s3 import S3Client, parse_s3_url
from shipflow.workflows.io.common import StepContext


class BackupManifest(BaseModel):
    """The sidecar `<key>.json` written once the dump object is complete."""

    key: str
    url: str
    size: int
    sha256: str
    kind: DatabaseKind
    database: str
    tool_version: str
    shipflow_version: str
    flow: str
    stage: str
    run_id: str
    step_id: str
    created_at: datetime
    duration_s: float


def shipflow_version() -> str:
    try:
        return importlib_metadata.version("shipflow")
    except importlib_metadata.PackageNotFoundError:
        return "0.1.0+src"


def backup_key(prefix: str, context: StepContext, kind: DatabaseKind) -> str:
    """`<prefix>/<flow>/<stage>/<run_id>/<step_id><suffix>`: one object per run and step.

    A retry of the same step writes the same key, so retries never leave extra backups.
    """
    parts = [prefix.strip("/"), context.flow, context.stage, context.run_id]
    return "/".join(p for p in parts if p) + f"/{context.step_id}{SUFFIXES[kind]}"


def flow_prefix(prefix: str, flow: str) -> str:
    """The key prefix under which every backup of `flow` lives (ends with `/`)."""
    return "/".join(p for p in (prefix.strip("/"), flow) if p) + "/"


def list_backups(store: BackupStore, prefix: str, flow: str) -> list[BackupManifest]:
    """Every complete backup of `flow` under `prefix` in `store`, newest first.

    Complete means "has a manifest": a dump whose manifest was never written (the
    attempt died in between) is not listed and not restorable by key alone.
    """
    found: list[BackupManifest] = []
    for body in store.manifests(flow_prefix(prefix, flow)):
        try:
            found.append(BackupManifest.model_validate_json(body))
        except ValidationError:
            continue
    found.sort(key=lambda m: (m.created_at, m.key), reverse=True)
    return found


def apply_retention(
    store: BackupStore, prefix: str, flow: str, database: str, keep: int
) -> list[str]:
    """Delete all but the newest `keep` backups of `flow` taken from `database`.

    `database` is the credential-free URL, so two flows' databases, or two databases
    of one flow, never prune each other's backups.

    Returns:
        The deleted dump keys.
    """
    same = [m for m in list_backups(store, prefix, flow) if m.database == database]
    deleted: list[str] = []
    for m in same[keep:]:
        store.delete(m.key)
        deleted.append(m.key)
    return deleted


def read_manifest(store: BackupStore, key: str) -> BackupManifest:
    """The manifest of the dump at `key`.

    Raises:
        ApplicationError: (non-retryable) no manifest, or not a shipflow manifest.
    """
    url = store.url(key)
    body = store.get_manifest(key)
    if body is None:
        raise ApplicationError(
            f"{url} has no manifest ({key}{MANIFEST_SUFFIX}): the backup never "
            "completed or is not a shipflow backup, so it cannot be verified",
            type="BackupNotFound",
            non_retryable=True,
        )
    try:
        return BackupManifest.model_validate_json(body)
    except ValidationError as e:
        raise ApplicationError(
            f"{url}{MANIFEST_SUFFIX} is not a valid manifest: {e}",
            type="BackupNotFound",
            non_retryable=True,
        ) from None


# ---------------------------------------------------------------- restore


def open_store(
    url: str, s3_factory: Callable[[str | None], S3Client], endpoint: str | None = None
) -> tuple[BackupStore, str]:
    """The store a backup URL names, and the key (or prefix) inside it.

    `s3://bucket/prefix/` -> (S3Store on bucket, `prefix/`); `file:///abs/dir/` ->
    (FileStore on the filesystem root, `abs/dir/`).

    Raises:
        ApplicationError: (non-retryable) neither an s3:// nor a file:/// URL.
    """
    if url.startswith("file:"):
        return FileStore(), parse_file_url(url)
    bucket, key = parse_s3_url(url)
    return S3Store(s3_factory(endpoint), bucket), key
