// Package containerd writes and checks the node side of multiproxy: the
// hosts.toml files that send containerd's pulls through the cache, and the
// registry part of containerd's own config.toml.
//
// Everything here derives from the same config.Config the server reads, so
// a node's mirror ports cannot drift from the ports multiproxy listens on.
//
// What containerd accepts differs by version, and the differences decide
// what we generate:
//
//   - hosts.toml keys: containerd 1.6 and 1.7 know server, capabilities, ca,
//     client, skip_verify, header and override_path. dial_timeout arrived in
//     2.1 (containerd PR #11106, backported to 2.0.x). Older versions decode
//     hosts.toml without strict mode, so an unknown key is silently ignored,
//     not an error: writing dial_timeout for 1.6 would be harmless but would
//     promise a fast fallback that does not happen, so it is left out there.
//   - A hosts.toml that fails to decode is not an error at startup either:
//     containerd logs "failed to decode hosts.toml" and falls back to the
//     certificate files in that directory, so the mirror silently vanishes.
//     Check reports such files.
//   - config.toml: containerd 1.6/1.7 read version 1 and 2 configs, with the
//     CRI registry under plugins.cri (v1) or plugins."io.containerd.grpc.v1.cri"
//     (v2). containerd 2.x reads version 2 and 3; in version 3 the registry
//     moved to plugins."io.containerd.cri.v1.images". Debian's 1.6.20 starts
//     with a version 3 file but ignores that table, so config_path is empty.
//   - With any registry.mirrors entry and a config_path, containerd refuses
//     to load its CRI plugin (kubelet breaks, ctr keeps working); the same
//     holds for registry.configs.<host>.tls.
package containerd
