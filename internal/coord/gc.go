package coord

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/redis/go-redis/v9"
)

// A collection of a shared bucket is fenced: the GC lease carries a token,
// a number Redis hands out once (INCR); the collection announces itself
// under that token (gc-active:<upstream>), replicas claim what they serve
// into that token's set, and the collector checks, before each batch of
// deletions, that the lease and the announcement still hold its token. A
// collector that lost its lease (a pause past the TTL, a Redis that
// restarted empty or failed over) finds out before it deletes again, and a
// new collection's claims are never mixed with an old one's.

func keyGC() string                      { return prefix + "gc" }
func keyGCToken() string                 { return prefix + "gc-token" }
func keyEpoch() string                   { return prefix + "epoch" }
func keyGCActive(upstream string) string { return prefix + "gc-active:" + upstream }
func claimsPrefix(upstream string) string {
	return prefix + "gc-claims:" + upstream + ":"
}
func epochKeys() []string { return []string{keyEpoch(), keyGCToken()} }

// idle is what gc-active holds once a collection ended: the one value that
// tells a replica that no collection runs. A missing key tells it nothing
// (Redis may have lost it), so it claims.
const idle = "idle"

// ErrSettling is returned by AcquireGC while Redis has held its data for
// less than a TTL: it restarted empty, failed over, or is new. A lease the
// old data held may still be used by a collector that has not yet found it
// lost, and replicas have not yet handed over what they served meanwhile.
var ErrSettling = errors.New("coordination data is younger than one lease TTL")

// epochLua starts the epoch of Redis's data (when the key is missing: new,
// restarted empty, or failed over to a replica that had not got it) and
// returns its age in milliseconds, by Redis's clock. On a new epoch the
// token counter jumps to the current time in milliseconds, so tokens stay
// increasing across a loss of the data.
const epochLua = `
local function epoch_age(epochKey, tokenKey)
  local t = redis.call("TIME")
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local e = redis.call("GET", epochKey)
  if not e then
    redis.call("SET", epochKey, now)
    local cur = tonumber(redis.call("GET", tokenKey) or "0")
    if cur < now then redis.call("SET", tokenKey, now) end
    return 0
  end
  return now - tonumber(e)
end
`

var (
	epochScript = redis.NewScript(epochLua + `return epoch_age(KEYS[1], KEYS[2])`)
	// KEYS: gc, token, epoch. ARGV: lease value, TTL in ms.
	acquireGCScript = redis.NewScript(epochLua + `
local age = epoch_age(KEYS[3], KEYS[2])
if age < tonumber(ARGV[2]) then return {-1, tostring(tonumber(ARGV[2]) - age)} end
local holder = redis.call("GET", KEYS[1])
if holder then return {0, holder} end
local token = redis.call("INCR", KEYS[2])
local val = ARGV[1] .. "|" .. token
redis.call("SET", KEYS[1], val, "PX", ARGV[2])
return {1, val}`)
	// KEYS: gc, active. ARGV: lease value, token, PX.
	beginScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) ~= ARGV[1] then return 0 end
redis.call("SET", KEYS[2], ARGV[2], "PX", ARGV[3])
return 1`)
	// KEYS: gc, active. ARGV: lease value, token.
	checkScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call("GET", KEYS[2]) ~= ARGV[2] then return 0 end
return 1`)
	// KEYS: active, claims. ARGV: token, PX.
	keepScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) ~= ARGV[1] then return 0 end
redis.call("PEXPIRE", KEYS[1], ARGV[2])
redis.call("PEXPIRE", KEYS[2], ARGV[2])
return 1`)
	// KEYS: active, claims. ARGV: token.
	endScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then redis.call("SET", KEYS[1], "idle") end
redis.call("DEL", KEYS[2])
return 1`)
	// Claims go into the set of whichever collection is announced when
	// Redis runs the script, so a replica's stale view of the token never
	// puts a claim where the collector does not look. KEYS: active.
	// ARGV: claims key prefix, PX, digests... It returns the token, "idle",
	// or "" when nothing is announced.
	claimScript = redis.NewScript(`
local cur = redis.call("GET", KEYS[1])
if not cur then return "" end
if cur == "idle" then return cur end
local k = ARGV[1] .. cur
for i = 3, #ARGV do redis.call("SADD", k, ARGV[i]) end
redis.call("PEXPIRE", k, ARGV[2])
return cur`)
)

// GCLease is the cluster's collection lease, with its fencing token.
type GCLease struct {
	*Lease
	upstream string
	token    string
}

