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
package testsupport
