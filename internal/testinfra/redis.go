package testinfra

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisOptions configures a Redis.
type RedisOptions struct {
	// Dir holds the config, the password file and redis-server's working
	// directory (it should write nothing there).
	Dir string
	// Bin is the redis-server binary, found in PATH if empty.
	Bin string
	// Addr is the 127.0.0.1 address to listen on, a free one (PickAddr) if
	// empty.
	Addr string
	// Password is required of every client; a random one if empty. A
	// group sharing one password (replicas authenticating to their
	// master) passes the same one to each.
	Password string
	// Extra lines go into the config as they are.
	Extra []string
	// Env is the server's environment; nil inherits this process's.
	Env []string
	// Log, if set, gets the server's output over all its starts.
	Log io.Writer
}

// Redis is a redis-server process on 127.0.0.1, the store replicas
// coordinate through in high-availability mode: Debian's package with a
// password and no persistence, so its owner sees the protocol, AUTH and
// expiry semantics a deployment does, and can take the server away (Stop)
// and bring it back empty (Start) as a restart without persistence would.
// Methods are safe for concurrent use.
type Redis struct {
	// Addr keeps its value across Stop and Start, so clients reconnect to
	// the same address.
	Addr string
	// Password is required of every client (requirepass); PasswordFile
	// holds it, mode 0600, for a config that names a file.
	Password, PasswordFile string

	bin, conf string
	env       []string
	log       io.Writer

	mu   sync.Mutex
	proc *process // nil while stopped
}

// RedisStartTimeout bounds a start; redis-server answers PING within
// milliseconds, so only a broken install or a wedged machine reaches it.
const RedisStartTimeout = 30 * time.Second

// StartRedis writes a config for redis-server, starts it and waits until
// it answers an authenticated PING.
func StartRedis(opts RedisOptions) (*Redis, error) {
	r, err := NewRedis(opts)
	if err != nil {
		return nil, err
	}
	if err := r.Start(); err != nil {
		return nil, err
	}
	return r, nil
}

// NewRedis writes the config without starting the server.
func NewRedis(opts RedisOptions) (*Redis, error) {
	bin, addr, err := binAndAddr(opts.Bin, "redis-server", opts.Addr)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("redis directory: %w", err)
	}
	r := &Redis{
		Addr:         addr,
		Password:     opts.Password,
		PasswordFile: filepath.Join(opts.Dir, "password"),
		bin:          bin,
		conf:         filepath.Join(opts.Dir, "redis.conf"),
		env:          opts.Env,
		log:          opts.Log,
	}
	if r.Password == "" {
		r.Password = RandomHex(16)
	}
	if err := os.WriteFile(r.PasswordFile, []byte(r.Password+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("write redis password file: %w", err)
	}
	_, port, err := net.SplitHostPort(r.Addr)
	if err != nil {
		return nil, fmt.Errorf("redis address %q: %w", r.Addr, err)
	}
	conf := redisConf(port, opts.Dir, r.Password, append([]string{`save ""`, "appendonly no"}, opts.Extra...)...)
	if err := os.WriteFile(r.conf, []byte(conf), 0o600); err != nil {
		return nil, fmt.Errorf("write redis config: %w", err)
	}
	return r, nil
}

// redisConf is a config for redis-server or redis-sentinel on
// 127.0.0.1:port with a password and its output on stdout. A config file
// rather than arguments keeps the password out of the process list.
func redisConf(port, dir, password string, extra ...string) string {
	return strings.Join(append([]string{
		"bind 127.0.0.1",
		"port " + port,
		"protected-mode yes",
		"requirepass " + password,
		"daemonize no",
		`logfile ""`,
		"dir " + dir,
	}, extra...), "\n") + "\n"
}

// Start starts the server (again after Stop: on the same address, empty)
// and waits until it answers PING. It is an error if it is running.
func (r *Redis) Start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc != nil {
		return fmt.Errorf("redis-server on %s is already running", r.Addr)
	}
	deadline := time.Now().Add(RedisStartTimeout)
	for {
		err := r.startLocked()
		if err == nil {
			return nil
		}
		// The port was checked free, and no one takes it while we are
		// down unless they bind it on purpose; the old server's socket
		// may still be closing, though, or a concurrently running program
		// may have probed it a moment ago.
		if !strings.Contains(err.Error(), "Address already in use") || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *Redis) startLocked() error {
	// This start's output explains its failure; Log has the whole run's.
	logs := &SyncBuffer{}
	p, err := startProcess(r.bin, []string{r.conf}, r.env, output(r.log, logs))
	if err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	c := redis.NewClient(&redis.Options{
		Addr:        r.Addr,
		Password:    r.Password,
		DialTimeout: time.Second,
		MaxRetries:  -1,
	})
	defer c.Close()
	err = p.waitReady(RedisStartTimeout, 10*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return c.Ping(ctx).Err()
	})
	if err != nil {
		_ = p.kill()
		return fmt.Errorf("redis-server on %s: %w:\n%s", r.Addr, err, logs)
	}
	r.proc = p
	return nil
}

// Stop kills the server with SIGKILL, as a crash or an OOM kill would, and
// waits for it to exit. Everything it held is gone. It is an error if the
// server is not running.
func (r *Redis) Stop() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		return fmt.Errorf("redis-server on %s is not running", r.Addr)
	}
	return r.stopLocked()
}

func (r *Redis) stopLocked() error {
	err := r.proc.kill()
	r.proc = nil
	return err
}

// Close stops the server if it runs.
func (r *Redis) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		return nil
	}
	return r.stopLocked()
}

// Pid is the running server's process id, 0 while stopped.
func (r *Redis) Pid() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		return 0
	}
	return r.proc.pid()
}
