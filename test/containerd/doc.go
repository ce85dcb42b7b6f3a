// Package containerd is the end-to-end test of multiproxy's node side
// against a real containerd: Debian's package (1.6.x, the old version the
// seeds warn about), started by the test as root with private root, state
// and socket paths, so it never touches a system containerd.
//
// It proves what a node operator relies on, for each kind of upstream in
// testsupport.Profiles (plain distribution; bearer tokens with blobs on a
// signed-URL CDN, like docker.io; an API front redirecting to such a
// registry, like registry.k8s.io):
//   - hosts.toml files generated from the multiproxy config send pulls of
//     images and multi-arch indexes through the cache, both from ctr and
//     from the CRI plugin the kubelet uses (driven over its gRPC API);
//   - the bytes really came through the cache, not through containerd's
//     silent fallback to the registry: the registry and the CDN saw only
//     multiproxy's User-Agent, each blob once, and the CDN never an
//     Authorization header;
//   - with the cache stopped, pulls fall through to the real registry;
//   - images warmed through the admin API pull with the whole upstream
//     stopped, so the warm alone filled the cache;
//   - a config.toml that containerd rejects is the one `containerd check`
//     flags, while its --fix output is one containerd accepts.
//
// The tests skip, saying so, only when the containerd and ctr binaries are
// absent; ci/install-containerd.sh installs them.
package containerd
