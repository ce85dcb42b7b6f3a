// Package testinfra starts the servers that both the tests (through
// internal/testsupport) and the benchmark harness (bench/) stand up on
// 127.0.0.1: HTTP services that keep their address across restarts, a
// Docker token service, a blob CDN with presigned URLs, versitygw as an S3
// gateway, redis-server and Redis Sentinel.
//
// It does not import testing, so a program such as bench/cmd/benchrun can
// use it: every constructor returns an error, and every server has a Stop
// or Close for its owner to call. internal/testsupport is the thin
// testing.TB layer over it (t.Fatal on error, t.Cleanup for Close), so the
// tests and the benchmark run against the same upstreams rather than two
// copies that drift apart.
//
// Realms and CDN URLs name "localhost", not 127.0.0.1, because real
// registries send clients to other domains and clients act on that:
// net/http keeps Authorization across a redirect only within a hostname
// (whatever the port), and go-containerregistry refuses a loopback IP
// literal as a token realm unless it is the registry's own host:port.
// Every server still listens on 127.0.0.1 only.
package testinfra
