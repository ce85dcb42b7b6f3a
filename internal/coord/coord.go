// Package coord lets replicas that share one bucket work as one cache,
// through Redis and nothing else: a lease per blob being fetched, so the
// cluster fetches each blob from the upstream once; a lease for garbage
// collection, so one replica collects at a time; the last pull of each
// manifest, so eviction ranks by the whole cluster's pulls; and, while a
// collection runs, the digests every replica relies on.
//
// Redis is an aid, never a dependency of a pull. Every call is bounded by a
// short timeout, and while Redis does not answer a background probe the
// calls fail at once (ErrUnavailable) instead of each waiting out that
// timeout: the caller then fills alone, which costs a duplicate upstream
// fetch, not a failed pull.
package coord

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/redis/go-redis/v9"
)

// ErrUnavailable is returned while Redis does not answer.
var ErrUnavailable = errors.New("coordination unavailable")

// opTimeout bounds one Redis call: a replica never waits on coordination
// longer than a pull can afford to.
const opTimeout = 500 * time.Millisecond

// probeEvery is how often Redis is probed, up or down.
const probeEvery = time.Second

// Options configures a Coordinator.
type Options struct {
	Addr     string
	Password string
	DB       int
	// SentinelMaster, set instead of Addr, is the name Redis Sentinels
	// at SentinelAddrs monitor the master under: the client asks them
	// where the master is and follows a failover. SentinelPassword is the
	// Sentinels' own; Password stays the master's.
	SentinelMaster   string
	SentinelAddrs    []string
	SentinelPassword string
	// Self is the host:port other replicas reach this one's peer
	// endpoint at; it is what a fill lease names as its owner.
	Self string
	// TTL is how long a lease outlives its holder's last renewal.
	TTL    time.Duration
	Logger *slog.Logger
	// OnChange, if set, is told when Redis becomes reachable or not.
	OnChange func(up bool, err error)
}

// Coordinator is one replica's handle on the cluster's Redis.
type Coordinator struct {
	rdb  *redis.Client
	self string
	id   string // distinguishes this process's leases from a restarted one's
	ttl  time.Duration
	log  *slog.Logger

	up     atomic.Bool // read by every call; the rest of the probe's findings under mu
	change func(bool, error)

	mu        sync.Mutex
	lastErr   error     // why the last probe failed
	downSince time.Time // zero while Redis answers
	gcActive  string    // the upstream being collected in the cluster, as of the last probe

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

// New connects to Redis. It does not fail when Redis is down: the replica
// serves alone until it answers.
func New(o Options) *Coordinator {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	redisLog.Do(func() { redis.SetLogger(redisLogger{o.Logger}) })
	rdb := newClient(o, redis.Options{
		DialTimeout:  opTimeout,
		ReadTimeout:  opTimeout,
		WriteTimeout: opTimeout,
		PoolTimeout:  opTimeout,
		MaxRetries:   -1, // a retry would double the wait; the caller falls back instead
		// The client's own log line on each failed dial would repeat
		// what the probe already says once.
		DisableIdentity: true,
	})
	var b [8]byte
	_, _ = rand.Read(b[:])
	c := &Coordinator{rdb: rdb, self: o.Self, id: hex.EncodeToString(b[:]), ttl: o.TTL, log: o.Logger,
		change: o.OnChange, stop: make(chan struct{}), done: make(chan struct{}),
		lastErr: ErrUnavailable, downSince: time.Now()} // down until the first probe says otherwise
	c.probe()
	go c.run()
	return c
}

// Close stops the probe and lease renewals and closes the connections.
// Leases still held are not released: like a crash, they expire.
func (c *Coordinator) Close() error {
	var err error
	c.closeOnce.Do(func() {
		close(c.stop)
		<-c.done
		err = c.rdb.Close()
	})
	return err
}

// Self is this replica's peer address.
func (c *Coordinator) Self() string { return c.self }

// TTL is the lease lifetime.
func (c *Coordinator) TTL() time.Duration { return c.ttl }

// Up reports whether Redis answered the last probe.
func (c *Coordinator) Up() bool { return c.up.Load() }

// Err is why Redis is unavailable, or nil.
func (c *Coordinator) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.downSince.IsZero() {
		return nil
	}
	return c.lastErr
}

// DownSince is when Redis stopped answering (the start, if it never did),
// or zero while it answers.
func (c *Coordinator) DownSince() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.downSince
}

func (c *Coordinator) run() {
	defer close(c.done)
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			c.probe()
		}
	}
}

