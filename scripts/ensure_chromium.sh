#!/usr/bin/env bash
# Make sure headless Chromium is installed (the HTML report test renders with it).
# Idempotent: does nothing when /usr/bin/chromium exists; otherwise installs the Debian
# package `chromium` with apt-get (needs root; sudo is used when available).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "ensure_chromium: /usr/bin/chromium missing and not root (no sudo); the report render test will be skipped" >&2
    exit 0
  fi
fi
echo "ensure_chromium: installing the Debian package chromium" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get update -q && $SUDO apt-get install -y -q --no-install-recommends chromium; }; then
  echo "ensure_chromium: apt-get could not install chromium; the report render test will be skipped" >&2
fi
exit 0
