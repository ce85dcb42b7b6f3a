package testsupport

import "github.com/multiproxy/multiproxy/internal/testinfra"

// CDN is the blob host of a Registry started with CDN: the registry
// answers blob GETs and HEADs with 307 to it, with signed, expiring URLs
// it refuses to serve to a request carrying Authorization; see
// testinfra.CDN.
type CDN = testinfra.CDN

// CDNRequest is one request the CDN received.
type CDNRequest = testinfra.CDNRequest
