"""Backup benchmark: the backup activity against plain `pg_dump`, and the restore against `pg_restore`.

On a pgbench database (`pgbench -i -s SCALE`; scale 70 is about 1 GB), in one run:

- `pg_dump --format=custom > /dev/null`: the floor for any backup;
- the backup activity (pg_dump streamed into an S3 multipart upload on the embedded moto
  endpoint), in a subprocess so its peak RSS (`ru_maxrss`) is its own;
- `pg_restore --clean --if-exists --single-transaction --no-owner` from a local file;
- the restore activity (download, verify size and sha256, the same pg_restore).

Targets: backup/pg_dump <= 1.25, backup peak RSS <= 150 MB.

Run: `.venv/bin/python bench/backup_bench.py [--scale 70]`, or `main(scale=...)`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PG_ADMIN_URL = os.environ.get("SHIPFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TARGET_RATIO = 1.25
TARGET_RSS_MB = 150.0


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def _db_url(name: str) -> str:
    return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"


def _pgbench_conn(url: str) -> list[str]:
    # pgbench takes host/port/user options and a bare database name, not a URL.
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432),
            "-U", parts.username or "postgres", parts.path.lstrip("/")]


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed(cmd: list[str], **kwargs: Any) -> float:
    started = time.monotonic()
    subprocess.run(cmd, check=True, **kwargs)
    return time.monotonic() - started


def _child(mode: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run one activity (in this fresh process) and report its result and peak RSS."""
    import resource

    from pydantic import BaseModel
    from temporalio.testing import ActivityEnvironment

    from shipflow.activities.backup.activity import BackupActivities
    from shipflow.activities.core.settings import Settings
    from shipflow.activities.s3 import S3Factory
    from shipflow.workflows.io.backup import BackupInput, RestoreInput
    from shipflow.workflows.io.common import StepContext

    settings = Settings(s3_endpoint=spec["endpoint"])
    factory = S3Factory(settings)
    factory(None)  # the worker builds its clients once, before any activity runs
    backups = BackupActivities(factory, settings)
    ctx = StepContext(run_id=spec["run_id"], flow="bench", stage="bench", step_id="db")
    env = ActivityEnvironment()
    beats: list[Any] = []
    env.on_heartbeat = lambda *d: beats.append(d[0])
    started = time.monotonic()
    out: BaseModel
    if mode == "backup":
        out = env.run(backups.create, BackupInput(context=ctx, database=spec["db"], to=spec["to"]))
    else:
        out = env.run(
            backups.restore,
            RestoreInput(
                context=ctx, database=spec["db"], url=spec["url"], size=spec["size"], sha256=spec["sha256"]
            ),
        )
    wall = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall_s": wall,
        "rss_mb": usage.ru_maxrss / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "heartbeats": len(beats),
        **out.model_dump(),
    }


