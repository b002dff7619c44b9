#!/usr/bin/env bash
# System packages the tests need beyond Python and Node.js: the PHP and Go runtimes that run the
# signature-verification examples of docs/callbacks.md (tests/test_callback_docs.py), and Debian's
# Chromium, the headless browser the checkout page's tests drive (tests/browser.py; over the DevTools
# protocol, so chromedriver is not needed); and PostgreSQL, the store of several daemons, which the
# tests start as their own server in a temp directory (devnet/postgres.py).
#
# Idempotent: installs only what is missing (Debian/Ubuntu, apt-get), and `apt-get update` runs at most
# once, only when something is missing. Without root it prints the packages to install and exits 0, so
# a developer without root can still run everything else (the tests that need a missing runtime are
# skipped locally and fail in CI).
#
# Add a package by adding one "package:command" entry: the command is how we tell it is present.
set -euo pipefail

PACKAGES=(
    "php-cli:php"
    "golang-go:go"
    "chromium:chromium"
    "postgresql:/usr/lib/postgresql/*/bin/initdb"
)

missing=()
for entry in "${PACKAGES[@]}"; do
    package="${entry%%:*}"
    command_name="${entry#*:}"
    # A command, or a path pattern for programs Debian keeps off PATH (PostgreSQL's initdb).
    if [[ "$command_name" == /* ]]; then
        if compgen -G "$command_name" >/dev/null; then continue; fi
    elif command -v "$command_name" >/dev/null 2>&1; then
        continue
    fi
    missing+=("$package")
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-system-packages: not root; please install: sudo apt-get install ${missing[*]}" >&2
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-packages: no apt-get here; please install the equivalents of: ${missing[*]}" >&2
    exit 0
fi

echo "install-system-packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# A fresh container has no package lists: install fails with "Unable to locate package" without them.
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