// probe pings Redis and, while it answers, reads which upstreams are
// being collected somewhere in the cluster.
func (c *Coordinator) probe() {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	err := c.rdb.Ping(ctx).Err()
	var active string
	if err == nil {
		// One key, since one collection runs at a time in the cluster.
		active, err = c.rdb.Get(ctx, keyGCActive()).Result()
		if errors.Is(err, redis.Nil) {
			active, err = "", nil
		}
	}
	c.mu.Lock()
	switch {
	case err == nil:
		c.gcActive, c.downSince = active, time.Time{}
	case c.downSince.IsZero():
		c.lastErr, c.downSince = err, time.Now()
	default:
		c.lastErr = err
	}
	c.mu.Unlock()
	was := c.up.Swap(err == nil)
	if was != (err == nil) {
		if err != nil {
			c.log.Warn("coordination unavailable: filling alone until Redis answers", "err", err)
		} else {
			c.log.Info("coordination available")
		}
		if c.change != nil {
			c.change(err == nil, err)
		}
	}
}

// call runs one Redis operation unless Redis is known to be down.
func (c *Coordinator) call(ctx context.Context, f func(ctx context.Context) error) error {
	if !c.Up() {
		return ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	defer cancel()
	err := f(ctx)
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return err
}

const prefix = "multiproxy:"

func keyFill(upstream string, d digest.Digest) string {
	return prefix + "fill:" + upstream + ":" + d.String()
}
func keyPulls(upstream string) string    { return prefix + "pulls:" + upstream }
func keyGC() string                      { return prefix + "gc" }
func keyGCActive() string                { return prefix + "gc-active" }
func keyGCClaims(upstream string) string { return prefix + "gc-claims:" + upstream }
func keyGCDone(upstream string) string   { return prefix + "gc-done:" + upstream }

// Lease is a held lease, renewed until Release or until a renewal finds
// it expired (its holder stalled past the TTL; another may hold it now).
type Lease struct {
	c    *Coordinator
	key  string
	val  string
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

var (
	renewScript   = redis.NewScript(`if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("pexpire", KEYS[1], ARGV[2]) else return 0 end`)
	releaseScript = redis.NewScript(`if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end`)
)

// acquire takes key for this replica if nobody holds it, else returns the
// holder's value.
func (c *Coordinator) acquire(ctx context.Context, key string) (*Lease, string, error) {
	val := c.self + "|" + c.id + "|" + strconv.FormatInt(time.Now().UnixNano(), 36)
	var ok bool
	var holder string
	err := c.call(ctx, func(ctx context.Context) error {
		var err error
		ok, err = c.rdb.SetNX(ctx, key, val, c.ttl).Result()
		if err != nil || ok {
			return err
		}
		holder, err = c.rdb.Get(ctx, key).Result()
		if errors.Is(err, redis.Nil) {
			holder, err = "", nil // released between the two calls: try again later
		}
		return err
	})
	if err != nil {
		return nil, "", err
	}
	if !ok {
		return nil, holder, nil
	}
	l := &Lease{c: c, key: key, val: val, stop: make(chan struct{}), done: make(chan struct{})}
	go l.renew()
	return l, "", nil
}

func (l *Lease) renew() {
	defer close(l.done)
	t := time.NewTicker(l.c.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-l.c.stop:
			return
		case <-t.C:
		}
		var n int64
		err := l.c.call(context.Background(), func(ctx context.Context) error {
			var err error
			n, err = renewScript.Run(ctx, l.c.rdb, []string{l.key}, l.val, l.c.ttl.Milliseconds()).Int64()
			return err
		})
		// A renewal that could not reach Redis is not a loss: the
		// lease is still ours until it expires, and the next renewal
		// may get through.
		if err == nil && n == 0 {
			return
		}
	}
}

// Release gives the lease up at once, so a waiter need not wait out its TTL.
func (l *Lease) Release() {
	l.once.Do(func() {
		close(l.stop)
		<-l.done
		_ = l.c.call(context.Background(), func(ctx context.Context) error {
			return releaseScript.Run(ctx, l.c.rdb, []string{l.key}, l.val).Err()
		})
	})
}

// FillLease is the outcome of asking for a blob's fill lease.
type FillLease struct {
	// Lease is set when this replica is to fetch the blob.
	Lease *Lease
	// Owner is the peer address of the replica fetching it, otherwise
	// ("" if the holder released it meanwhile).
	Owner string
}

// AcquireFill asks to be the replica that fetches d from the upstream.
func (c *Coordinator) AcquireFill(ctx context.Context, upstream string, d digest.Digest) (FillLease, error) {
	l, holder, err := c.acquire(ctx, keyFill(upstream, d))
	if err != nil {
		return FillLease{}, err
	}
	if l != nil {
		return FillLease{Lease: l}, nil
	}
	owner, _, _ := strings.Cut(holder, "|")
	return FillLease{Owner: owner}, nil
}

// RecordPull stores the last pull time of repo@d for the cluster's
// eviction. It is best effort: a lost record makes eviction less exact, not
// wrong.
func (c *Coordinator) RecordPull(ctx context.Context, upstream, repo string, d digest.Digest, t time.Time) error {
	return c.call(ctx, func(ctx context.Context) error {
		return c.rdb.HSet(ctx, keyPulls(upstream), repo+"@"+d.String(), t.Unix()).Err()
	})
}

// LastPulls returns the cluster's last pull of each "repo@digest" of an
// upstream.
func (c *Coordinator) LastPulls(ctx context.Context, upstream string) (map[string]time.Time, error) {
	var all map[string]string
	err := c.call(ctx, func(ctx context.Context) error {
		var err error
		all, err = c.rdb.HGetAll(ctx, keyPulls(upstream)).Result()
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make(map[string]time.Time, len(all))
	for k, v := range all {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			out[k] = time.Unix(n, 0)
		}
	}
	return out, nil
}

// ForgetPulls drops the pull records of evicted manifests.
func (c *Coordinator) ForgetPulls(ctx context.Context, upstream string, keys ...string) error {
	if len(keys) == 0 {
		return nil
	}
	return c.call(ctx, func(ctx context.Context) error {
		return c.rdb.HDel(ctx, keyPulls(upstream), keys...).Err()
	})
}

// AcquireGC asks to be the one replica collecting now, across every
// upstream of the cluster. It returns nil and the holder's address when
// another replica collects.
func (c *Coordinator) AcquireGC(ctx context.Context, upstream string) (*Lease, string, error) {
	l, holder, err := c.acquire(ctx, keyGC())
	if err != nil || l == nil {
		owner, _, _ := strings.Cut(holder, "|")
		return nil, owner, err
	}
	return l, "", nil
}

// BeginCollection tells every replica that upstream is being collected,
// so that they report what they rely on (Claim) until EndCollection. The
// flag expires with the lease TTL if the collector dies; renew calls it
// again.
func (c *Coordinator) BeginCollection(ctx context.Context, upstream string) error {
	return c.call(ctx, func(ctx context.Context) error {
		pipe := c.rdb.TxPipeline()
		pipe.Del(ctx, keyGCClaims(upstream))
		pipe.Set(ctx, keyGCActive(), upstream, 10*c.ttl)
		_, err := pipe.Exec(ctx)
		return err
	})
}

// EndCollection clears the flag and the claims.
func (c *Coordinator) EndCollection(ctx context.Context, upstream string) error {
	return c.call(ctx, func(ctx context.Context) error {
		return c.rdb.Del(ctx, keyGCActive(), keyGCClaims(upstream)).Err()
	})
}

// Collecting reports whether, as of the last probe, a collection of
// upstream runs somewhere in the cluster.
func (c *Coordinator) Collecting(upstream string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gcActive == upstream
}

// ProbeInterval is how stale Collecting may be: a collector waits longer
// than this after BeginCollection before it scans.
func ProbeInterval() time.Duration { return probeEvery }

// Claim records digests this replica relies on while upstream is being
// collected.
func (c *Coordinator) Claim(ctx context.Context, upstream string, ds ...digest.Digest) error {
	if len(ds) == 0 {
		return nil
	}
	members := make([]any, len(ds))
	for i, d := range ds {
		members[i] = d.String()
	}
	return c.call(ctx, func(ctx context.Context) error {
		return c.rdb.SAdd(ctx, keyGCClaims(upstream), members...).Err()
	})
}

// Claimed reports whether any replica claimed d during the collection.
func (c *Coordinator) Claimed(ctx context.Context, upstream string, d digest.Digest) (bool, error) {
	var ok bool
	err := c.call(ctx, func(ctx context.Context) error {
		var err error
		ok, err = c.rdb.SIsMember(ctx, keyGCClaims(upstream), d.String()).Result()
		return err
	})
	return ok, err
}

// redisLog routes go-redis's own log lines (a Sentinel naming a new master,
// a Sentinel that failed to answer) into the process's structured log
// instead of bare lines on stderr. go-redis has one logger per process: the
// first coordinator's sets it.
var redisLog sync.Once

type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	level := slog.LevelInfo
	if strings.Contains(msg, "failed") {
		level = slog.LevelWarn
	}
	l.log.Log(ctx, level, "redis client", "detail", msg)
}

// newClient builds the client of o's Redis with base's timeouts and
// retries: a plain one for Addr, or one that finds the master through
// Sentinel and, on a failover, drops its connections to the old master.
func newClient(o Options, base redis.Options) *redis.Client {
	if o.SentinelMaster == "" {
		base.Addr, base.Password, base.DB = o.Addr, o.Password, o.DB
		return redis.NewClient(&base)
	}
	return redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:       o.SentinelMaster,
		SentinelAddrs:    o.SentinelAddrs,
		SentinelPassword: o.SentinelPassword,
		Password:         o.Password,
		DB:               o.DB,
		DialTimeout:      base.DialTimeout,
		ReadTimeout:      base.ReadTimeout,
		WriteTimeout:     base.WriteTimeout,
		PoolTimeout:      base.PoolTimeout,
		MaxRetries:       base.MaxRetries,
		DisableIdentity:  base.DisableIdentity,
	})
}

