package testsupport

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/multiproxy/multiproxy/internal/testinfra"
)

// Redis is a redis-server process on 127.0.0.1, the store replicas
// coordinate through in high-availability mode. It is Debian's package,
// run with no persistence and a password, so a test sees the same
// protocol, AUTH and expiry semantics a deployment does, and can take the
// server away (Stop) and bring it back empty (Start) as a restart without
// persistence would.
type Redis struct {
	// Addr keeps its value across Stop and Start: the port is outside the
	// kernel's ephemeral range (see FreeAddr), so nothing else takes it
	// while the server is down and clients reconnect to the same address.
	Addr string
	// Password is required of every client (requirepass); PasswordFile
	// holds it, mode 0600, for a config that names a file.
	Password, PasswordFile string

	bin, conf string
	logs      *SyncBuffer

	mu      sync.Mutex
	cmd     *exec.Cmd // nil while stopped
	exited  chan struct{}
	clients []*redis.Client
}

// redisStartTimeout bounds a start; redis-server answers PING within
// milliseconds, so only a broken install or a wedged machine reaches it.
const redisStartTimeout = 30 * time.Second

// StartRedis starts redis-server on a free 127.0.0.1 port, waits until it
// answers an authenticated PING, and stops it when the test ends. It skips
// the test when redis-server is not installed.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	return startRedis(t, "")
}

// startRedis starts a redis-server; with password set (a group sharing
// one password, as replicas authenticating to their master do) it uses it
// instead of a fresh one, and extra lines go into its config.
func startRedis(t testing.TB, password string, extra ...string) *Redis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server is not installed: this test needs a local Redis (run ci/install-redis.sh, or apt-get install -y redis-server)")
	}
	dir := t.TempDir()
	r := &Redis{
		Addr:         FreeAddr(t),
		Password:     password,
		PasswordFile: filepath.Join(dir, "password"),
		bin:          bin,
		conf:         filepath.Join(dir, "redis.conf"),
		logs:         &SyncBuffer{},
	}
	if r.Password == "" {
		r.Password = testinfra.RandomHex(16)
	}
	if err := os.WriteFile(r.PasswordFile, []byte(r.Password+"\n"), 0o600); err != nil {
		t.Fatalf("testsupport: write redis password file: %v", err)
	}
	_, port, err := net.SplitHostPort(r.Addr)
	if err != nil {
		t.Fatalf("testsupport: redis address %q: %v", r.Addr, err)
	}
	// A config file rather than arguments keeps the password out of the
	// process list. logfile "" is stdout, which the test captures; dir
	// keeps anything redis writes (it should write nothing) in the test's
	// temporary directory.
	conf := strings.Join([]string{
		"bind 127.0.0.1",
		"port " + port,
		"protected-mode yes",
		"requirepass " + r.Password,
		`save ""`,
		"appendonly no",
		"daemonize no",
		`logfile ""`,
		"dir " + dir,
		strings.Join(extra, "\n"),
	}, "\n")
	if err := os.WriteFile(r.conf, []byte(conf), 0o600); err != nil {
		t.Fatalf("testsupport: write redis config: %v", err)
	}
	t.Cleanup(func() {
		r.mu.Lock()
		clients := r.clients
		r.clients = nil
		r.mu.Unlock()
		for _, c := range clients {
			_ = c.Close()
		}
		r.kill()
		if t.Failed() {
			t.Logf("redis-server on %s logged:\n%s", r.Addr, r.logs)
		}
	})
	r.Start(t)
	return r
}

// Start starts the server again after Stop, on the same address and
// empty. It fails the test if the server is running.
func (r *Redis) Start(t testing.TB) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		t.Fatalf("testsupport: redis-server on %s is already running", r.Addr)
	}
	deadline := time.Now().Add(redisStartTimeout)
	for {
		err := r.startLocked(deadline)
		if err == nil {
			return
		}
		// The port was checked free, and no one takes it while we are
		// down unless they bind it on purpose; the old server's socket
		// may still be closing, though, or a concurrently running test
		// binary may have probed it a moment ago.
		if !strings.Contains(err.Error(), "Address already in use") || time.Now().After(deadline) {
			t.Fatalf("testsupport: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *Redis) startLocked(deadline time.Time) error {
	cmd := exec.Command(r.bin, r.conf)
	logs := &SyncBuffer{}
	// This start's output explains its failure; the whole run's goes in
	// the test's failure log.
	out := io.MultiWriter(logs, r.logs)
	cmd.Stdout, cmd.Stderr = out, out
	killWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()

	c := redis.NewClient(&redis.Options{
		Addr:        r.Addr,
		Password:    r.Password,
		DialTimeout: time.Second,
		MaxRetries:  -1,
	})
	defer c.Close()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			r.cmd, r.exited = cmd, exited
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("redis-server exited at start (%v):\n%s", cmd.ProcessState, logs)
		default:
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("redis-server did not answer PING on %s within %v (last: %v):\n%s", r.Addr, redisStartTimeout, err, logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop kills the server with SIGKILL, as a crash or an OOM kill would, and
// waits for it to exit. Everything it held is gone. It fails the test if
// the server is not running.
func (r *Redis) Stop(t testing.TB) {
	t.Helper()
	r.mu.Lock()
	running := r.cmd != nil
	r.mu.Unlock()
	if !running {
		t.Fatalf("testsupport: redis-server on %s is not running", r.Addr)
	}
	r.kill()
}

func (r *Redis) kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return
	}
	// The only error is a process that already exited, which Wait reports.
	_ = r.cmd.Process.Kill()
	<-r.exited
	r.cmd, r.exited = nil, nil
}

// Client is a new client of the server with its password, for a test's
// own assertions and setup. It keeps working across Stop and Start (it
// reconnects), and is closed when the test ends.
func (r *Redis) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: r.Addr, Password: r.Password})
	r.mu.Lock()
	r.clients = append(r.clients, c)
	r.mu.Unlock()
	return c
}

// Logs is everything redis-server wrote, over all its starts.
func (r *Redis) Logs() string { return r.logs.String() }
