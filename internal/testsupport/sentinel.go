package testsupport

import (
	"context"
	"errors"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/multiproxy/multiproxy/internal/testinfra"
)

// RedisSentinel is a Redis master, one replica of it and a Redis Sentinel
// watching them, all Debian's packages on 127.0.0.1: the set-up a cluster
// uses so that coordination survives losing the master. Failover promotes
// the replica as a real failover does, so a test sees the clients follow
// the Sentinel's word rather than a test double's.
type RedisSentinel struct {
	// MasterName is the name the Sentinel monitors the master under.
	MasterName string
	// Addr is the Sentinel's address.
	Addr string
	// Password is the Sentinel's own (requirepass in its config), in
	// PasswordFile too; the servers' is Servers[i].Password.
	Password, PasswordFile string
	// Servers are the master and the replica as they started; which is
	// master now is Master's business.
	Servers [2]*Redis

	client *redis.SentinelClient
	logs   *SyncBuffer
}

// StartRedisSentinel starts a master, a replica syncing from it and a
// Sentinel monitoring the master, and returns once the Sentinel knows the
// replica (a failover needs one). It skips the test when redis-server or
// redis-sentinel is not installed.
func StartRedisSentinel(t testing.TB) *RedisSentinel {
	t.Helper()
	bin, err := exec.LookPath("redis-sentinel")
	if err != nil {
		t.Skip("redis-sentinel is not installed: this test needs Redis Sentinel (run ci/install-redis.sh, or apt-get install -y redis-sentinel)")
	}
	// One password for both servers: each may become the other's replica,
	// and authenticates to its master with it.
	password := testinfra.RandomHex(16)
	// A replica's sync starts at once rather than after the 5 s a master
	// waits for more replicas to share one transfer.
	conf := []string{"masterauth " + password, "repl-diskless-sync-delay 0"}
	master := startRedis(t, password, conf...)
	_, masterPort, _ := net.SplitHostPort(master.Addr)
	replica := startRedis(t, password, append(conf, "replicaof 127.0.0.1 "+masterPort)...)
	WaitFor(t, redisStartTimeout, "the replica's first sync", func() bool {
		info, err := replica.Client().Info(context.Background(), "replication").Result()
		return err == nil && strings.Contains(info, "master_link_status:up")
	})

	logs := &SyncBuffer{}
	addr := FreeAddr(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("redis-sentinel on %s logged:\n%s", addr, logs)
		}
	})
	sen, err := testinfra.StartSentinel(testinfra.SentinelOptions{Dir: t.TempDir(), Bin: bin, Addr: addr,
		MasterName: "multiproxy", MasterAddr: master.Addr, MasterPassword: password, Replicas: 1, Log: logs})
	if err != nil {
		t.Fatalf("testsupport: %v", err)
	}
	t.Cleanup(func() { _ = sen.Close() })
	return &RedisSentinel{
		MasterName:   sen.MasterName,
		Addr:         sen.Addr,
		Password:     sen.Password,
		PasswordFile: sen.PasswordFile,
		Servers:      [2]*Redis{master, replica},
		client:       sen.Client(),
		logs:         logs,
	}
}

// Master is the address the Sentinel names as the master now.
func (s *RedisSentinel) Master(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hp, err := s.client.GetMasterAddrByName(ctx, s.MasterName).Result()
	if err != nil {
		t.Fatalf("testsupport: sentinel get-master-addr-by-name: %v", err)
	}
	return net.JoinHostPort(hp[0], hp[1])
}

// Server is the server listening on addr.
func (s *RedisSentinel) Server(t testing.TB, addr string) *Redis {
	t.Helper()
	for _, r := range s.Servers {
		if r.Addr == addr {
			return r
		}
	}
	t.Fatalf("testsupport: no redis-server of the sentinel's set-up on %s", addr)
	return nil
}

// Failover has the Sentinel promote the replica (SENTINEL FAILOVER), and
// returns the new master's address once the Sentinel names it and it
// answers as a master. The old master goes on running, turned into the
// new one's replica, as after a planned switch-over.
func (s *RedisSentinel) Failover(t testing.TB) string {
	t.Helper()
	old := s.Master(t)
	WaitFor(t, redisStartTimeout, "the sentinel accepting SENTINEL FAILOVER", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		err := s.client.Failover(ctx, s.MasterName).Err()
		// NOGOODSLAVE: the Sentinel has not yet judged the replica fit;
		// INPROG: a failover already runs, which is what was asked.
		return err == nil || strings.Contains(err.Error(), "INPROG")
	})
	var now string
	WaitFor(t, redisStartTimeout, "the sentinel naming the promoted replica", func() bool {
		now = s.Master(t)
		if now == old {
			return false
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		info, err := s.Server(t, now).Client().Info(ctx, "replication").Result()
		return err == nil && strings.Contains(info, "role:master")
	})
	return now
}

// KillMaster kills the master (SIGKILL, as a crash would) and returns the
// address the Sentinel then promotes.
func (s *RedisSentinel) KillMaster(t testing.TB) string {
	t.Helper()
	old := s.Master(t)
	s.Server(t, old).Stop(t)
	var now string
	WaitFor(t, redisStartTimeout, "the sentinel promoting the replica after the master died", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		hp, err := s.client.GetMasterAddrByName(ctx, s.MasterName).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return false
		}
		if len(hp) == 2 {
			now = net.JoinHostPort(hp[0], hp[1])
		}
		return now != "" && now != old
	})
	return now
}

// Logs is everything the Sentinel wrote.
func (s *RedisSentinel) Logs() string { return s.logs.String() }
