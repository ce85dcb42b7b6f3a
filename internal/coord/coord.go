// Package coord lets replicas that share one bucket work as one cache,
// through Redis and nothing else: a lease per blob being fetched, so the
// cluster fetches each blob from the upstream once; a lease for garbage
// collection, so one replica collects at a time; a lease per upstream's
// pins file, so replicas change it one at a time; the last pull of each
// manifest, so eviction ranks by the whole cluster's pulls; and, while a
// collection runs, the digests every replica relies on.
//
// Redis is an aid, never a dependency of a pull. Every call is bounded by a
// short timeout, and while Redis does not answer a background probe the
// calls fail at once (ErrUnavailable) instead of each waiting out that
// timeout: the caller then fills alone, which costs a duplicate upstream
// fetch, not a failed pull. A pin change is the one thing refused
// meanwhile: made alone it could overwrite another replica's.
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
	// started is the origin of lease times on the monotonic clock.
	started time.Time
	log     *slog.Logger

	up     atomic.Bool // read by every call; the rest of the probe's findings under mu
	change func(bool, error)

	mu        sync.Mutex
	lastErr   error     // why the last probe failed
	downSince time.Time // zero while Redis answers
	// gc is, per upstream a Claim asked about, what the last probe found
	// of its collection.
	gc map[string]*gcView

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
		started: time.Now(), gc: map[string]*gcView{},
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

// probe pings Redis and, while it answers, reads how the collection of
// each upstream this replica serves stands, and hands the collection the
// claims that could not be made meanwhile.
func (c *Coordinator) probe() {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	err := c.rdb.Ping(ctx).Err()
	if err == nil {
		// Every replica starts the epoch, so the cluster's first
		// collection waits a TTL from when the first replica came, not
		// from when the first collector asked.
		err = epochScript.Run(ctx, c.rdb, epochKeys(), c.ttl.Milliseconds()).Err()
	}
	if err == nil {
		err = c.readCollections(ctx)
	}
	if err != nil {
		c.unknownCollections()
	}
	c.mu.Lock()
	switch {
	case err == nil:
		c.downSince = time.Time{}
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
	if err == nil {
		c.flushClaims(ctx)
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
func keyPulls(upstream string) string  { return prefix + "pulls:" + upstream }
func keyGCDone(upstream string) string { return prefix + "gc-done:" + upstream }

// ErrLeaseLost is why a lease is no longer held: a renewal found another
// value (or none: Redis lost it), or none got through for a whole TTL, so
// another replica may hold it now.
var ErrLeaseLost = errors.New("lease lost")

// Lease is a held lease, renewed until Release or until it is lost.
type Lease struct {
	c    *Coordinator
	key  string
	val  string
	stop chan struct{}
	done chan struct{}
	once sync.Once

	lost     chan struct{} // closed when the lease is lost
	loseOnce sync.Once
	// renewed is when the last renewal that got through was sent, on
	// this process's monotonic clock: Redis keeps the key at least a TTL
	// after that, and not necessarily a moment longer.
	renewed atomic.Int64 // nanoseconds since c.started
}

var (
	renewScript   = redis.NewScript(`if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("pexpire", KEYS[1], ARGV[2]) else return 0 end`)
	releaseScript = redis.NewScript(`if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end`)
)

// acquire takes key for this replica if nobody holds it, else returns the
// holder's value.
func (c *Coordinator) acquire(ctx context.Context, key string) (*Lease, string, error) {
	val := c.leaseValue()
	sent := c.sinceStart()
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
	return c.newLease(key, val, sent), "", nil
}

// leaseValue is what a lease of this process holds: its peer address
// first, for the replicas that stream from the holder.
func (c *Coordinator) leaseValue() string {
	return c.self + "|" + c.id + "|" + strconv.FormatInt(time.Now().UnixNano(), 36)
}

// sinceStart reads the monotonic clock. It keeps running while the process
// is stopped (SIGSTOP, a cgroup freezer), so a holder that was paused sees
// on waking the time it lost, before it runs anything else.
func (c *Coordinator) sinceStart() time.Duration { return time.Since(c.started) }

// newLease starts renewing a lease set in Redis by a request sent at sent.
func (c *Coordinator) newLease(key, val string, sent time.Duration) *Lease {
	l := &Lease{c: c, key: key, val: val, stop: make(chan struct{}), done: make(chan struct{}), lost: make(chan struct{})}
	l.renewed.Store(int64(sent))
	go l.renew()
	return l
}

// Lost is closed once the lease is lost.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// Valid is nil while the lease is surely still held, by this process's
// clock alone: it is ErrLeaseLost once a TTL passed since the last
// renewal that got through, even if the renewing goroutine has not run
// since (the process was paused).
func (l *Lease) Valid() error {
	select {
	case <-l.lost:
		return ErrLeaseLost
	default:
	}
	if l.c.sinceStart()-time.Duration(l.renewed.Load()) >= l.c.ttl {
		l.lose("no renewal got through for a whole TTL")
		return ErrLeaseLost
	}
	return nil
}

func (l *Lease) lose(why string) {
	l.loseOnce.Do(func() {
		l.c.log.Warn("lease lost", "key", l.key, "why", why)
		close(l.lost)
	})
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
		if l.Valid() != nil {
			return
		}
		var n int64
		sent := l.c.sinceStart()
		err := l.c.call(context.Background(), func(ctx context.Context) error {
			var err error
			n, err = renewScript.Run(ctx, l.c.rdb, []string{l.key}, l.val, l.c.ttl.Milliseconds()).Int64()
			return err
		})
		switch {
		case err == nil && n == 0:
			// Expired and maybe taken, or Redis restarted empty.
			l.lose("the key no longer holds this lease")
			return
		case err == nil:
			l.renewed.Store(int64(sent))
		default:
			// A renewal that could not reach Redis is not a loss yet:
			// the key lives a TTL past the last renewal, and the next
			// may get through. Past that TTL it is (Valid).
			if l.Valid() != nil {
				return
			}
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

// Ping checks Redis now, for `config check --probe`.
func Ping(ctx context.Context, addr, password string, db int) error {
	_, err := Probe(ctx, Options{Addr: addr, Password: password, DB: db})
	return err
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
