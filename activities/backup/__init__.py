"""Database backups to S3 (or a `file://` directory) and verified restores: the `backup`
step and `undo: {restore}`.

The package, one module per concern:

- `stores.py`: the `BackupStore` protocol and `FileStore` (`file:///abs/dir/`);
- `s3store.py`: `S3Store`, the streamed multipart upload and the verified download;
- `catalog.py`: keys, the manifest, listing, retention, and `open_store(url)`, which picks
  the store a URL names;
- `create.py` (`create_backup`) and `restore.py` (`restore_backup`): the work;
- `activity.py`: `BackupActivities`, the Temporal activities around them.

Every store has the same layout, manifest, retention and verification. What follows
describes S3; the file store writes a temporary file and renames it into place instead of
a multipart upload.

A backup streams the dump straight into S3: `pg_dump --format=custom`'s stdout is cut
into parts of `part_size` bytes (8 MiB) by a reader thread and uploaded as an S3
multipart upload while pg_dump keeps writing, with at most three parts in memory (one
being read, one queued, one uploading) and no temporary file. A dump smaller than one
part is a single `put_object`. SQLite is copied with its online backup API into a
temporary file first (a consistent snapshot while the app writes), then streamed the
same way.

Object layout: `<prefix>/<flow>/<stage>/<run_id>/<step_id>.pgdump` (or `.sqlite`) and,
next to it, a manifest `<key>.json` (`BackupManifest`) with size, sha256, the source
database without credentials, tool and shipflow versions. Why a sidecar manifest rather
than rewriting the object's metadata with `copy_object` once the upload completes: a
self-copy is limited to 5 GiB (bigger dumps would need a multipart copy), costs a full
server-side copy of the dump, and must repeat encryption and storage-class options; a
manifest is one small PUT, and because it is written only after the dump object is
complete it doubles as the "this backup is complete" marker that listings and
retention rely on. What is known up front (source, versions, flow, stage, run, step)
is also set as the dump object's own metadata, and a single-PUT dump carries its size
and sha256 there too.

A retried backup (Temporal retry, or a new execution after a lost worker, which gets
the last heartbeat as `resume`) first aborts the multipart uploads left on its key,
so abandoned parts never accumulate. A restore downloads the object to a temporary
file while hashing it and refuses a truncated or corrupt object before it touches the
database. A PostgreSQL restore is exact: in one transaction it drops every user object
the database has now (what a migration created after the backup included), then
recreates everything from the dump (`shipflow.activities.dbdump.pg_restore`); a failure rolls all
of it back. By default it restores the dump's owners and grants too (`owners="keep"`;
`"drop"` gives every object to the restoring user, see `shipflow.activities.dbdump.pg_restore`).
"""
