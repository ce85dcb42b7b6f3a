package gc_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	awss3 "github.com/aws/aws-sdk-go/service/s3"
	"github.com/distribution/distribution/v3/registry/storage"
	s3driver "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"
	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/gc"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// A blob stored by multipart upload that began before a collection started
// and completed after, on a real S3 gateway: the collection keeps it,
// while an unreferenced blob older than fill_timeout goes. versitygw
// reports a multipart object's completion as its LastModified; AWS S3
// reports the upload's start, which makes the straddling blob look older
// than the collection. The bucket is reached through a gate that reports
// what AWS would, so a rule that compares with the start marker without
// allowing fill_timeout for uploads in flight sweeps the blob here.
func TestMultipartUploadStraddlingTheStartIsKept(t *testing.T) {
	s := ts.StartS3(t)
	gate := ts.StartS3Gate(t, s, ts.S3GateOptions{MultipartStart: true})
	ctx := context.Background()
	p := gate.DriverParameters()
	p["rootdirectory"] = "/mp"
	d, err := s3driver.FromParameters(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	key := func(dg digest.Digest) string {
		return "mp/docker/registry/v2/blobs/sha256/" + dg.Encoded()[:2] + "/" + dg.Encoded() + "/data"
	}
	c := gate.Client()

	oldContent := []byte("unreferenced, stored long before")
	old := digest.FromBytes(oldContent)
	if _, err := c.PutObject(&awss3.PutObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(key(old)), Body: bytes.NewReader(oldContent)}); err != nil {
		t.Fatal(err)
	}
	// The gateway's LastModified is the file's mtime.
	at := time.Now().Add(-time.Hour)
	if err := os.Chtimes(filepath.Join(s.Dir, filepath.FromSlash(key(old))), at, at); err != nil {
		t.Fatal(err)
	}

	// Two parts: S3 wants 5 MiB for every part but the last.
	content := bytes.Repeat([]byte("layer bytes "), (6<<20)/12)
	big := digest.FromBytes(content)
	up, err := c.CreateMultipartUpload(&awss3.CreateMultipartUploadInput{Bucket: aws.String(s.Bucket), Key: aws.String(key(big))})
	if err != nil {
		t.Fatal(err)
	}
	part := func(n int64, b []byte) *awss3.CompletedPart {
		out, err := c.UploadPart(&awss3.UploadPartInput{Bucket: aws.String(s.Bucket), Key: aws.String(key(big)),
			UploadId: up.UploadId, PartNumber: aws.Int64(n), Body: bytes.NewReader(b)})
		if err != nil {
			t.Fatal(err)
		}
		return &awss3.CompletedPart{ETag: out.ETag, PartNumber: aws.Int64(n)}
	}
	first := part(1, content[:5<<20])
	began := time.Now()
	// The marker's LastModified is then at least 2 s after the upload's
	// start (one-second resolution): older than the marker minus the 1 s
	// a rule without the fill_timeout allowance gives.
	time.Sleep(2100 * time.Millisecond)

	completed := false
	driver := behindStore{StorageDriver: d, onMarker: func() {
		if completed {
			return
		}
		completed = true
		second := part(2, content[5<<20:])
		if _, err := c.CompleteMultipartUpload(&awss3.CompleteMultipartUploadInput{Bucket: aws.String(s.Bucket), Key: aws.String(key(big)),
			UploadId: up.UploadId, MultipartUpload: &awss3.CompletedMultipartUpload{Parts: []*awss3.CompletedPart{first, second}}}); err != nil {
			t.Fatal(err)
		}
	}}
	ns, err := storage.NewRegistry(ctx, driver, storage.EnableDelete)
	if err != nil {
		t.Fatal(err)
	}
	st := gc.Store{Name: "docker.io", Driver: driver, NS: ns, Cluster: soleCluster{}, MaxUpload: time.Minute}
	res, err := gc.Collect(ctx, st, gc.Policy{}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !completed {
		t.Fatal("the collection never read its start marker")
	}
	head, err := c.HeadObject(&awss3.HeadObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(key(big))})
	if err != nil {
		t.Errorf("the blob whose upload straddled the start was swept: %v", err)
	} else {
		t.Logf("upload began %s; the store reports LastModified %s", began.UTC().Format(time.RFC3339), head.LastModified.UTC().Format(time.RFC3339))
		if head.LastModified.After(began) {
			t.Errorf("the store reports LastModified %s, after the upload's start %s: the straddle is not modelled", head.LastModified, began)
		}
	}
	if _, err := c.HeadObject(&awss3.HeadObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(key(old))}); err == nil {
		t.Error("the blob stored an hour before was kept")
	}
	if res.FreedBlobs != 1 {
		t.Errorf("freed %d blobs, want 1 (the old one)", res.FreedBlobs)
	}
}
