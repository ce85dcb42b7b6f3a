package testsupport

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// VerifyImage downloads every part of img (typically from remote.Image)
// and checks it independently of go-containerregistry's own verification:
// manifest and config digests, each layer's digest and size against the
// manifest, that each layer is a gzip-compressed tar, and that its
// uncompressed digest equals the config's diff_id, as containerd checks
// on unpack.
func VerifyImage(t testing.TB, img v1.Image) {
	t.Helper()
	if err := checkImage(img); err != nil {
		t.Fatalf("testsupport: verify image: %v", err)
	}
}

// VerifyIndex checks the index's own digest and verifies every child image
// or nested index as VerifyImage does.
func VerifyIndex(t testing.TB, idx v1.ImageIndex) {
	t.Helper()
	if err := checkIndex(idx); err != nil {
		t.Fatalf("testsupport: verify index: %v", err)
	}
}

func sha256Digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func checkIndex(idx v1.ImageIndex) error {
	raw, err := idx.RawManifest()
	if err != nil {
		return err
	}
	d, err := idx.Digest()
	if err != nil {
		return err
	}
	if got := sha256Digest(raw); got != d.String() {
		return fmt.Errorf("index manifest hashes to %s, digest claims %s", got, d)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return err
	}
	for _, desc := range im.Manifests {
		switch {
		case desc.MediaType.IsIndex():
			child, err := idx.ImageIndex(desc.Digest)
			if err != nil {
				return err
			}
			if err := checkIndex(child); err != nil {
				return fmt.Errorf("index %s: %w", desc.Digest, err)
			}
		case desc.MediaType.IsImage():
			child, err := idx.Image(desc.Digest)
			if err != nil {
				return err
			}
			if err := checkImage(child); err != nil {
				return fmt.Errorf("image %s: %w", desc.Digest, err)
			}
			if cd, err := child.Digest(); err != nil || cd != desc.Digest {
				return fmt.Errorf("child %s resolved to %v (%v)", desc.Digest, cd, err)
			}
		default:
			return fmt.Errorf("unexpected media type %q in index", desc.MediaType)
		}
	}
	return nil
}

func checkImage(img v1.Image) error {
	raw, err := img.RawManifest()
	if err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	if got := sha256Digest(raw); got != d.String() {
		return fmt.Errorf("manifest hashes to %s, digest claims %s", got, d)
	}
	m, err := img.Manifest()
	if err != nil {
		return err
	}
	rawCfg, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	if got := sha256Digest(rawCfg); got != m.Config.Digest.String() || int64(len(rawCfg)) != m.Config.Size {
		return fmt.Errorf("config is %s (%d bytes), manifest says %s (%d bytes)", got, len(rawCfg), m.Config.Digest, m.Config.Size)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	if len(cf.RootFS.DiffIDs) != len(m.Layers) {
		return fmt.Errorf("%d diff_ids for %d layers", len(cf.RootFS.DiffIDs), len(m.Layers))
	}
	for i, desc := range m.Layers {
		l, err := img.LayerByDigest(desc.Digest)
		if err != nil {
			return err
		}
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		blob, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("layer %s: %w", desc.Digest, err)
		}
		if got := sha256Digest(blob); got != desc.Digest.String() || int64(len(blob)) != desc.Size {
			return fmt.Errorf("layer %d is %s (%d bytes), manifest says %s (%d bytes)", i, got, len(blob), desc.Digest, desc.Size)
		}
		diffID, err := checkTarGz(blob)
		if err != nil {
			return fmt.Errorf("layer %s: %w", desc.Digest, err)
		}
		if diffID != cf.RootFS.DiffIDs[i].String() {
			return fmt.Errorf("layer %d uncompresses to %s, diff_id is %s", i, diffID, cf.RootFS.DiffIDs[i])
		}
	}
	return nil
}

// checkTarGz reads blob as a gzip-compressed tar and returns the digest of
// the uncompressed stream.
func checkTarGz(blob []byte) (string, error) {
	zr, err := gzip.NewReader(bytes.NewReader(blob))
	if err != nil {
		return "", err
	}
	h := sha256.New()
	tr := tar.NewReader(io.TeeReader(zr, h))
	for {
		_, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", fmt.Errorf("not a tar: %w", err)
		}
	}
	// Hash the tar padding after the end-of-archive marker too.
	if _, err := io.Copy(io.Discard, io.TeeReader(zr, h)); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}
