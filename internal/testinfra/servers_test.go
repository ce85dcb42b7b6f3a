package testinfra

import (
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/redis/go-redis/v9"
)

// A program without testing.TB (bench) gets errors where testsupport would
// fail the test: starting a running server, stopping a stopped one, a
// missing binary. And a server stopped and started again is the same
// address, empty.
func TestRedisLifecycleReportsErrors(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not installed (run ci/install-redis.sh)")
	}
	r, err := StartRedis(RedisOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	if b, err := os.ReadFile(r.PasswordFile); err != nil || strings.TrimSpace(string(b)) != r.Password {
		t.Fatalf("password file holds %q (%v), want the password", b, err)
	}
	c := redis.NewClient(&redis.Options{Addr: r.Addr, Password: r.Password})
	defer c.Close()
	ctx := context.Background()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("Start while running: %v, want an error saying it runs", err)
	}

	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	if r.Pid() != 0 {
		t.Errorf("Pid after Stop = %d, want 0", r.Pid())
	}
	if err := r.Stop(); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Fatalf("Stop while stopped: %v, want an error saying it is not running", err)
	}
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("PING answered after Stop")
	}

	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET k after a restart: %v, want nil (no persistence)", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("PING answered after Close")
	}
}

func TestStartRedisWithoutBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "no-redis-server")
	_, err := StartRedis(RedisOptions{Dir: t.TempDir(), Bin: bin})
	if err == nil || !strings.Contains(err.Error(), bin) {
		t.Fatalf("StartRedis with a missing binary: %v, want an error naming it", err)
	}
}

// The bench gives StartS3 both clusters' buckets; each must exist, empty,
// and Kill must take the gateway away.
func TestS3BucketsAndKill(t *testing.T) {
	if _, err := exec.LookPath("versitygw"); err != nil {
		t.Skip("versitygw is not installed (run ci/install-versitygw.sh)")
	}
	s, err := StartS3(S3Options{Dir: t.TempDir(), Buckets: []string{"one", "two"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Kill() })
	for file, want := range map[string]string{s.AccessKeyFile: s.AccessKey, s.SecretKeyFile: s.SecretKey} {
		if b, err := os.ReadFile(file); err != nil || strings.TrimSpace(string(b)) != want {
			t.Errorf("%s holds %q (%v), want the key", file, b, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := s.Client().ListBucketsWithContext(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, b := range out.Buckets {
		names = append(names, aws.StringValue(b.Name))
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"one", "two"}) {
		t.Fatalf("buckets %v, want [one two]", names)
	}
	for _, b := range names {
		if st, err := os.Stat(filepath.Join(s.Root, b)); err != nil || !st.IsDir() {
			t.Errorf("bucket %s has no directory under Root: %v", b, err)
		}
	}

	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}
	if resp, err := hc.Get(s.Endpoint + "/health"); err == nil {
		resp.Body.Close()
		t.Fatalf("the gateway answered %s after Kill", resp.Status)
	}
}
