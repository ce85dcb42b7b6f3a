#!/usr/bin/env bash
# Installs what test/admin's status page test drives: Debian's chromium
# package, run headless to render the admin status page and screenshot it.
# Runs as root on Debian (ci/test calls every ci/install-*.sh); does nothing
# when chromium is already installed. Without it that test skips.
set -euo pipefail

if command -v chromium >/dev/null; then
  echo "chromium: $(chromium --version 2>/dev/null || echo installed)"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium
echo "chromium: $(chromium --version 2>/dev/null || echo installed)"
