// Package deploy holds the tests for what ships under deploy/ and in the
// Dockerfile: the systemd unit and its copy in cloud-init user-data, the
// scripts user-data installs, the Docker README against the Dockerfile, and
// the real binary's sd_notify readiness and healthcheck command.
//
// It has no code of its own; cloud-init and systemd-analyze checks that
// need those tools installed live in ci/deploy.sh.
package deploy
