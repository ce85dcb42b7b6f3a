#!/usr/bin/env bash
# Installs Debian's redis-server package (7.0 on bookworm), the coordination
# store the high-availability tests run. Each test starts its own
# redis-server on a free 127.0.0.1 port with no persistence, so the system
# service the package brings is neither started nor left enabled: it would
# hold 6379 and keep a dump file nobody reads. Runs as root on Debian; does
# nothing when redis-server is already installed.
set -euo pipefail

if command -v redis-server >/dev/null; then
  echo "redis-server: $(redis-server --version)"
  exit 0
fi
. "$(dirname "$0")/lib/apt-dormant.sh"
apt_install_dormant redis-server redis-server
echo "redis-server: $(redis-server --version)"
