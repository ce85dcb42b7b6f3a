# Sourced by ci/install-*.sh: apt_install_dormant PACKAGE SERVICE installs a
# Debian package whose service the tests never use (they start their own
# server on a free 127.0.0.1 port, or want only a tool the package holds),
# without starting that service or leaving it enabled for the next boot.

apt_install_dormant() {
  local pkg=$1 service=$2
  export DEBIAN_FRONTEND=noninteractive
  # invoke-rc.d and deb-systemd-invoke ask policy-rc.d before starting a
  # service; exit 101 means "do not". Only a policy put here is removed.
  local policy=/usr/sbin/policy-rc.d added=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    added=1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
  if [ -n "$added" ]; then rm -f "$policy"; fi
  if [ -d /run/systemd/system ]; then
    systemctl disable --now "$service.service" >/dev/null 2>&1 || true
  else
    # Without systemd the package enables its init script for the next boot.
    service "$service" stop >/dev/null 2>&1 || true
    update-rc.d "$service" disable >/dev/null 2>&1 || true
  fi
}
