// Package disk holds the end-to-end tests of multiproxy on real, small
// filesystems: a 64 MiB tmpfs per test (mounted as root, skipped otherwise),
// real distribution registries from internal/testsupport as upstreams, and
// real clients that verify every digest. They check what an operator would
// notice: a blob bigger than the disk still pulls, eviction keeps the disk
// above its watermark under concurrent load, a full disk still answers, a
// deleted store is recreated, reloads and recycles do not lose fills, a
// removed upstream stops its fills, and kill -9 never leaves a torn blob.
//
// It has no code of its own.
package disk
