#!/usr/bin/env bash
# Installs versitygw, the S3 gateway the high-availability tests put in front
# of a local directory: replicas share a bucket through distribution's own
# s3-aws storage driver, so the tests need a real S3 API on 127.0.0.1, and
# versitygw's posix backend is one static Go binary that keeps everything in
# the directory it serves (Apache-2.0). Debian does not package it, so it is built from source with
# the Go toolchain the project already needs; the version is pinned because
# the tests depend on its multipart and presigned-URL behaviour. Does
# nothing when versitygw is already installed.
set -euo pipefail

version=v1.8.0

if ! command -v versitygw >/dev/null; then
  GOBIN=/usr/local/bin go install "github.com/versity/versitygw/cmd/versitygw@${version}"
fi
# `go install` builds without the release's ldflags, so `versitygw --version`
# says only "git"; the module version is in the binary's build info.
echo "versitygw: $(go version -m "$(command -v versitygw)" | awk '$1 == "mod" { print $3 }')"
