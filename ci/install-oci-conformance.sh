#!/usr/bin/env bash
# Installs the OCI distribution-spec conformance suite that
# test/differential's TestConformance runs, read only, against multiproxy
# and its upstream. It is a Go program, not a Debian package, so it is built
# with the Go toolchain the project already needs; the version is pinned
# because the test reads its printed summary. `go install` names the binary
# after its directory, "conformance", too generic for /usr/local/bin, so it
# is installed as oci-conformance. Runs as root (ci/test calls every
# ci/install-*.sh); does nothing when that version is already installed.
set -euo pipefail

module=github.com/opencontainers/distribution-spec/conformance
version=v0.0.0-20260831232431-97274622c111

installed() {
  command -v oci-conformance >/dev/null &&
    go version -m "$(command -v oci-conformance)" | awk -v m="$module" '$1 == "mod" && $2 == m { print $3 }'
}

if [ "$(installed || true)" != "$version" ]; then
  gobin=$(mktemp -d)
  trap 'rm -rf "$gobin"' EXIT
  GOBIN="$gobin" go install "${module}@${version}"
  install -m 0755 "$gobin/conformance" /usr/local/bin/oci-conformance
fi
echo "oci-conformance: $(installed)"