// Token is the lease's fencing token.
func (l *GCLease) Token() string { return l.token }

// AcquireGC asks to be the one replica collecting now, across every
// upstream of the cluster. It returns nil and the holder's address when
// another replica collects, and ErrSettling while Redis's data is younger
// than a TTL.
func (c *Coordinator) AcquireGC(ctx context.Context, upstream string) (*GCLease, string, error) {
	val := c.leaseValue()
	sent := c.sinceStart()
	var res []any
	err := c.call(ctx, func(ctx context.Context) error {
		var err error
		res, err = acquireGCScript.Run(ctx, c.rdb, []string{keyGC(), keyGCToken(), keyEpoch()}, val, c.ttl.Milliseconds()).Slice()
		return err
	})
	if err != nil {
		return nil, "", err
	}
	if len(res) != 2 {
		return nil, "", fmt.Errorf("gc lease: unexpected reply %v", res)
	}
	code, _ := res[0].(int64)
	s, _ := res[1].(string)
	switch code {
	case -1:
		ms, _ := strconv.ParseInt(s, 10, 64)
		return nil, "", fmt.Errorf("%w: %s to go", ErrSettling, time.Duration(ms)*time.Millisecond)
	case 0:
		owner, _, _ := strings.Cut(s, "|")
		return nil, owner, nil
	}
	token := s[strings.LastIndex(s, "|")+1:]
	return &GCLease{Lease: c.newLease(keyGC(), s, sent), upstream: upstream, token: token}, "", nil
}

// Begin tells every replica that the upstream is being collected under
// this lease's token, so that they claim what they rely on into its set
// until End. The announcement expires if the collector dies; Keep extends
// it.
func (l *GCLease) Begin(ctx context.Context) error {
	var n int64
	err := l.c.call(ctx, func(ctx context.Context) error {
		var err error
		n, err = beginScript.Run(ctx, l.c.rdb, []string{keyGC(), keyGCActive(l.upstream)}, l.val, l.token, (10 * l.c.ttl).Milliseconds()).Int64()
		return err
	})
	if err == nil && n == 0 {
		return ErrLeaseLost
	}
	return err
}

// Check asks Redis whether this collection still holds the lease and the
// announcement, with its token: nil means no other collection started.
// The collector calls it before each batch of deletions.
func (l *GCLease) Check(ctx context.Context) error {
	if err := l.Valid(); err != nil {
		return err
	}
	var n int64
	err := l.c.call(ctx, func(ctx context.Context) error {
		var err error
		n, err = checkScript.Run(ctx, l.c.rdb, []string{keyGC(), keyGCActive(l.upstream)}, l.val, l.token).Int64()
		return err
	})
	if err != nil {
		return fmt.Errorf("check the gc lease: %w", err)
	}
	if n == 0 {
		l.lose("another collection holds the lease or the announcement")
		return ErrLeaseLost
	}
	return nil
}

// Keep extends the announcement and the claims while a long collection
// runs.
func (l *GCLease) Keep(ctx context.Context) error {
	return l.c.call(ctx, func(ctx context.Context) error {
		return keepScript.Run(ctx, l.c.rdb, []string{keyGCActive(l.upstream), claimsPrefix(l.upstream) + l.token}, l.token, (10 * l.c.ttl).Milliseconds()).Err()
	})
}

// End marks the upstream as not being collected, unless a newer collection
// announced itself meanwhile, and drops this collection's claims.
func (l *GCLease) End(ctx context.Context) error {
	return l.c.call(ctx, func(ctx context.Context) error {
		return endScript.Run(ctx, l.c.rdb, []string{keyGCActive(l.upstream), claimsPrefix(l.upstream) + l.token}, l.token).Err()
	})
}

// Claimed reports whether any replica claimed d during this collection.
func (l *GCLease) Claimed(ctx context.Context, d digest.Digest) (bool, error) {
	var ok bool
	err := l.c.call(ctx, func(ctx context.Context) error {
		var err error
		ok, err = l.c.rdb.SIsMember(ctx, claimsPrefix(l.upstream)+l.token, d.String()).Result()
		return err
	})
	return ok, err
}

// gcView is what a replica knows of an upstream's collection.
type gcView struct {
	state   string // idle, a token, or "" (unknown: Redis down or the key missing)
	pending map[digest.Digest]struct{}
	full    bool // pending reached maxPending; logged once
}

// maxPending bounds the claims a replica keeps for a collection it cannot
// reach: about 100 bytes each.
const maxPending = 1 << 16

