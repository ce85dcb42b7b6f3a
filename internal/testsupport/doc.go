// Package testsupport is the single place where tests get upstream
// registries, test images and network faults.
//
// Every upstream in this project's tests is a real registry: distribution
// v3's registry application served in-process on 127.0.0.1, with
// filesystem storage in a per-test temporary directory. Using the real
// thing rather than a hand-written fake means the proxy is exercised
// against the exact status codes, headers, redirects and upload protocol a
// production registry speaks, and it keeps tests from drifting apart in how
// they stand up upstreams. Nothing here ever contacts a public registry.
//
// Images are built and pushed with go-containerregistry so that their
// layers are genuine gzip-compressed tar streams with matching diff_ids;
// containerd verifies those, so synthetic byte blobs would not do.
//
// The token service, the CDN, versitygw, redis-server and Sentinel are
// internal/testinfra's, which bench/ starts too; this package is their
// testing.TB layer (t.Fatal on error, t.Cleanup to stop them, a skip when a
// binary is not installed).
//
// Faults wraps a registry's handler to script failures (delays, hangs,
// error statuses, corrupted or cut-off bodies) per test, while the registry
// behind it stays real.
//
// A typical test:
//
//	f := testsupport.NewFaults()
//	up := testsupport.StartRegistry(t, testsupport.RegistryOptions{Wrap: f.Wrap})
//	img := testsupport.PushImage(t, up, "team/app:v1", 2, 1<<20)
//	f.Add(testsupport.Rule{PathContains: "/blobs/", Times: 1, Action: testsupport.Truncate(1000)})
//	// ... point the proxy at up.URL(), pull through it, then:
//	if n := f.Count("GET", testsupport.LayerDigests(t, img)[0]); n != 2 { ... }
//
// # Upstreams like the real ones
//
// The registries users proxy are not distribution out of the box, and a
// cache that passes against the plain registry can fail its first real
// pull. Profiles rebuild their behaviour from real parts, still all on
// 127.0.0.1:
//
//   - RegistryOptions.Token: bearer tokens (distribution's token access
//     controller, verifying JWTs from a TokenIssuer on its own port, like
//     auth.docker.io);
//   - RegistryOptions.CDN: blob GETs and HEADs redirected (distribution's
//     redirect storage middleware) to a CDN on its own port that, like an
//     S3 presigned URL, wants a valid expiring signature and refuses any
//     request carrying Authorization;
//   - Front: registry.k8s.io's redirect of the whole API to another
//     registry under a path prefix.
//
// Token realms, CDN URLs and Front redirects name the other port as
// "localhost", not 127.0.0.1, because real registries send clients to
// other domains and clients act on that: net/http keeps Authorization
// across a redirect only within a hostname (whatever the port), and
// go-containerregistry refuses a loopback IP literal as a token realm
// unless it is the registry's own host:port. Every server still listens on
// 127.0.0.1 only.
//
// To run one test body against each kind of upstream:
//
//	testsupport.ForEachProfile(t, func(t *testing.T, up *testsupport.Upstream) {
//		img := up.Push(t, "library/app:1", 2, 1<<20) // under the front's prefix if any
//		p := testsupport.StartProxy(t, up.ProxyUpstream("hub"))
//		// ... pull p.Ref(t, "hub", "library/app:1"), then prove the bytes
//		// came from the upstream's blob host, and no token leaked there:
//		if up.CDN != nil && up.CDN.AuthorizationSeen() != 0 { ... }
//		up.Faults.Add(...) // faults on the API host, as with a plain registry
//	})
//
// Profiles lists what runs: "plain", "token-cdn" (docker.io, ghcr.io,
// quay.io) and "redirected-api" (registry.k8s.io before a token-cdn
// registry). A test needing credentials, TLS or another mix starts its own
// Profile with Profile.Start.
//
// # The shared services of replicas
//
// Replicas share an S3-compatible bucket and a Redis; tests get both as
// real servers on 127.0.0.1, installed by ci/install-versitygw.sh and
// ci/install-redis.sh:
//
//   - StartS3: versitygw (its posix backend) with one bucket, the keys in
//     files as a config names them, and the bucket's directory (S3.Dir) so
//     a test can hash what really landed; PendingUploads lists multipart
//     uploads never completed;
//   - StartS3Gate: a proxy in front of that gateway making the bucket
//     behave like stores versitygw is not (a clock behind, a multipart
//     object stamped with its upload's start, as AWS S3 does), with hooks
//     to hold or act around chosen S3 calls;
//   - StartRedis: Debian's redis-server with a password and no
//     persistence, which Stop and Start take down and bring back on the
//     same address;
//   - StartRedisSentinel: a master, its replica and Debian's
//     redis-sentinel watching them with timeouts of about a second, whose
//     Failover (SENTINEL FAILOVER) and KillMaster promote the replica.
//
// # Events, not the clock
//
// A test asserts on what happened, never on how long it took: a duration
// that passes or fails a test fails on a loaded machine, or passes while
// the behaviour is gone. Timeouts here only catch a hang. The helpers:
//
//   - WaitFor and WaitUntil poll for an event (a fill committed, a state
//     reported) with a bound for a hang;
//   - HoldBody makes an upstream send part of a body and hold the rest
//     until the test releases it, so "while the download runs" is a state
//     the test controls rather than a window it guesses;
//   - Scrape, Metric and Proxy.Metric read /metrics: a counter, not a
//     count of log lines, is the evidence that something happened (a log
//     line is checked only where it is what an operator reads);
//   - FreeAddr names a port for a server started later, and StartChild (with
//     RunChildIfAsked in TestMain) runs multiproxy as a process a test can
//     kill -9.
package testsupport
