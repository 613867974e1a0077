"""Dump and restore engines: `pg_dump`/`pg_restore` for PostgreSQL, the online backup API for SQLite.

This package knows databases, not S3 and not Temporal: it parses database URLs
(`database.py`), starts the PostgreSQL tools with the password in their environment (never
on a command line, where `ps` would show it) and turns their failures into `DumpError`s
whose messages carry the URL and the tool's stderr with every credential masked
(`pg_dump.py`), restores a PostgreSQL dump exactly in one transaction (`pg_restore.py`, with
the SQL that empties the database first in `prelude.py`), and does the SQLite copy and the
atomic SQLite file replace (`sqlite.py`). `shipflow.activities.backup` streams these to and
from a backup store.
"""