func (c *Coordinator) view(upstream string) *gcView {
	v := c.gc[upstream]
	if v == nil {
		v = &gcView{pending: map[digest.Digest]struct{}{}}
		c.gc[upstream] = v
	}
	return v
}

// Claim records digests this replica relies on, for a collection of
// upstream. The safe direction is to claim: only when Redis said, at the
// last probe, that no collection runs (gc-active is "idle") is nothing
// recorded. When a collection is announced the claim goes into its set at
// once. When Redis is down, the announcement is missing (Redis may have
// lost it), or the claim fails, the digests are kept here and handed to
// the next collection the probe finds announced, which waits past a probe
// before it scans.
func (c *Coordinator) Claim(ctx context.Context, upstream string, ds ...digest.Digest) error {
	if len(ds) == 0 {
		return nil
	}
	c.mu.Lock()
	v := c.view(upstream)
	state := v.state
	if state == "" {
		c.remember(upstream, v, ds)
	}
	c.mu.Unlock()
	if state == "" || state == idle {
		return nil
	}
	cur, err := c.claim(ctx, upstream, ds)
	if err != nil || cur == "" {
		c.mu.Lock()
		c.remember(upstream, c.view(upstream), ds)
		c.mu.Unlock()
	}
	if err != nil {
		return fmt.Errorf("claim for the collection of %s: %w", upstream, err)
	}
	return nil
}

func (c *Coordinator) claim(ctx context.Context, upstream string, ds []digest.Digest) (string, error) {
	args := make([]any, 0, 2+len(ds))
	args = append(args, claimsPrefix(upstream), (10 * c.ttl).Milliseconds())
	for _, d := range ds {
		args = append(args, d.String())
	}
	var cur string
	err := c.call(ctx, func(ctx context.Context) error {
		var err error
		cur, err = claimScript.Run(ctx, c.rdb, []string{keyGCActive(upstream)}, args...).Text()
		return err
	})
	return cur, err
}

// remember keeps ds for the next announced collection; c.mu is held.
func (c *Coordinator) remember(upstream string, v *gcView, ds []digest.Digest) {
	for _, d := range ds {
		if len(v.pending) >= maxPending {
			if !v.full {
				v.full = true
				c.log.Warn("too many claims waiting for Redis; a collection may not see some of what this replica served",
					"upstream", upstream, "kept", maxPending)
			}
			return
		}
		v.pending[d] = struct{}{}
	}
}

// readCollections reads the announcement of every upstream Claim was
// asked about.
func (c *Coordinator) readCollections(ctx context.Context) error {
	c.mu.Lock()
	ups := make([]string, 0, len(c.gc))
	for u := range c.gc {
		ups = append(ups, u)
	}
	c.mu.Unlock()
	if len(ups) == 0 {
		return nil
	}
	keys := make([]string, len(ups))
	for i, u := range ups {
		keys[i] = keyGCActive(u)
	}
	vals, err := c.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, u := range ups {
		s, _ := vals[i].(string)
		v := c.view(u)
		v.state = s
		if s == idle {
			clear(v.pending)
			v.full = false
		}
	}
	return nil
}

func (c *Coordinator) unknownCollections() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, v := range c.gc {
		v.state = ""
	}
}

// flushClaims hands what was kept to the collections now announced.
func (c *Coordinator) flushClaims(ctx context.Context) {
	type batch struct {
		upstream string
		ds       []digest.Digest
	}
	var todo []batch
	c.mu.Lock()
	for u, v := range c.gc {
		if v.state == "" || v.state == idle || len(v.pending) == 0 {
			continue
		}
		b := batch{upstream: u}
		for d := range v.pending {
			b.ds = append(b.ds, d)
		}
		todo = append(todo, b)
	}
	c.mu.Unlock()
	for _, b := range todo {
		cur, err := c.claim(ctx, b.upstream, b.ds)
		if err != nil || cur == "" {
			continue // kept for the next probe
		}
		c.mu.Lock()
		v := c.view(b.upstream)
		for _, d := range b.ds {
			delete(v.pending, d)
		}
		v.full = false
		c.mu.Unlock()
		c.log.Info("handed claims kept while the collection was out of reach", "upstream", b.upstream, "count", len(b.ds))
	}
}

// Pending is how many digests this replica keeps for the next collection
// of upstream it can reach.
func (c *Coordinator) Pending(upstream string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.view(upstream).pending)
}

// ProbeInterval is how stale a replica's view of a collection may be: a
// collector waits longer than this after Begin before it scans.
func ProbeInterval() time.Duration { return probeEvery }
