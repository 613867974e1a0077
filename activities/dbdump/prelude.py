"""The SQL prelude of an exact PostgreSQL restore: drop what the database has now first.

The prelude runs inside the restore's transaction, right after pg_restore's BEGIN, so the
dump recreates the database as it was at backup time instead of merging into what a later
migration left. Apart from `pg_restore.py` because it is mostly one long SQL text, with the
two helpers that fill in which extensions to keep.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from shipflow.activities.dbdump.database import DatabaseUrl, DumpError
from shipflow.activities.dbdump.pg_dump import _tool, _tool_error

# The prelude runs inside the restore's transaction, right after pg_restore's BEGIN: it
# drops every user object the database has now, so the dump recreates the database exactly
# as it was at backup time instead of merging into what a later migration left behind.
# Candidates are the objects pg_dump dumps: every non-system schema but `public` (with
# everything in it), then whatever is left in `public` (and in schemas an extension owns),
# and the database-wide event triggers, publications, casts, foreign-data wrappers, servers,
# languages, access methods and extensions created since the backup. Skipped: objects of
# initdb (oid below 16384, FirstNormalObjectId), members of an extension (pg_depend 'e': they
# come and go with it), parts of another object (pg_depend 'i' on something else: array and
# row types, identity sequences, which go with their owner), and partitions (they go with
# their parent). An object an earlier CASCADE already took is skipped when its turn comes
# (pg_identify_object then finds nothing). `public` itself stays: dropping and recreating it
# would change its owner and privileges.
_PRELUDE = """
-- shipflow: empty the database first, so the dump below recreates it exactly.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
SELECT pg_catalog.set_config('client_min_messages', 'warning', true);
DO $shipflow_prelude$
DECLARE
    keep_extensions text[] := __KEEP_EXTENSIONS__;
    target record;
    found record;
BEGIN
    FOR target IN
        WITH user_ns AS (
            SELECT oid, nspname FROM pg_catalog.pg_namespace
            WHERE nspname <> 'information_schema' AND nspname !~ '^pg_'
        ), candidates(rank, classid, objid) AS (
            SELECT 1, 'pg_catalog.pg_event_trigger'::regclass, oid FROM pg_catalog.pg_event_trigger
            UNION ALL
            SELECT 2, 'pg_catalog.pg_publication'::regclass, oid FROM pg_catalog.pg_publication
            UNION ALL
            SELECT 3, 'pg_catalog.pg_namespace'::regclass, oid FROM user_ns
            WHERE nspname <> 'public'
            UNION ALL
            SELECT 4, 'pg_catalog.pg_extension'::regclass, oid FROM pg_catalog.pg_extension
            WHERE extname <> 'plpgsql' AND extname <> ALL (keep_extensions)
            UNION ALL
            SELECT 5, 'pg_catalog.pg_class'::regclass, oid FROM pg_catalog.pg_class
            WHERE relnamespace IN (SELECT oid FROM user_ns)
              AND relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND NOT relispartition
            UNION ALL
            SELECT 6, 'pg_catalog.pg_type'::regclass, oid FROM pg_catalog.pg_type
            WHERE typnamespace IN (SELECT oid FROM user_ns)
            UNION ALL
            SELECT 7, 'pg_catalog.pg_proc'::regclass, oid FROM pg_catalog.pg_proc
            WHERE pronamespace IN (SELECT oid FROM user_ns)
            UNION ALL
            SELECT 8, 'pg_catalog.pg_operator'::regclass, oid FROM pg_catalog.pg_operator
            WHERE oprnamespace IN (SELECT oid FROM user_ns)
            UNION ALL
            SELECT 8, 'pg_catalog.pg_opfamily'::regclass, oid FROM pg_catalog.pg_opfamily
            WHERE opfnamespace IN (SELECT oid FROM user_ns)
            UNION ALL
            SELECT 8, 'pg_catalog.pg_opclass'::regclass, oid FROM pg_catalog.pg_opclass
            WHERE opcnamespace IN (SELECT oid FROM user_ns)
            UNION ALL
            SELECT 8, 'pg_catalog.pg_collation'::regclass, oid FROM pg_catalog.pg_collation
            WHERE collnamespace IN (SELECT oid FROM user_ns)
            UNION ALL
            SELECT 8, 'pg_catalog.pg_conversion'::regclass, oid FROM pg_catalog.pg_conversion
            WHERE connamespace IN (SELECT oid FROM user_ns)
            UNION ALL
            SELECT 8, 'pg_catalog.pg_ts_config'::regclass, oid FROM pg_catalog.pg_ts_config
            WHERE cfgnamespace IN (SELECT oid FROM user_ns)
            UNION ALL
            SELECT 8, 'pg_catalog.pg_ts_dict'::regclass, oid FROM pg_catalog.pg_ts_dict
            WHERE dictnamespace IN (SELECT oid FROM user_ns)
            UNION ALL
            SELECT 8, 'pg_catalog.pg_ts_parser'::regclass, oid FROM pg_catalog.pg_ts_parser
            WHERE prsnamespace IN (SELECT oid FROM user_ns)
            UNION ALL
            SELECT 8, 'pg_catalog.pg_ts_template'::regclass, oid FROM pg_catalog.pg_ts_template
            WHERE tmplnamespace IN (SELECT oid FROM user_ns)
            UNION ALL
            SELECT 9, 'pg_catalog.pg_cast'::regclass, oid FROM pg_catalog.pg_cast
            UNION ALL
            SELECT 10, 'pg_catalog.pg_foreign_server'::regclass, oid
            FROM pg_catalog.pg_foreign_server
            UNION ALL
            SELECT 11, 'pg_catalog.pg_foreign_data_wrapper'::regclass, oid
            FROM pg_catalog.pg_foreign_data_wrapper
            UNION ALL
            SELECT 12, 'pg_catalog.pg_language'::regclass, oid FROM pg_catalog.pg_language
            UNION ALL
            SELECT 12, 'pg_catalog.pg_am'::regclass, oid FROM pg_catalog.pg_am
        )
        SELECT c.classid, c.objid FROM candidates c
        WHERE c.objid >= 16384
          AND NOT EXISTS (
              SELECT 1 FROM pg_catalog.pg_depend d
              WHERE d.classid = c.classid AND d.objid = c.objid
                AND (d.deptype = 'e'
                     OR (d.deptype = 'i'
                         AND (d.refclassid, d.refobjid) <> (d.classid, d.objid))))
        ORDER BY c.rank, c.objid
    LOOP
        SELECT * INTO found FROM pg_catalog.pg_identify_object(target.classid, target.objid, 0);
        CONTINUE WHEN found.identity IS NULL;
        EXECUTE pg_catalog.format('DROP %s %s CASCADE',
                                  pg_catalog.upper(pg_catalog.replace(found.type, '-', ' ')),
                                  found.identity);
    END LOOP;
    PERFORM pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata;