def _run_child(mode: str, spec: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode],
        input=json.dumps(spec),  # on stdin, not argv: a database URL may carry a password
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} child failed: {proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = time.monotonic() - started
    return result


def main(scale: int = 70, *, payload_mb: int = 256, rounds: int = 2, keep_db: bool = False) -> dict[str, Any]:
    """Run the benchmark at pgbench `scale` and print a markdown report.

    pgbench's rows are mostly blank filler that compresses ~50x, so the dump alone
    barely exercises the upload; `payload_mb` adds a table of incompressible bytes of
    that size, which is what makes S3 traffic and buffer sizes matter. pg_dump and the
    backup run alternately `rounds` times and the best of each counts (the first run
    warms the page cache).

    Returns:
        Timings (seconds), sizes (bytes), RSS (MB) and whether the targets were met.
    """
    from shipflow.activities.s3 import ensure_bucket, make_s3_client, start_local_s3

    for name, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}.items():
        os.environ.setdefault(name, value)
    tag = uuid.uuid4().hex[:8]
    source, target = f"sf_bench_{tag}", f"sf_bench_{tag}_restore"
    src_url, dst_url = _db_url(source), _db_url(target)
    work = Path(tempfile.mkdtemp(prefix="shipflow-bench-"))
    s3_proc = None
    results: dict[str, Any] = {"scale": scale}
    try:
        _admin(f'CREATE DATABASE "{source}"')
        results["pgbench_init_s"] = _timed(
            ["pgbench", "-i", "-q", "-s", str(scale), *_pgbench_conn(src_url)], capture_output=True
        )
        import psycopg

        started = time.monotonic()
        with psycopg.connect(src_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE bench_payload (id int PRIMARY KEY, data bytea NOT NULL)")
            conn.execute(
                "INSERT INTO bench_payload SELECT g, (SELECT decode(string_agg(md5(g || ':' || i), ''), 'hex')"
                " FROM generate_series(1, 64) i) FROM generate_series(1, %s) g",
                (payload_mb * 1024,),
            )
        results["payload_init_s"] = time.monotonic() - started
        with psycopg.connect(src_url) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            results["db_bytes"] = int(row[0]) if row else 0

        from tests.helpers import free_port

        s3_proc, endpoint = start_local_s3(free_port(), work / "moto")
        ensure_bucket(make_s3_client(endpoint), "bench")

        spec = {"endpoint": endpoint, "run_id": f"bench-{tag}", "db": src_url, "to": "s3://bench/b/"}
        dumps: list[float] = []
        backups: list[dict[str, Any]] = []
        for _ in range(rounds):
            with open(os.devnull, "wb") as devnull:
                dumps.append(
                    _timed(["pg_dump", "--format=custom", f"--dbname={src_url}"], stdout=devnull)
                )
            s3_cpu = _proc_cpu_s(s3_proc.pid)
            backups.append(_run_child("backup", {**spec, "run_id": f"bench-{tag}-{len(backups)}"}))
            backups[-1]["s3_cpu_s"] = _proc_cpu_s(s3_proc.pid) - s3_cpu
        backup = min(backups, key=lambda b: b["wall_s"])
        results["pg_dump_rounds_s"] = [round(d, 2) for d in dumps]
        results["backup_rounds_s"] = [round(b["wall_s"], 2) for b in backups]
        results["pg_dump_s"] = min(dumps)
        results["backup_s"] = backup["wall_s"]
        results["backup_rss_mb"] = max(b["rss_mb"] for b in backups)
        results["backup_cpu_s"] = backup["cpu_s"]
        results["s3_server_cpu_s"] = backup["s3_cpu_s"]
        results["dump_bytes"] = backup["size"]
        results["backup_ratio"] = backup["wall_s"] / results["pg_dump_s"]

        dump_file = work / "local.pgdump"
        with open(dump_file, "wb") as out:
            subprocess.run(["pg_dump", "--format=custom", f"--dbname={src_url}"], stdout=out, check=True)
        _admin(f'CREATE DATABASE "{target}"')
        results["pg_restore_s"] = _timed(
            ["pg_restore", "--clean", "--if-exists", "--single-transaction", "--no-owner",
             f"--dbname={dst_url}", str(dump_file)],
            capture_output=True,
        )
        dump_file.unlink()
        _admin(f'DROP DATABASE "{target}" WITH (FORCE)')
        _admin(f'CREATE DATABASE "{target}"')
        restore = _run_child(
            "restore",
            {**spec, "db": dst_url, "url": backup["url"], "size": backup["size"], "sha256": backup["sha256"]},
        )
        results["restore_s"] = restore["wall_s"]
        results["restore_rss_mb"] = restore["rss_mb"]
        results["restore_ratio"] = restore["wall_s"] / results["pg_restore_s"]
        counts = []
        for url in (src_url, dst_url):
            with psycopg.connect(url) as conn:
                row = conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone()
                counts.append(int(row[0]) if row else -1)
        if counts[0] != counts[1] or counts[0] != scale * 100_000:
            raise RuntimeError(f"restore incomplete: pgbench_accounts rows {counts}")
    finally:
        if s3_proc is not None:
            s3_proc.terminate()
            s3_proc.wait(timeout=30)
        if not keep_db:
            for name in (source, target):
                _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        subprocess.run(["rm", "-rf", str(work)], check=False)

    results["ok"] = (
        results["backup_ratio"] <= TARGET_RATIO and results["backup_rss_mb"] <= TARGET_RSS_MB
    )
    mb = 1024 * 1024
    print(f"## Backup benchmark (pgbench scale {scale} + {payload_mb} MiB random, database {results['db_bytes'] / mb:,.0f} MiB, "
          f"dump {results['dump_bytes'] / mb:,.1f} MiB)\n")
    print("| measure | value | target |")
    print("|---|---|---|")
    print(f"| pgbench -i | {results['pgbench_init_s']:.1f} s | |")
    print(f"| random payload insert | {results['payload_init_s']:.1f} s | |")
    print(f"| pg_dump -Fc > /dev/null | {results['pg_dump_s']:.1f} s | |")
    print(f"| backup activity (pg_dump -> S3 multipart) | {results['backup_s']:.1f} s | |")
    print(f"| rounds: pg_dump / backup | {results['pg_dump_rounds_s']} / {results['backup_rounds_s']} s | |")
    print(f"| backup / pg_dump | {results['backup_ratio']:.2f} | <= {TARGET_RATIO} |")
    print(f"| backup activity's own CPU (user+sys) | {results['backup_cpu_s']:.1f} s | |")
    print(f"| moto S3 server's CPU during the backup | {results['s3_server_cpu_s']:.1f} s | |")
    print(f"| backup peak RSS | {results['backup_rss_mb']:.0f} MB | <= {TARGET_RSS_MB:.0f} MB |")
    print(f"| pg_restore from local file | {results['pg_restore_s']:.1f} s | |")
    print(f"| restore activity (download, verify, pg_restore) | {results['restore_s']:.1f} s | |")
    print(f"| restore / pg_restore | {results['restore_ratio']:.2f} | |")
    print(f"| restore peak RSS | {results['restore_rss_mb']:.0f} MB | |")
    print(f"\ntargets met: {'yes' if results['ok'] else 'NO'}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=70)
    parser.add_argument("--payload-mb", type=int, default=256)
    parser.add_argument("--child", metavar="MODE", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.child:
        print(json.dumps(_child(parsed.child, json.loads(sys.stdin.read()))))
    else:
        outcome = main(scale=parsed.scale, payload_mb=parsed.payload_mb)
        sys.exit(0 if outcome["ok"] else 1)
