// Package warm holds the end-to-end tests of cache warming (POST
// /api/v1/warm): a real multiproxy started in-process in front of real
// distribution registries (testsupport), warmed through its admin API with
// the admin Client while real clients (go-containerregistry) pull the same
// images. They check what an operator would notice: a warmed image pulls
// with the upstream gone, nothing is fetched twice, a rate-limited
// upstream is left alone at the floor, and a bad request does nothing.
//
// It has no code of its own.
package warm
