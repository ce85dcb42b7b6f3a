package testsupport

import (
	"os/exec"
	"sync"
	"testing"

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

	srv  *testinfra.Redis
	logs *SyncBuffer

	mu      sync.Mutex
	clients []*redis.Client
}

// redisStartTimeout bounds a wait on a Redis set-up.
const redisStartTimeout = testinfra.RedisStartTimeout

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
	logs := &SyncBuffer{}
	srv, err := testinfra.NewRedis(testinfra.RedisOptions{Dir: t.TempDir(), Bin: bin, Addr: FreeAddr(t),
		Password: password, Extra: extra, Log: logs})
	if err != nil {
		t.Fatalf("testsupport: %v", err)
	}
	r := &Redis{Addr: srv.Addr, Password: srv.Password, PasswordFile: srv.PasswordFile, srv: srv, logs: logs}
	t.Cleanup(func() {
		r.mu.Lock()
		clients := r.clients
		r.clients = nil
		r.mu.Unlock()
		for _, c := range clients {
			_ = c.Close()
		}
		if err := srv.Close(); err != nil {
			t.Errorf("testsupport: %v", err)
		}
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
	if err := r.srv.Start(); err != nil {
		t.Fatalf("testsupport: %v", err)
	}
}

// Stop kills the server with SIGKILL, as a crash or an OOM kill would, and
// waits for it to exit. Everything it held is gone. It fails the test if
// the server is not running.
func (r *Redis) Stop(t testing.TB) {
	t.Helper()
	if err := r.srv.Stop(); err != nil {
		t.Fatalf("testsupport: %v", err)
	}
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
