package testsupport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/session"
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

	cmd    *exec.Cmd
	exited chan struct{}
	logs   *SyncBuffer
	client *awss3.S3
}

// S3MetaDir is versitygw's own directory inside each bucket directory. The
// parts of an upload that was neither completed nor aborted sit in
// S3MetaDir/multipart/, so a test can see whether a cancelled writer left
// data behind.
const S3MetaDir = ".sgwtmp"

// s3StartTimeout bounds the gateway's start; it answers within a fraction
// of a second, so only a broken install or a wedged machine reaches it.
const s3StartTimeout = 30 * time.Second

// StartS3 starts a versitygw gateway on a free 127.0.0.1 port over a fresh
// temporary directory, creates one bucket, and stops the gateway when the
// test ends. It skips the test when versitygw is not installed.
func StartS3(t testing.TB) *S3 {
	t.Helper()
	bin, err := exec.LookPath("versitygw")
	if err != nil {
		t.Skip("versitygw is not installed: this test needs a local S3 gateway (run ci/install-versitygw.sh)")
	}
	dir := t.TempDir()
	s := &S3{
		Region:    "us-east-1",
		Bucket:    "multiproxy-test",
		AccessKey: "MPTEST" + strings.ToUpper(testinfra.RandomHex(7)),
		SecretKey: testinfra.RandomHex(20),
		logs:      &SyncBuffer{},
	}
	s.AccessKeyFile = filepath.Join(dir, "access-key")
	s.SecretKeyFile = filepath.Join(dir, "secret-key")
	for file, v := range map[string]string{s.AccessKeyFile: s.AccessKey, s.SecretKeyFile: s.SecretKey} {
		if err := os.WriteFile(file, []byte(v+"\n"), 0o600); err != nil {
			t.Fatalf("testsupport: write S3 credential file: %v", err)
		}
	}
	root := filepath.Join(dir, "gw")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatalf("testsupport: create S3 gateway root: %v", err)
	}
	s.Dir = filepath.Join(root, s.Bucket)
	addr := FreeAddr(t)
	s.Endpoint = "http://" + addr

	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("versitygw on %s logged:\n%s", addr, s.logs)
		}
	})
	// Object metadata (ETags above all, which multipart completion checks)
	// goes into extended attributes. A filesystem without user xattrs
	// makes versitygw refuse to start; then a sidecar directory holds it.
	backend := []string{"posix", root}
	if err := s.start(t, bin, addr, backend); err != nil {
		if !strings.Contains(s.logs.String(), "xattr") {
			t.Fatalf("testsupport: %v", err)
		}
		sidecar := filepath.Join(dir, "meta")
		if err := os.Mkdir(sidecar, 0o755); err != nil {
			t.Fatalf("testsupport: create S3 sidecar directory: %v", err)
		}
		backend = []string{"posix", "--sidecar", sidecar, root}
		if err := s.start(t, bin, addr, backend); err != nil {
			t.Fatalf("testsupport: %v", err)
		}
	}

	sess, err := session.NewSession(aws.NewConfig().
		WithCredentials(credentials.NewStaticCredentials(s.AccessKey, s.SecretKey, "")).
		WithEndpoint(s.Endpoint).
		WithRegion(s.Region).
		WithS3ForcePathStyle(true).
		WithDisableSSL(true).
		WithMaxRetries(0))
	if err != nil {
		t.Fatalf("testsupport: S3 client session: %v", err)
	}
	s.client = awss3.New(sess)
	ctx, cancel := context.WithTimeout(context.Background(), s3StartTimeout)
	defer cancel()
	if _, err := s.client.CreateBucketWithContext(ctx, &awss3.CreateBucketInput{Bucket: aws.String(s.Bucket)}); err != nil {
		t.Fatalf("testsupport: create bucket %s on versitygw: %v", s.Bucket, err)
	}
	return s
}

// start runs the gateway and waits until its health endpoint answers. An
// error means the process is gone, with its output in s.logs.
func (s *S3) start(t testing.TB, bin, addr string, backend []string) error {
	t.Helper()
	args := append([]string{
		"--access", s.AccessKey, "--secret", s.SecretKey,
		"--region", s.Region,
		"--port", addr,
		"--health", "/health",
		// Request logging would fill the failure output with every
		// PUT; errors still reach stderr.
		"--quiet",
	}, backend...)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = s.logs, s.logs
	killWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start versitygw: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s.cmd, s.exited = cmd, exited
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	health := "http://" + addr + "/health"
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(s3StartTimeout)
	for {
		resp, err := hc.Get(health)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		select {
		case <-exited:
			return fmt.Errorf("versitygw exited at start (%v):\n%s", cmd.ProcessState, s.logs)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("versitygw not healthy on %s within %v (last: %v):\n%s", addr, s3StartTimeout, err, s.logs)
		}
		time.Sleep(20 * time.Millisecond)
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
	if err := s.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("testsupport: kill versitygw: %v", err)
	}
	<-s.exited
}

// Logs is what the gateway wrote to stdout and stderr so far.
func (s *S3) Logs() string { return s.logs.String() }
