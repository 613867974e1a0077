#!/usr/bin/env bash
# Make sure the PostgreSQL the tests use (127.0.0.1:5432) is up. Starts a stopped local
# cluster; on a machine without PostgreSQL it says so and the PostgreSQL tests skip.
set -u
if ! command -v pg_isready >/dev/null 2>&1; then
  echo "ensure-postgres: PostgreSQL client tools not installed; PostgreSQL tests will skip"
  exit 0
fi
if pg_isready -q -h 127.0.0.1 -p 5432; then
  exit 0
fi
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  for version in $(ls /etc/postgresql); do
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  done
fi
for _ in $(seq 1 30); do
  pg_isready -q -h 127.0.0.1 -p 5432 && { echo "ensure-postgres: PostgreSQL is up"; exit 0; }
  sleep 1
done
echo "ensure-postgres: PostgreSQL on 127.0.0.1:5432 is not running and could not be started"
exit 0
