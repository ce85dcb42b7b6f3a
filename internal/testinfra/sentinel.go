package testinfra

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// SentinelOptions configures a Sentinel.
type SentinelOptions struct {
	// Dir holds the config, which Sentinel rewrites as it learns the
	// set-up, and the password file.
	Dir string
	// Bin is the redis-sentinel binary, found in PATH if empty.
	Bin string
	// Addr is the 127.0.0.1 address to listen on, a free one (PickAddr) if
	// empty.
	Addr string
	// MasterName is the name the master is monitored under.
	MasterName string
	// MasterAddr and MasterPassword reach the master.
	MasterAddr, MasterPassword string
	// Replicas is how many replicas the master has: Start returns once
	// the Sentinel knows them all, linked and up, as a failover needs.
	Replicas int
	// Env is the Sentinel's environment; nil inherits this process's.
	Env []string
	// Log, if set, gets the Sentinel's output.
	Log io.Writer
}

// Sentinel is a Redis Sentinel, Debian's package on 127.0.0.1, alone
// deciding (quorum 1) about one master, with a production's timeouts
// divided by tens so that a failover takes seconds, not minutes.
type Sentinel struct {
	// Addr is the Sentinel's address, MasterName the master's name there.
	Addr, MasterName string
	// Password is the Sentinel's own (requirepass in its config), in
	// PasswordFile too.
	Password, PasswordFile string

	proc   *process
	client *redis.SentinelClient
}

// The Sentinel's timeouts: a production's divided by tens.
const (
	sentinelDownAfter       = 1000 // ms without an answer before the master is down
	sentinelFailoverTimeout = 3000 // ms a failover may take before it is retried
)

// StartSentinel starts a Sentinel monitoring the master and returns once
// it knows the master's replicas.
func StartSentinel(opts SentinelOptions) (*Sentinel, error) {
	bin, addr, err := binAndAddr(opts.Bin, "redis-sentinel", opts.Addr)
	if err != nil {
		return nil, err
	}
	s := &Sentinel{
		Addr:         addr,
		MasterName:   opts.MasterName,
		Password:     RandomHex(16),
		PasswordFile: filepath.Join(opts.Dir, "sentinel-password"),
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("sentinel directory: %w", err)
	}
	if err := os.WriteFile(s.PasswordFile, []byte(s.Password+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("write sentinel password file: %w", err)
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("sentinel address %q: %w", addr, err)
	}
	mHost, mPort, err := net.SplitHostPort(opts.MasterAddr)
	if err != nil {
		return nil, fmt.Errorf("master address %q: %w", opts.MasterAddr, err)
	}
	// Sentinel rewrites its config as it learns the set-up. A quorum of 1:
	// the only Sentinel decides.
	conf := redisConf(port, opts.Dir, s.Password,
		fmt.Sprintf("sentinel monitor %s %s %s 1", s.MasterName, mHost, mPort),
		fmt.Sprintf("sentinel auth-pass %s %s", s.MasterName, opts.MasterPassword),
		fmt.Sprintf("sentinel down-after-milliseconds %s %d", s.MasterName, sentinelDownAfter),
		fmt.Sprintf("sentinel failover-timeout %s %d", s.MasterName, sentinelFailoverTimeout),
		fmt.Sprintf("sentinel parallel-syncs %s 1", s.MasterName))
	confFile := filepath.Join(opts.Dir, "sentinel.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		return nil, fmt.Errorf("write sentinel config: %w", err)
	}
	logs := &SyncBuffer{}
	if s.proc, err = startProcess(bin, []string{confFile}, opts.Env, output(opts.Log, logs)); err != nil {
		return nil, fmt.Errorf("start redis-sentinel: %w", err)
	}
	s.client = redis.NewSentinelClient(&redis.Options{Addr: s.Addr, Password: s.Password, DialTimeout: time.Second, MaxRetries: -1})
	err = s.proc.waitReady(RedisStartTimeout, 10*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		replicas, err := s.client.Replicas(ctx, s.MasterName).Result()
		if err != nil {
			return err
		}
		up := 0
		for _, r := range replicas {
			if r["master-link-status"] == "ok" && !strings.Contains(r["flags"], "down") {
				up++
			}
		}
		if up < opts.Replicas {
			return fmt.Errorf("%d of %d replicas known and up", up, opts.Replicas)
		}
		return nil
	})
	if err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("redis-sentinel on %s: %w:\n%s", s.Addr, err, logs)
	}
	return s, nil
}

// Client is the Sentinel's client, closed by Close.
func (s *Sentinel) Client() *redis.SentinelClient { return s.client }

// Close stops the Sentinel (SIGKILL) and closes its client.
func (s *Sentinel) Close() error {
	return errors.Join(s.client.Close(), s.proc.kill())
}
