#!/usr/bin/env bash
# Checks the unit file as CI does: `systemd-analyze verify` must print nothing on stderr, and
# `systemd-analyze security --offline=true` must rate the exposure at most 2.0. The unit names the
# installed path /opt/deposit-watcher/venv/bin/deposit-watcher; verify checks that ExecStart exists, so a
# copy pointing at this checkout's venv is verified.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v systemd-analyze >/dev/null; then
  echo "systemd-analyze not found: installing Debian's systemd package" >&2
  apt-get update -qq && apt-get install -y -qq systemd >/dev/null
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed "s|/opt/deposit-watcher/venv/bin/deposit-watcher|$PWD/.venv/bin/deposit-watcher|" \
  systemd/deposit-watcher.service > "$work/deposit-watcher.service"
errors=$(cd "$work" && systemd-analyze verify --man=no ./deposit-watcher.service 2>&1 >/dev/null || true)
if [ -n "$errors" ]; then
  echo "systemd-analyze verify complained:" >&2
  echo "$errors" >&2
  exit 1
fi
report=$(cd "$work" && systemd-analyze security --offline=true --no-pager ./deposit-watcher.service 2>&1)
exposure=$(printf '%s\n' "$report" | sed -n 's/.*Overall exposure level for deposit-watcher.service: \([0-9.]*\).*/\1/p')
if [ -z "$exposure" ]; then
  echo "could not read the exposure level:" >&2
  echo "$report" >&2
  exit 1
fi
if ! awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }'; then
  echo "exposure $exposure is above 2.0:" >&2
  echo "$report" >&2
  exit 1
fi
echo "systemd unit: verify clean, exposure $exposure (limit 2.0)"
