#!/usr/bin/env bash
# Installs what test/containerd needs: Debian's containerd package (1.6.x on
# bookworm, the old version the seeds warn about), which brings the
# containerd daemon and ctr; runc comes along as a dependency. The test
# starts its own containerd with private paths, so no service is enabled or
# started here. Runs as root on Debian; does nothing when both binaries are
# already installed.
set -euo pipefail

if command -v containerd >/dev/null && command -v ctr >/dev/null; then
  echo "containerd: $(containerd --version)"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends containerd
# The package's postinst may start the system daemon where systemd runs; the
# test never talks to it (it uses its own socket), so it is left alone.
echo "containerd: $(containerd --version)"
