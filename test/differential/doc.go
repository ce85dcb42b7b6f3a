// Package differential proves the cache invisible: a client asking
// multiproxy gets the answer it would have got from the upstream.
//
// TestDifferential pushes the OCI conformance suite's kinds of content
// (testsupport.PushCorpus) to a real distribution registry of each test
// profile, then asks the registry and the cache in front of it the same
// raw HTTP questions (manifests by tag and digest under several Accept
// headers, blobs whole and in ranges, tag lists, referrers, unknown names,
// tags and digests), first cold and then warm, and compares what a client
// reads: status, Content-Type, Docker-Content-Digest, Content-Length,
// Content-Range, and the body's digest or OCI error code. Every difference
// the cache may make is listed, with its reason, in one table in the test;
// any other fails it, and so does an entry no profile needed. The warm pass
// must also be the store's: it may send the upstream no request for a blob
// or a manifest by digest, and for a manifest by tag a HEAD at most.
//
// TestConformance runs the OCI distribution-spec conformance suite, read
// only, against multiproxy and against its upstream, and requires every
// test of the multiproxy run to pass, with the counts pinned (none
// skipped). It writes the two summaries side by side to the file
// $TEST_CONFORMANCE_SUMMARY names, which ci/test prints after the run. It
// needs the suite's binary (ci/install-oci-conformance.sh); elsewhere it
// skips, saying so, except under CI=true (.ci/run), where a missing binary
// fails it.
package differential
