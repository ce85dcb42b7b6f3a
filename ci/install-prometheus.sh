#!/usr/bin/env bash
# Installs promtool, which test/admin runs on deploy/prometheus/ (`promtool
# check rules` and `promtool test rules`). Debian ships it in the prometheus
# package (2.42 on bookworm); only the tool is wanted, so the server the
# package brings is neither started nor left enabled: it would listen on
# :9090, multiproxy's default admin port. Runs as root on Debian; does
# nothing when promtool is already installed.
set -euo pipefail

if command -v promtool >/dev/null; then
  echo "promtool: $(promtool --version 2>&1 | head -n1)"
  exit 0
fi
. "$(dirname "$0")/lib/apt-dormant.sh"
apt_install_dormant prometheus prometheus
echo "promtool: $(promtool --version 2>&1 | head -n1)"
