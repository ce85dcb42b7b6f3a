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
export DEBIAN_FRONTEND=noninteractive

# invoke-rc.d and deb-systemd-invoke ask policy-rc.d before starting a
# service; exit 101 means "do not". Only a policy this script put there is
# removed again.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi

apt-get update -qq
apt-get install -y -qq --no-install-recommends redis-server >/dev/null

if [ -d /run/systemd/system ]; then
  systemctl disable --now redis-server.service >/dev/null 2>&1 || true
else
  # Without systemd the package enables its init script for the next boot.
  service redis-server stop >/dev/null 2>&1 || true
  update-rc.d redis-server disable >/dev/null 2>&1 || true
fi
echo "redis-server: $(redis-server --version)"
