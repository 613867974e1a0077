#!/usr/bin/env bash
# Make sure the headless Chromium the console's browser tests drive is installed (Debian's
# `chromium`). Installs it with apt-get when missing and we are root; otherwise it says so
# and the browser tests skip (they look for the binary themselves).
set -u
for name in chromium chromium-browser; do
  if command -v "$name" >/dev/null 2>&1; then
    exit 0
  fi
done
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-chromium: chromium not installed (needs root and apt-get); browser tests will skip"
  exit 0
fi
echo "ensure-chromium: installing Debian's chromium for the console's browser tests"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1; then
  apt-get update -q >/dev/null 2>&1 || true
  apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1 \
    || echo "ensure-chromium: apt-get could not install chromium; browser tests will skip"
fi
command -v chromium >/dev/null 2>&1 && echo "ensure-chromium: chromium is installed"
exit 0
