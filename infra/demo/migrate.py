"""The demo service's database migrations: one per version, up and down.

Run: `python infra/demo/migrate.py --db PATH --to V [--fail]`

`V` is a version string such as `demo:2`, `v2` or `2`: its trailing number is the schema
version. Migrating to a lower version runs the down migrations, which is what an
`undo: {command: [...]}` of a migrate step uses. `--fail` applies nothing and exits 3,
after starting the transaction, so a flow can show a failing migration and its undo.
Each migration runs in one transaction, so a failure never leaves half a schema behind.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import sys

#: version -> (up statements, down statements)
MIGRATIONS: dict[int, tuple[list[str], list[str]]] = {
    1: (
        [
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
            "INSERT INTO items (name) VALUES ('first'), ('second')",
        ],
        ["DROP TABLE items"],
    ),
    2: (
        ["ALTER TABLE items ADD COLUMN price INTEGER NOT NULL DEFAULT 0"],
        ["ALTER TABLE items DROP COLUMN price"],
    ),
    3: (
        ["CREATE INDEX items_name ON items (name)"],
        ["DROP INDEX items_name"],
    ),
}


def schema_version(text: str) -> int:
    """`demo:2` -> 2. Versions without a number (e.g. `latest`) mean the newest schema."""
    match = re.search(r"(\d+)(?!.*\d)", text)
    if not match:
        return max(MIGRATIONS)
    return min(int(match.group(1)), max(MIGRATIONS))


def current_version(conn: sqlite3.Connection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def set_version(conn: sqlite3.Connection, version: int) -> None:
    conn.execute("DELETE FROM schema_version")
    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))


def migrate(db: str, to: str, *, fail: bool = False) -> list[str]:
    """Bring the DB at `db` to the schema of version `to`. Returns what was applied."""
    target = schema_version(to)
    applied: list[str] = []
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        now = current_version(conn)
        if fail:
            conn.execute("BEGIN")
            conn.execute("ROLLBACK")
            raise RuntimeError(f"simulated failure migrating {now} -> {target}")
        while now != target:
            step = now + 1 if target > now else now
            up, down = MIGRATIONS[step]
            conn.execute("BEGIN")
            try:
                for statement in up if target > now else down:
                    conn.execute(statement)
                now = step if target > now else step - 1
                set_version(conn, now)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            applied.append(f"{'up' if step == now else 'down'} {step}")
    finally:
        conn.close()
    return applied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="demo service migrations")
    parser.add_argument("--db", required=True)
    parser.add_argument("--to", required=True, help="version, e.g. demo:2")
    parser.add_argument("--fail", action="store_true", help="simulate a failing migration")
    args = parser.parse_args(argv)
    try:
        applied = migrate(args.db, args.to, fail=args.fail)
    except Exception as e:  # a migration tool reports and exits non-zero
        print(f"migration failed: {e}", file=sys.stderr)
        return 3
    print(f"schema at version {schema_version(args.to)}: {', '.join(applied) or 'nothing to do'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
