package serve

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/mux"
	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/cache"
	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/coord"
	"github.com/multiproxy/multiproxy/internal/gc"
	"github.com/multiproxy/multiproxy/internal/metrics"
)

// cluster is this replica's part in a set of replicas sharing a bucket:
// its Redis handle and the peer listener serving its running fills.
type cluster struct {
	co    *coord.Coordinator
	peer  *http.Server
	peerL net.Listener
	// token is what peer requests carry and the peer port requires;
	// "" when coordination.peer_token_file is unset.
	token string
	// ups finds the running fills and local copies a peer asks for.
	ups *listeners
}

// startCluster connects to Redis and listens for peers. Redis being down
// is not an error: the replica serves alone until it answers.
func startCluster(cfg config.Config, log *slog.Logger, m *metrics.Metrics, ups *listeners) (*cluster, error) {
	c := cfg.Coordination
	l, err := net.Listen("tcp", c.PeerListen)
	if err != nil {
		return nil, fmt.Errorf("coordination.peer_listen: listen %s: %w", c.PeerListen, err)
	}
	self := c.Advertise
	if self == "" {
		towards := c.Redis.Addr
		if c.Redis.Sentinel.Enabled() {
			// The master moves on a failover; the Sentinels are on the
			// same network and stay put.
			towards = c.Redis.Sentinel.Addrs[0]
		}
		self, err = advertiseAddr(towards, l.Addr())
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("coordination.advertise: %w", err)
		}
	}
	cl := &cluster{peerL: l, token: c.PeerToken.Reveal(), ups: ups}
	cl.co = coord.New(coord.Options{
		Addr: c.Redis.Addr, Password: c.Redis.Password.Reveal(), DB: c.Redis.DB,
		Self: self, TTL: c.LeaseTTL, Logger: log.With("component", "coordination"),
		OnChange: func(up bool, _ error) {
			for _, u := range cfg.Upstreams {
				m.For(u.Name).CoordinationUp(up)
			}
		},
		SentinelMaster:   c.Redis.Sentinel.Master,
		SentinelAddrs:    c.Redis.Sentinel.Addrs,
		SentinelPassword: c.Redis.Sentinel.Password.Reveal(),
	})
	r := mux.NewRouter()
	r.Handle("/peer/v1/{upstream}/blobs/{digest}", http.HandlerFunc(cl.servePeer)).Methods(http.MethodGet)
	cl.peer = &http.Server{Handler: requireToken(cl.token, r), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	ups.serve("peer listener", cl.peer, l)
	log.Info("coordinating through redis", "advertise", self, "peer_listen", l.Addr().String(), "redis_up", cl.co.Up(),
		"peer_token", cl.token != "")
	return cl, nil
}

// stop closes the peer listener and the Redis connections; nothing
// without coordination.
func (cl *cluster) stop(ctx context.Context) {
	if cl == nil {
		return
	}
	_ = cl.peer.Shutdown(ctx)
	_ = cl.co.Close()
}

// coordDown is when the cluster's Redis stopped answering; zero while it
// answers or without coordination.
func (cl *cluster) coordDown() time.Time {
	if cl == nil {
		return time.Time{}
	}
	return cl.co.DownSince()
}

// advertiseAddr is the address of this host on the route to Redis, with
// the peer listener's port: the one the other replicas, which reach the
// same Redis, can most likely reach too.
func advertiseAddr(redisAddr string, peer net.Addr) (string, error) {
	_, port, err := net.SplitHostPort(peer.String())
	if err != nil {
		return "", err
	}
	conn, err := net.Dial("udp", redisAddr) // no packet is sent
	if err != nil {
		return "", fmt.Errorf("find this host's address towards redis: %w (set coordination.advertise)", err)
	}
	defer conn.Close()
	host, _, err := net.SplitHostPort(conn.LocalAddr().String())
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(host, port), nil
}

