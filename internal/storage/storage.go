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
	"net/http"
	"path"
	"reflect"
	"strings"
	"time"

	awss3 "github.com/aws/aws-sdk-go/service/s3"
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
	if err := boundHeaders(d, responseHeaderTimeout); err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", st.S3.Bucket, err)
	}
	return d, nil
}

// responseHeaderTimeout bounds the wait for an object store's answer once
// a request is sent. Without it a hung store holds a call, and whatever
// waits on it, until the caller's context ends: for a fill, its whole
// fill_timeout. The bound is generous because the slowest legitimate
// answer, completing the multipart upload of a large blob, may take
// seconds on a busy store; callers on a client's path bound their calls
// more tightly themselves (see the cache's bucketCall).
var responseHeaderTimeout = 30 * time.Second

// boundHeaders gives the s3-aws driver's AWS client an HTTP client whose
// transport has a response-header timeout. The driver takes no HTTP client
// or timeout parameter, and its S3 client is behind an unexported type,
// reached here by reflection on the exported field that holds it (Base's
// StorageDriver, then S3). If a distribution upgrade moves it, opening the
// bucket fails, and the storage tests with it, rather than the bound
// silently going away.
func boundHeaders(d *s3.Driver, timeout time.Duration) error {
	v := reflect.ValueOf(d.Base.StorageDriver)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return fmt.Errorf("s3 driver is a %T: cannot set its response header timeout", d.Base.StorageDriver)
	}
	f := v.Elem().FieldByName("S3")
	if !f.IsValid() || !f.CanInterface() {
		return errors.New("s3 driver has no S3 client field: cannot set its response header timeout")
	}
	client, ok := f.Interface().(*awss3.S3)
	if !ok || client == nil {
		return fmt.Errorf("s3 driver's S3 field is a %s: cannot set its response header timeout", f.Type())
	}
	// The SDK's default is http.DefaultClient; a transport of our own
	// leaves every other user of the default one untouched.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if hc := client.Config.HTTPClient; hc != nil && hc != http.DefaultClient {
		if t, ok := hc.Transport.(*http.Transport); ok {
			tr = t.Clone() // skipverify's TLS settings
		}
	}
	tr.ResponseHeaderTimeout = timeout
	client.Config.HTTPClient = &http.Client{Transport: tr}
	return nil
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
		// The App is asked only for the catalog and the API base: blobs
		// are served by internal/proxy (a local copy, or its own
		// presigned redirect when configured), never redirected by
		// the App.
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
