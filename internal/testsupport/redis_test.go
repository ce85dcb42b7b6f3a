package testsupport

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// The tests here use Redis as replicas will to coordinate: a lock is a
// key set with NX and a PX expiry, and a replica must find out promptly,
// not by hanging, when Redis is gone.

func TestRedisSetNXPX(t *testing.T) {
	start := time.Now()
	r := StartRedis(t)
	t.Logf("StartRedis took %v", time.Since(start))
	if !strings.HasPrefix(r.Addr, "127.0.0.1:") {
		t.Fatalf("Addr %q: want 127.0.0.1:port", r.Addr)
	}
	fi, err := os.Stat(r.PasswordFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: mode %v, want 0600", r.PasswordFile, fi.Mode().Perm())
	}
	if b, err := os.ReadFile(r.PasswordFile); err != nil || strings.TrimSpace(string(b)) != r.Password {
		t.Errorf("%s holds %q (%v), want the password", r.PasswordFile, b, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Without the password nothing gets through.
	anon := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer anon.Close()
	if err := anon.SetNX(ctx, "lock", "x", time.Minute).Err(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Fatalf("SET NX without the password: want NOAUTH, got %v", err)
	}
	wrong := redis.NewClient(&redis.Options{Addr: r.Addr, Password: "not-" + r.Password})
	defer wrong.Close()
	if err := wrong.Ping(ctx).Err(); err == nil {
		t.Fatal("PING with a wrong password succeeded")
	}

	c := r.Client()
	ok, err := c.SetNX(ctx, "lock", "replica-1", 30*time.Second).Result()
	if err != nil || !ok {
		t.Fatalf("first SET NX PX: %v, %v; want it set", ok, err)
	}
	ok, err = r.Client().SetNX(ctx, "lock", "replica-2", 30*time.Second).Result()
	if err != nil || ok {
		t.Fatalf("second SET NX PX: %v, %v; want it refused", ok, err)
	}
	if v, err := c.Get(ctx, "lock").Result(); err != nil || v != "replica-1" {
		t.Fatalf("GET lock = %q, %v; want the first holder", v, err)
	}
	if ttl, err := c.PTTL(ctx, "lock").Result(); err != nil || ttl <= 0 || ttl > 30*time.Second {
		t.Fatalf("PTTL lock = %v, %v; want within (0, 30s]", ttl, err)
	}

	// The expiry is what frees a lock whose holder died.
	if err := c.SetNX(ctx, "short", "replica-1", 20*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	WaitFor(t, 10*time.Second, "short lock expires and can be taken again", func() bool {
		ok, err := c.SetNX(ctx, "short", "replica-2", time.Minute).Result()
		if err != nil {
			t.Fatalf("SET NX PX: %v", err)
		}
		return ok
	})
	if v, err := c.Get(ctx, "short").Result(); err != nil || v != "replica-2" {
		t.Fatalf("GET short = %q, %v; want the second holder", v, err)
	}
}

func TestRedisStopStart(t *testing.T) {
	r := StartRedis(t)
	c := r.Client()
	// The bound only catches a hang: a stopped server refuses connections,
	// and the client must say so rather than wait this long.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	addr := r.Addr

	r.Stop(t)
	began := time.Now()
	err := c.Get(ctx, "k").Err()
	t.Logf("GET while stopped failed after %v: %v", time.Since(began), err)
	if err == nil || errors.Is(err, redis.Nil) {
		t.Fatalf("GET while stopped: want a connection error, got %v", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("GET while stopped hung until the test's bound: %v", err)
	}
	fresh := r.Client()
	if err := fresh.Ping(ctx).Err(); err == nil {
		t.Fatal("PING from a new client while stopped succeeded")
	}

	r.Start(t)
	if r.Addr != addr {
		t.Fatalf("Addr changed across Stop/Start: %s, then %s", addr, r.Addr)
	}
	// The same client reconnects, to a server that kept nothing.
	if err := c.Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET after restart: want redis.Nil (empty server), got %v", err)
	}
	if ok, err := c.SetNX(ctx, "k", "again", time.Minute).Result(); err != nil || !ok {
		t.Fatalf("SET NX after restart: %v, %v", ok, err)
	}
	if err := fresh.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING from the new client after restart: %v", err)
	}

	// And again: Stop/Start is repeatable within a test.
	r.Stop(t)
	r.Start(t)
	if n, err := c.DBSize(ctx).Result(); err != nil || n != 0 {
		t.Fatalf("DBSIZE after a second restart = %d, %v; want an empty server", n, err)
	}
}
