#!/bin/sh
# The standard tools the tests use to prove a bundle opens without walkit (tar, zstd, age), and the
# browser the notebook test drives through Playwright (Debian's chromium; never `playwright install`).
# Installs the missing ones with apt-get when it can (CI starts bare); otherwise says what to install.
set -eu
missing=""
for tool in tar zstd age chromium; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
[ -z "$missing" ] && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing$missing (apt-get)" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    exit 0
fi
echo "the tests need$missing: install them (Debian/Ubuntu: sudo apt-get install$missing; macOS: brew install$missing)" >&2
exit 1
