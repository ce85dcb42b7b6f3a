#!/usr/bin/env bash
# Installs Debian's redis-server and redis-sentinel packages (7.0 on
# bookworm): the coordination store the high-availability tests run, and
# the Sentinel that fails it over. Each test starts its own servers and
# Sentinel on free 127.0.0.1 ports with no persistence, so the system
# services the packages bring are neither started nor left enabled: they
# would hold 6379 and 26379 and keep files nobody reads. Runs as root on
# Debian; does nothing for a package already installed.
set -euo pipefail

. "$(dirname "$0")/lib/apt-dormant.sh"
if ! command -v redis-server >/dev/null; then
  apt_install_dormant redis-server redis-server
fi
if ! command -v redis-sentinel >/dev/null; then
  apt_install_dormant redis-sentinel redis-sentinel
fi
echo "redis-server: $(redis-server --version)"
echo "redis-sentinel: $(redis-sentinel --version)"
