package testsupport

import (
	"context"
	"io"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	awss3 "github.com/aws/aws-sdk-go/service/s3"

	"github.com/multiproxy/multiproxy/internal/testinfra"
)

// S3 is an S3-compatible object store on 127.0.0.1 for the
// high-availability tests, where replicas share one bucket through
// distribution's s3-aws storage driver. It is versitygw's posix backend: a
// real S3 API (SigV4, multipart uploads, presigned URLs) over a directory
// of the test's own, so a test can also look at what landed on disk.
type S3 struct {
	// Endpoint is http://127.0.0.1:port: the driver's regionendpoint.
	Endpoint string
	// Region is what the gateway signs for; the driver needs one even with
	// a custom endpoint, and SigV4 signatures cover it.
	Region string
	// Bucket exists, empty, when StartS3 returns.
	Bucket string
	// AccessKey and SecretKey are the gateway's root credentials, random
	// per gateway. AccessKeyFile and SecretKeyFile hold the same, mode
	// 0600, for a config that names credential files rather than secrets.
	AccessKey, SecretKey         string
	AccessKeyFile, SecretKeyFile string
	// Dir is the bucket's directory: an object's key is its path below
	// Dir. Gateway state, including the parts of multipart uploads not
	// yet completed, lives below Dir in S3MetaDir, which the S3 API never
	// lists.
	Dir string

	gw     *testinfra.S3
	logs   *SyncBuffer
	client *awss3.S3
}

// S3MetaDir is versitygw's own directory inside each bucket directory. The
// parts of an upload that was neither completed nor aborted sit in
// S3MetaDir/multipart/, so a test can see whether a cancelled writer left
// data behind.
const S3MetaDir = ".sgwtmp"

// StartS3 starts a versitygw gateway on a free 127.0.0.1 port over a fresh
// temporary directory, creates one bucket, and stops the gateway when the
// test ends. It skips the test when versitygw is not installed.
func StartS3(t testing.TB) *S3 {
	t.Helper()
	bin, err := exec.LookPath("versitygw")
	if err != nil {
		t.Skip("versitygw is not installed: this test needs a local S3 gateway (run ci/install-versitygw.sh)")
	}
	const bucket = "multiproxy-test"
	logs := &SyncBuffer{}
	addr := FreeAddr(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("versitygw on %s logged:\n%s", addr, logs)
		}
	})
	gw, err := testinfra.StartS3(testinfra.S3Options{Dir: t.TempDir(), Bin: bin, Addr: addr, Buckets: []string{bucket}, Log: logs})
	if err != nil {
		t.Fatalf("testsupport: %v", err)
	}
	t.Cleanup(func() { _ = gw.Kill() })
	return &S3{
		Endpoint:      gw.Endpoint,
		Region:        gw.Region,
		Bucket:        bucket,
		AccessKey:     gw.AccessKey,
		SecretKey:     gw.SecretKey,
		AccessKeyFile: gw.AccessKeyFile,
		SecretKeyFile: gw.SecretKeyFile,
		Dir:           filepath.Join(gw.Root, bucket),
		gw:            gw,
		logs:          logs,
		client:        gw.Client(),
	}
}

// Client is an S3 client with the gateway's root credentials, path-style
// as the driver's forcepathstyle makes it, for a test that wants to look
// at the bucket past the driver (list in-progress multipart uploads, read
// an object's headers).
func (s *S3) Client() *awss3.S3 { return s.client }

// DriverParameters are the s3-aws storage driver's parameters for this
// gateway, as a config would give them: plain HTTP, path-style addressing
// (virtual-host style would need a DNS name per bucket) and SigV4. The map
// is the caller's to extend (rootdirectory, chunksize...).
func (s *S3) DriverParameters() map[string]any {
	return map[string]any{
		"accesskey":      s.AccessKey,
		"secretkey":      s.SecretKey,
		"region":         s.Region,
		"regionendpoint": s.Endpoint,
		"bucket":         s.Bucket,
		"forcepathstyle": true,
		"secure":         false,
		"v4auth":         true,
	}
}

// Objects reads every object whose key starts with prefix through the S3
// API, keyed by object key, so that assertions see what any replica would.
// Keys have no leading slash: the driver's path /a/b under rootdirectory r
// is the key r/a/b.
func (s *S3) Objects(t testing.TB, prefix string) map[string][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out := map[string][]byte{}
	var keys []string
	err := s.client.ListObjectsV2PagesWithContext(ctx, &awss3.ListObjectsV2Input{
		Bucket: aws.String(s.Bucket),
		Prefix: aws.String(prefix),
	}, func(page *awss3.ListObjectsV2Output, _ bool) bool {
		for _, o := range page.Contents {
			keys = append(keys, aws.StringValue(o.Key))
		}
		return true
	})
	if err != nil {
		t.Fatalf("testsupport: list S3 objects under %q: %v", prefix, err)
	}
	for _, k := range keys {
		b, err := s.get(ctx, k)
		if err != nil {
			t.Fatalf("testsupport: read S3 object %q: %v", k, err)
		}
		out[k] = b
	}
	return out
}

func (s *S3) get(ctx context.Context, key string) ([]byte, error) {
	resp, err := s.client.GetObjectWithContext(ctx, &awss3.GetObjectInput{
		Bucket: aws.String(s.Bucket),
		Key:    aws.String(key),
	})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// PendingUploads lists the multipart uploads under prefix that were
// neither completed nor aborted, as "key uploadID" pairs: what a writer
// that was closed without Commit or Cancel leaves in the bucket.
func (s *S3) PendingUploads(t testing.TB, prefix string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out []string
	err := s.client.ListMultipartUploadsPagesWithContext(ctx, &awss3.ListMultipartUploadsInput{
		Bucket: aws.String(s.Bucket),
		Prefix: aws.String(prefix),
	}, func(page *awss3.ListMultipartUploadsOutput, _ bool) bool {
		for _, u := range page.Uploads {
			out = append(out, aws.StringValue(u.Key)+" "+aws.StringValue(u.UploadId))
		}
		return true
	})
	if err != nil {
		t.Fatalf("testsupport: list pending S3 multipart uploads under %q: %v", prefix, err)
	}
	return out
}

// Kill stops the gateway with SIGKILL and waits for it to exit, for a
// test of an object store that goes away. The gateway is not restarted.
func (s *S3) Kill(t testing.TB) {
	t.Helper()
	if err := s.gw.Kill(); err != nil {
		t.Fatalf("testsupport: %v", err)
	}
}

// Logs is what the gateway wrote to stdout and stderr so far.
func (s *S3) Logs() string { return s.logs.String() }