// Ping checks Redis now, for `config check --probe`.
func Ping(ctx context.Context, addr, password string, db int) error {
	_, err := Probe(ctx, Options{Addr: addr, Password: password, DB: db})
	return err
}

// Probe checks o's Redis now, for `config check --probe`: it writes, reads
// back and deletes a key on the master (through Sentinel: the master the
// Sentinels name), and returns the master's address.
func Probe(ctx context.Context, o Options) (string, error) {
	where := "redis " + o.Addr
	master := o.Addr
	if o.SentinelMaster != "" {
		where = fmt.Sprintf("redis master %q via sentinels %s", o.SentinelMaster, strings.Join(o.SentinelAddrs, ","))
		// Asked first and alone, so that an unreachable Sentinel group or
		// an unknown master name is told apart from a master that fails.
		addr, err := sentinelMaster(ctx, o)
		if err != nil {
			return "", fmt.Errorf("%s: %w", where, err)
		}
		master = addr
	}
	rdb := newClient(o, redis.Options{DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second,
		WriteTimeout: 2 * time.Second, MaxRetries: -1, DisableIdentity: true})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	key := prefix + "probe:" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if err := rdb.Set(ctx, key, "1", 10*time.Second).Err(); err != nil {
		return "", fmt.Errorf("%s: write: %w", where, err)
	}
	if v, err := rdb.Get(ctx, key).Result(); err != nil || v != "1" {
		return "", fmt.Errorf("%s: read back %q: %w", where, v, err)
	}
	if err := rdb.Del(ctx, key).Err(); err != nil {
		return "", fmt.Errorf("%s: delete: %w", where, err)
	}
	return master, nil
}

