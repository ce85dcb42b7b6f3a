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
apt-get install -y -qq --no-install-recommends prometheus >/dev/null

if [ -d /run/systemd/system ]; then
  systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
echo "promtool: $(promtool --version 2>&1 | head -n1)"