END
$shipflow_prelude$;

"""


_EXTENSION_ENTRY = re.compile(r"^\s*\d+;\s+3079\s+\d+\s+EXTENSION\s+-\s+(.+?)\s*$")


def dump_extensions(db: DatabaseUrl, dump_file: Path) -> list[str]:
    """The extensions a custom-format dump creates, from its table of contents.

    `pg_restore --list` reads only the archive's header and TOC, so it is also the check
    that the file is a dump pg_restore can read before anything touches the database.

    Raises:
        DumpError: (non-retryable) not a readable archive.
    """
    out = subprocess.run(
        [_tool("pg_restore"), "--list", str(dump_file)],
        capture_output=True,
        env=db.tool_env(),
        check=False,
    )
    if out.returncode != 0:
        raise _tool_error(
            "pg_restore",
            db,
            out.returncode,
            out.stderr.decode(errors="replace") + "; the database was not touched",
            default_retryable=False,
        )
    names = []
    for line in out.stdout.decode(errors="replace").splitlines():
        match = _EXTENSION_ENTRY.match(line)
        if match:
            names.append(match.group(1))
    return names


def restore_prelude(keep_extensions: list[str]) -> bytes:
    """The SQL that empties the database inside the restore's transaction (see `_PRELUDE`).

    Args:
        keep_extensions: extensions the dump creates (`CREATE EXTENSION IF NOT EXISTS`),
            left in place; every other extension but plpgsql was created after the backup
            and is dropped.
    """
    for name in keep_extensions:
        if "$" in name or "\0" in name:
            raise DumpError(f"unexpected extension name in the dump: {name!r}", retryable=False)
    # E'' literals mean the same whatever standard_conforming_strings says.
    literals = [
        "E'" + name.replace("\\", "\\\\").replace("'", "''") + "'" for name in keep_extensions
    ]
    array = f"ARRAY[{', '.join(literals)}]::text[]"
    return _PRELUDE.replace("__KEEP_EXTENSIONS__", array).encode()
