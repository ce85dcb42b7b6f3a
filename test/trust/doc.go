// Package trust holds the end-to-end tests of what multiproxy refuses from
// the hops it talks to: a real multiproxy started in-process in front of
// real registries (testsupport) that redirect to addresses no cache should
// dial, downgrade https to http, send unbounded challenges or drip their
// answers. Every server listens on loopback; the "metadata" server stands
// for 169.254.169.254 on 127.0.0.2, which Linux routes to lo.
//
// It has no code of its own.
package trust
