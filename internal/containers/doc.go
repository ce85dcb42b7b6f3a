// Package containers writes the node side of multiproxy for the container
// engines that do not read containerd's hosts.toml:
//
//   - a containers-registries.conf(5) v2 drop-in for
//     /etc/containers/registries.conf.d/, which CRI-O, Podman, Buildah and
//     skopeo read through containers/image;
//   - the registry keys of Docker's daemon.json (registry-mirrors and
//     insecure-registries), for dockerd's classic image store.
//
// (dockerd with the containerd image store reads hosts.toml files from
// /etc/docker/certs.d, which internal/containerd writes.)
//
// Everything derives from the same config.Config the server reads, as
// internal/containerd does, so a node's mirror ports cannot drift from the
// ports multiproxy listens on.
//
// What containers/image does with registries.conf, and so what is written:
//
//   - Every reference is normalized before it is matched: a Docker Hub
//     image is always docker.io/library/x or docker.io/org/x (index.docker.io
//     becomes docker.io), so Docker Hub is one [[registry]] with prefix
//     "docker.io". Its location "docker.io" is dialed as registry-1.docker.io
//     and keeps credentials looked up under docker.io.
//   - The mirrors of a [[registry]] are tried in order, then its location:
//     location is the registry the upstream's remote names, as containerd's
//     hosts.toml keeps it as server, so a node pulls from where multiproxy
//     itself would when the cache is unreachable. A remote of plain http://
//     makes that location insecure = true.
//   - A mirror's location may carry a path: the reference is rewritten to
//     location + the rest of the name, so "10.0.20.10:5000/ghcr.io" sends
//     ghcr.io/org/app to /v2/ghcr.io/org/app/..., the path prefix by which
//     the one-port listener (listen_all) routes clients that send no ?ns=
//     (containers/image sends none). The segment must be a valid reference
//     path component, so a registry name with a port needs an alias without
//     one in one-port mode.
//   - insecure = true lets containers/image fall back to plain HTTP (after an
//     attempt with https) and skip certificate checks. It is written for a
//     cache serving plain HTTP only. registries.conf has no CA setting: a
//     cache serving TLS under a private CA needs the CA in
//     /etc/containers/certs.d/HOST:PORT/ca.crt.
//   - A drop-in's [[registry]] replaces any entry with the same prefix from
//     registries.conf and from drop-ins sorting before it; drop-ins sorting
//     after it win over it.
package containers
