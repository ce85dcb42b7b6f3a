// Package skopeo is the end-to-end test of the registries.conf drop-in that
// `multiproxy containers registries-conf` writes, against Debian's skopeo
// (1.9.3 on bookworm). skopeo pulls through containers/image, the library
// CRI-O, Podman and Buildah use, and reads registries.conf(5) and its
// drop-ins as they do.
//
// Every test gives skopeo a HOME of its own, holding the generated drop-in
// in ~/.config/containers/registries.conf.d/ (read like the system
// directory's), an empty base registries.conf (--registries-conf) and a
// signature policy that accepts anything (--policy); it passes no
// credentials and no TLS flags, so the mirror is used only because the
// drop-in says so. The upstreams are testsupport's profiles on 127.0.0.1,
// plain HTTP, so their entries carry insecure = true as the generator
// writes for an http:// remote.
//
// It proves, per-port and in one-port mode (listen_all, where the mirror
// location carries the /<registry> path the one port routes by):
//   - skopeo copy to dir: gets every image byte for byte (the manifest and
//     every blob hash to their digests);
//   - the bytes came through multiproxy, not through containers/image's
//     fallback to the registry: the registry saw only multiproxy's
//     User-Agent, and the blob host (the registry, or the CDN of a
//     token-cdn upstream) served each blob once, to multiproxy;
//   - Docker Hub names (docker.io/library/x, and x alone, which
//     containers/image normalizes to it) match the docker.io entry;
//   - with the cache stopped, the same pull falls through to the registry,
//     and the same logs see skopeo there, which shows they would have caught
//     it bypassing the cache.
//
// The tests skip, saying so, only when skopeo is not installed;
// ci/install-skopeo.sh installs it.
package skopeo
