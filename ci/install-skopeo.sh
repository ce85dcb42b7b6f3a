#!/usr/bin/env bash
# Installs what test/skopeo needs: Debian's skopeo package (1.9.3 on
# bookworm), which pulls through containers/image, the library CRI-O, Podman
# and Buildah use, and reads registries.conf(5) as they do. The test gives it
# its own registries.conf, policy and HOME, so nothing under /etc/containers
# is changed here. Runs as root on Debian; does nothing when skopeo is
# already installed.
set -euo pipefail

if command -v skopeo >/dev/null; then
  echo "skopeo: $(skopeo --version)"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends skopeo
echo "skopeo: $(skopeo --version)"
