package testinfra

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/session"
	awss3 "github.com/aws/aws-sdk-go/service/s3"
)

// S3Options configures an S3 gateway.
type S3Options struct {
	// Dir holds the gateway's root (Dir/gw), the credential files and,
	// where the filesystem has no user xattrs, the metadata sidecar.
	Dir string
	// Bin is the versitygw binary, found in PATH if empty.
	Bin string
	// Addr is the 127.0.0.1 address to listen on, a free one (PickAddr) if
	// empty.
	Addr string
	// Buckets are created, empty, before StartS3 returns.
	Buckets []string
	// Env is the gateway's environment; nil inherits this process's.
	Env []string
	// Log, if set, gets the gateway's output.
	Log io.Writer
}

// S3 is an S3-compatible object store on 127.0.0.1, where replicas share
// one bucket through distribution's s3-aws storage driver. It is
// versitygw's posix backend: a real S3 API (SigV4, multipart uploads,
// presigned URLs) over a directory of its owner's, so a test can also look
// at what landed on disk.
type S3 struct {
	// Endpoint is http://127.0.0.1:port: the driver's regionendpoint.
	Endpoint string
	// Region is what the gateway signs for; the driver needs one even with
	// a custom endpoint, and SigV4 signatures cover it.
	Region string
	// AccessKey and SecretKey are the gateway's root credentials, random
	// per gateway. AccessKeyFile and SecretKeyFile hold the same, mode
	// 0600, for a config that names credential files rather than secrets.
	AccessKey, SecretKey         string
	AccessKeyFile, SecretKeyFile string
	// Root is the gateway's directory: bucket b is Root/b, and an object's
	// key is its path below that.
	Root string

	proc   *process
	client *awss3.S3
}

// S3StartTimeout bounds the gateway's start; it answers within a fraction
// of a second, so only a broken install or a wedged machine reaches it.
const S3StartTimeout = 30 * time.Second

// StartS3 starts a versitygw gateway and creates the buckets through the
// S3 API (a bare mkdir in the root would do for the posix backend, but the
// API is what a deployment uses).
func StartS3(opts S3Options) (*S3, error) {
	bin, addr, err := binAndAddr(opts.Bin, "versitygw", opts.Addr)
	if err != nil {
		return nil, err
	}
	s := &S3{
		Endpoint:      "http://" + addr,
		Region:        "us-east-1",
		AccessKey:     "MP" + strings.ToUpper(RandomHex(9)),
		SecretKey:     RandomHex(20),
		AccessKeyFile: filepath.Join(opts.Dir, "access-key"),
		SecretKeyFile: filepath.Join(opts.Dir, "secret-key"),
		Root:          filepath.Join(opts.Dir, "gw"),
	}
	if err := os.MkdirAll(s.Root, 0o755); err != nil {
		return nil, fmt.Errorf("S3 gateway root: %w", err)
	}
	for file, v := range map[string]string{s.AccessKeyFile: s.AccessKey, s.SecretKeyFile: s.SecretKey} {
		if err := os.WriteFile(file, []byte(v+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("write S3 credential file: %w", err)
		}
	}
	// Object metadata (ETags above all, which multipart completion checks)
	// goes into extended attributes. A filesystem without user xattrs
	// makes versitygw refuse to start; then a sidecar directory holds it.
	logs := &SyncBuffer{}
	err = s.start(bin, addr, opts, logs, "posix", s.Root)
	if err != nil && strings.Contains(logs.String(), "xattr") {
		sidecar := filepath.Join(opts.Dir, "meta")
		if err := os.MkdirAll(sidecar, 0o755); err != nil {
			return nil, fmt.Errorf("S3 sidecar directory: %w", err)
		}
		err = s.start(bin, addr, opts, &SyncBuffer{}, "posix", "--sidecar", sidecar, s.Root)
	}
	if err != nil {
		return nil, err
	}

	s.client, err = S3Client(s.Endpoint, s.AccessKey, s.SecretKey, s.Region)
	if err != nil {
		_ = s.Kill()
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), S3StartTimeout)
	defer cancel()
	for _, b := range opts.Buckets {
		if _, err := s.client.CreateBucketWithContext(ctx, &awss3.CreateBucketInput{Bucket: aws.String(b)}); err != nil {
			_ = s.Kill()
			return nil, fmt.Errorf("create bucket %s on versitygw: %w", b, err)
		}
	}
	return s, nil
}

// S3Client is an S3 client of the gateway at endpoint, or of something in
// front of it: path-style, plain HTTP, no proxy from the environment (all
// test traffic stays on loopback), and no retries, so a fault a test
// injects is seen once, as it happened.
func S3Client(endpoint, accessKey, secretKey, region string) (*awss3.S3, error) {
	sess, err := session.NewSession(aws.NewConfig().
		WithCredentials(credentials.NewStaticCredentials(accessKey, secretKey, "")).
		WithEndpoint(endpoint).
		WithRegion(region).
		WithS3ForcePathStyle(true).
		WithDisableSSL(true).
		WithMaxRetries(0).
		WithHTTPClient(&http.Client{Transport: &http.Transport{Proxy: nil}}))
	if err != nil {
		return nil, fmt.Errorf("S3 client session for %s: %w", endpoint, err)
	}
	return awss3.New(sess), nil
}

// start runs the gateway and waits until its health endpoint answers. An
// error means the process is gone.
func (s *S3) start(bin, addr string, opts S3Options, logs *SyncBuffer, backend ...string) error {
	args := append([]string{
		"--access", s.AccessKey, "--secret", s.SecretKey,
		"--region", s.Region,
		"--port", addr,
		"--health", "/health",
		// Request logging would fill the logs with every PUT; errors
		// still reach stderr.
		"--quiet",
	}, backend...)
	p, err := startProcess(bin, args, opts.Env, output(opts.Log, logs))
	if err != nil {
		return fmt.Errorf("start versitygw: %w", err)
	}
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	err = p.waitReady(S3StartTimeout, 20*time.Millisecond, func() error {
		resp, err := hc.Get(s.Endpoint + "/health")
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %s", resp.Status)
		}
		return nil
	})
	if err != nil {
		_ = p.kill()
		return fmt.Errorf("versitygw on %s: %w:\n%s", addr, err, logs)
	}
	s.proc = p
	return nil
}

// Client is an S3 client with the gateway's root credentials, path-style
// as the driver's forcepathstyle makes it, for looking at the bucket past
// the driver.
func (s *S3) Client() *awss3.S3 { return s.client }

// Kill stops the gateway with SIGKILL and waits for it to exit, as an
// object store that goes away; it is not restarted.
func (s *S3) Kill() error { return s.proc.kill() }

// Pid is the gateway's process id.
func (s *S3) Pid() int { return s.proc.pid() }