// requireToken refuses a peer request without the bearer token, when one
// is set. The scheme's name is matched in any case, as RFC 9110 says auth
// schemes are, so a proxy or client that writes "bearer" is not refused.
// The token's comparison takes the same time wherever the first wrong
// byte is, so it cannot be guessed byte by byte from answer times.
func requireToken(token string, next http.Handler) http.Handler {
	if token == "" {
		return next
	}
	want := []byte(token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, got, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		got = strings.TrimLeft(got, " ")
		if !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare([]byte(got), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="multiproxy peer"`)
			http.Error(w, "peer token required", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// servePeer gives another replica this replica's running fill or local
// copy of a blob. It never starts a fetch: the asking replica does that
// itself on a 404.
func (cl *cluster) servePeer(w http.ResponseWriter, r *http.Request) {
	vars := mux.Vars(r)
	d, err := digest.Parse(vars["digest"])
	if err != nil {
		http.Error(w, "invalid digest", http.StatusBadRequest)
		return
	}
	c, _, ok := cl.ups.cacheOf(vars["upstream"])
	if !ok {
		http.NotFound(w, r)
		return
	}
	b, err := c.PeerBlob(r.Context(), d)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	defer b.Close()
	w.Header().Set("Docker-Content-Digest", d.String())
	if b.File != nil {
		http.ServeContent(w, r, "", time.Time{}, b.File)
		return
	}
	status := http.StatusOK
	if n := b.Stream.Size(); n >= 0 {
		// A replica resuming a fill asks for the bytes it lacks
		// (bytes=N-); it checks the Content-Range, and anything else
		// gets the whole blob, which it skips through.
		if from, ok := openRange(r.Header.Get("Range"), n); ok && b.Stream.StartAt(from) {
			status = http.StatusPartialContent
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, n-1, n))
			n -= from
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	}
	w.WriteHeader(status)
	if _, err := io.Copy(w, b.Stream); err != nil {
		// Cut the connection: the peer must see a broken body, not a
		// short one (it verifies the digest either way).
		panic(http.ErrAbortHandler)
	}
}

// openRange parses the one kind of range a peer asks for, bytes=N- with N
// inside a blob of size bytes.
func openRange(h string, size int64) (int64, bool) {
	rest, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		return 0, false
	}
	first, ok := strings.CutSuffix(rest, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(first, 10, 64)
	return n, err == nil && n > 0 && n < size
}

// fillCoord is the cluster's fill lease service and pins lock for one
// upstream.
type fillCoord struct {
	co   *coord.Coordinator
	name string
}

func (f fillCoord) AcquireFill(ctx context.Context, d digest.Digest) (cache.Lease, cache.Holder, error) {
	fl, err := f.co.AcquireFill(ctx, f.name, d)
	if err != nil {
		return nil, cache.Holder{}, err
	}
	if fl.Lease != nil {
		return fl.Lease, cache.Holder{}, nil
	}
	return nil, cache.Holder{Peer: fl.Owner, Lease: fl.Holder, Earlier: fl.Earlier}, nil
}
func (f fillCoord) RevokeFill(ctx context.Context, d digest.Digest, h cache.Holder) (bool, error) {
	return f.co.RevokeFill(ctx, f.name, d, h.Lease)
}
func (f fillCoord) LockPins(ctx context.Context) (cache.PinsLock, error) {
	l, err := f.co.LockPins(ctx, f.name)
	if err != nil {
		return nil, err // not a nil *coord.Lease in a non-nil interface
	}
	return l, nil
}
func (f fillCoord) Self() string       { return f.co.Self() }
func (f fillCoord) TTL() time.Duration { return f.co.TTL() }

// clusterGuard tells this process's collector and, while one runs
// anywhere in the cluster, the cluster's, what the cache relies on.
type clusterGuard struct {
	local *gc.Guard
	co    *coord.Coordinator
	name  string
}

func (g clusterGuard) Use(ds ...digest.Digest) {
	g.local.Use(ds...)
	// Claim decides whether a collection may be running: unless Redis
	// said none is, the claim is made or kept for the next one.
	if err := g.co.Claim(context.Background(), g.name, ds...); err != nil {
		slog.Debug("claim for collection", "err", err)
	}
}

func (g clusterGuard) Hold() func() { return g.local.Hold() }

// gcCluster makes one upstream's collection the cluster's only one.
type gcCluster struct {
	co   *coord.Coordinator
	name string
	obs  *metrics.Upstream
	log  *slog.Logger
}

// Lead waits for the cluster's collection lease, then announces the
// collection under the lease's token and waits past every replica's next
// probe, so that all of them claim what they use before the scan starts.
func (g gcCluster) Lead(ctx context.Context) (gc.Leadership, error) {
	var lease *coord.GCLease
	// A Redis that is briefly away (a restart, a failover, a probe that
	// has not seen it back yet) delays the collection by up to a lease
	// TTL instead of failing it.
	patience := time.Now().Add(g.co.TTL())
	for {
		l, holder, err := g.co.AcquireGC(ctx, g.name)
		switch {
		case errors.Is(err, coord.ErrSettling):
			// Redis restarted empty or failed over: an old collector
			// may not have found its lease lost yet.
			g.log.Info("waiting one lease TTL after Redis lost its data", "why", err)
		case errors.Is(err, coord.ErrUnavailable) && time.Now().Before(patience):
			g.log.Info("waiting for coordination to come back", "why", err)
		case err != nil:
			return nil, fmt.Errorf("cluster collection lease: %w", err)
		case l != nil:
			lease = l
		default:
			g.log.Info("waiting for another replica's collection", "holder", holder)
		}
		if lease != nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
	if err := lease.Begin(ctx); err != nil {
		lease.Release()
		return nil, fmt.Errorf("announce collection: %w", err)
	}
	g.obs.GCLeader(true)
	g.log.Info("collecting for the cluster", "token", lease.Token())
	held, cancel := context.WithCancelCause(ctx)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(g.co.TTL())
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-lease.Lost():
				cancel(fmt.Errorf("collection lease (token %s): %w", lease.Token(), coord.ErrLeaseLost))
				return
			case <-t.C:
				_ = lease.Keep(context.Background())
			}
		}
	}()
	select {
	case <-time.After(2*coord.ProbeInterval() + 500*time.Millisecond):
	case <-held.Done():
	}
	return &gcLead{g: g, lease: lease, held: held, end: func() {
		close(stop)
		<-done
		cancel(context.Canceled)
		_ = lease.End(context.Background())
		g.obs.GCLeader(false)
		lease.Release()
	}}, nil
}

// gcLead is this replica's collection of one upstream for the cluster.
type gcLead struct {
	g     gcCluster
	lease *coord.GCLease
	held  context.Context
	end   func()
	once  sync.Once
}

func (l *gcLead) Context() context.Context { return l.held }
func (l *gcLead) Valid() error {
	if err := l.lease.Valid(); err != nil {
		return fmt.Errorf("collection lease (token %s): %w", l.lease.Token(), err)
	}
	return nil
}
func (l *gcLead) Check(ctx context.Context) error {
	if err := l.lease.Check(ctx); err != nil {
		return fmt.Errorf("collection lease (token %s): %w", l.lease.Token(), err)
	}
	return nil
}
func (l *gcLead) End() { l.once.Do(l.end) }

func (l *gcLead) Claimed(ctx context.Context, d digest.Digest) bool {
	ok, err := l.lease.Claimed(ctx, d)
	// Unsure means claimed: sparing a blob costs space, sweeping one in
	// use costs a pull.
	return ok || err != nil
}

func (g gcCluster) LastPulls(ctx context.Context) map[string]time.Time {
	m, err := g.co.LastPulls(ctx, g.name)
	if err != nil {
		g.log.Warn("cluster pull times unavailable; ranking by store times", "err", err)
	}
	return m
}

func (g gcCluster) CollectedSince(ctx context.Context, t time.Time) bool {
	last, err := g.co.LastCollected(ctx, g.name)
	return err == nil && last.After(t)
}

func (g gcCluster) Collected(ctx context.Context) {
	if err := g.co.SetCollected(ctx, g.name, time.Now()); err != nil {
		g.log.Warn("record the collection", "err", err)
	}
}

func (g gcCluster) ForgetPulls(ctx context.Context, keys []string) {
	if err := g.co.ForgetPulls(ctx, g.name, keys...); err != nil {
		g.log.Warn("forget pull times of evicted manifests", "err", err)
	}
}

// recordPull stores a pull time in Redis, off the request path.
func recordPull(co *coord.Coordinator, name string) func(repo string, d digest.Digest, t time.Time) {
	return func(repo string, d digest.Digest, t time.Time) {
		go func() { _ = co.RecordPull(context.Background(), name, repo, d, t) }()
	}
}
