// Package storage opens an upstream's store: distribution's filesystem
// driver under the upstream's directory, or its s3-aws driver on a shared
// bucket. The cache, the embedded App, garbage collection and
// `config check --probe` all open it here, so the four never disagree on
// where content lives.
package storage

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"

	"github.com/multiproxy/multiproxy/internal/config"
)

// Driver opens the store an upstream's storage section describes.
func Driver(ctx context.Context, st config.UpstreamStorage) (storagedriver.StorageDriver, error) {
	if !st.S3.Enabled() {
		return filesystem.New(filesystem.DriverParameters{RootDirectory: st.Path, MaxThreads: 100}), nil
	}
	d, err := s3.FromParameters(ctx, s3Parameters(st.S3))
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", st.S3.Bucket, err)
	}
	return d, nil
}

// AppStorage is the storage section of the embedded App's configuration.
func AppStorage(st config.UpstreamStorage) configuration.Storage {
	if !st.S3.Enabled() {
		return configuration.Storage{"filesystem": configuration.Parameters{"rootdirectory": st.Path}}
	}
	p := configuration.Parameters{}
	for k, v := range s3Parameters(st.S3) {
		p[k] = v
	}
	return configuration.Storage{
		"s3": p,
		// Manifests come from the bucket; blobs are ours to serve
		// (local copy, or a presigned redirect when configured).
		"redirect": configuration.Parameters{"disable": true},
	}
}

// s3Parameters maps our section onto the s3-aws driver's parameters.
func s3Parameters(s config.S3) map[string]any {
	p := map[string]any{
		"bucket":         s.Bucket,
		"region":         s.Region,
		"rootdirectory":  strings.TrimSuffix(path.Clean("/"+s.Root), "/"),
		"forcepathstyle": s.ForcePathStyle,
		"secure":         true,
		"v4auth":         true,
		"useragent":      "multiproxy",
	}
	if s.Endpoint != "" {
		p["regionendpoint"] = s.Endpoint
		p["secure"] = strings.HasPrefix(s.Endpoint, "https://")
	}
	if s.AccessKey != "" {
		p["accesskey"] = s.AccessKey.Reveal()
		p["secretkey"] = s.SecretKey.Reveal()
	}
	return p
}

// Probe checks that a store can be written, read back and deleted: what a
// replica needs before it serves. It leaves nothing behind.
func Probe(ctx context.Context, st config.UpstreamStorage) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	d, err := Driver(ctx, st)
	if err != nil {
		return err
	}
	p := fmt.Sprintf("/_multiproxy/probe-%d", time.Now().UnixNano())
	want := []byte("multiproxy probe\n")
	if err := d.PutContent(ctx, p, want); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got, err := d.GetContent(ctx, p)
	if err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	if string(got) != string(want) {
		return errors.New("read back different bytes")
	}
	if err := d.Delete(ctx, "/_multiproxy"); err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	return nil
}