// sentinelMaster asks each Sentinel in turn where the master is.
func sentinelMaster(ctx context.Context, o Options) (string, error) {
	errs := []error{errors.New("no sentinel address")}
	if len(o.SentinelAddrs) > 0 {
		errs = nil
	}
	for _, a := range o.SentinelAddrs {
		s := redis.NewSentinelClient(&redis.Options{Addr: a, Password: o.SentinelPassword,
			DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second, MaxRetries: -1, DisableIdentity: true})
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		hp, err := s.GetMasterAddrByName(actx, o.SentinelMaster).Result()
		cancel()
		s.Close()
		if err == nil && len(hp) == 2 {
			return net.JoinHostPort(hp[0], hp[1]), nil
		}
		if errors.Is(err, redis.Nil) {
			err = errors.New("monitors no master by that name")
		}
		errs = append(errs, fmt.Errorf("sentinel %s: %w", a, err))
	}
	return "", errors.Join(errs...)
}

// KeepCollecting extends the collection flag while a long collection runs.
func (c *Coordinator) KeepCollecting(ctx context.Context) error {
	return c.call(ctx, func(ctx context.Context) error {
		return c.rdb.Expire(ctx, keyGCActive(), 10*c.ttl).Err()
	})
}

// SetCollected records that a collection of upstream finished at t.
func (c *Coordinator) SetCollected(ctx context.Context, upstream string, t time.Time) error {
	return c.call(ctx, func(ctx context.Context) error {
		return c.rdb.Set(ctx, keyGCDone(upstream), t.UnixNano(), 0).Err()
	})
}

// LastCollected is when the last collection of upstream finished, or zero.
func (c *Coordinator) LastCollected(ctx context.Context, upstream string) (time.Time, error) {
	var n int64
	err := c.call(ctx, func(ctx context.Context) error {
		var err error
		n, err = c.rdb.Get(ctx, keyGCDone(upstream)).Int64()
		return err
	})
	if errors.Is(err, redis.Nil) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, err
	}
	return time.Unix(0, n), nil
}
