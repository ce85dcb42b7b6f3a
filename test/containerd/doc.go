// Package containerd is the end-to-end test of multiproxy's node side
// against a real containerd: Debian's package (1.6.x, the old version the
// seeds warn about), started by the test as root with private root, state
// and socket paths, so it never touches a system containerd.
//
// It proves what a node operator relies on: hosts.toml files generated from
// the multiproxy config send ctr's pulls of two upstreams through the
// cache; with the cache stopped, pulls fall through to the real registry;
// and a config.toml that containerd rejects is the one `containerd check`
// flags, while its --fix output is one containerd accepts.
//
// The tests skip, saying so, only when the containerd and ctr binaries are
// absent; ci/containerd.sh installs them.
package containerd
