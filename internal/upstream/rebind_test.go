package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingServer serves "ok" on ln and counts the connections it accepts.
func countingServer(t *testing.T, ln net.Listener) *atomic.Int64 {
	t.Helper()
	var conns atomic.Int64
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }),
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				conns.Add(1)
			}
		},
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return &conns
}

// samePortPair listens on 127.0.0.1 and 127.0.0.2 at one port, so a name
// resolving to either is dialed at the same host:port.
func samePortPair(t *testing.T) (allowed, internal net.Listener, port string) {
	t.Helper()
	for range 20 {
		in, err := net.Listen("tcp", "127.0.0.2:0")
		if err != nil {
			t.Fatalf("listen on 127.0.0.2: %v", err)
		}
		_, port, _ = net.SplitHostPort(in.Addr().String())
		al, err := net.Listen("tcp", "127.0.0.1:"+port)
		if err == nil {
			return al, in, port
		}
		in.Close()
	}
	t.Fatal("no port free on both 127.0.0.1 and 127.0.0.2")
	return nil, nil, ""
}

// DNS rebinding: a redirect target's name answers with an address the
// policy allows, then with an internal one (127.0.0.2 stands for the
// metadata service; allow_hops admits 127.0.0.1 only). The dialer must
// connect only to addresses that passed the policy, as resolved for that
// very dial: a check on one answer and a dial on the next would reach the
// internal server.
func TestDialerConnectsOnlyToAddressesThatPassed(t *testing.T) {
	allowedLn, internalLn, port := samePortPair(t)
	allowed, internal := countingServer(t, allowedLn), countingServer(t, internalLn)

	for _, c := range []struct {
		name    string
		answers [][]string // the resolver's answers, one per lookup; the last repeats
		want    []string   // per request: "ok", or a refusal reason
	}{
		{"allowed, then internal", [][]string{{"127.0.0.1"}, {"127.0.0.2"}}, []string{"ok", RefusedNotAllowed}},
		{"both, internal first", [][]string{{"127.0.0.2", "127.0.0.1"}}, []string{"ok", "ok"}},
		{"internal only", [][]string{{"127.0.0.2"}}, []string{RefusedNotAllowed}},
	} {
		t.Run(c.name, func(t *testing.T) {
			remote, _ := url.Parse("http://127.0.0.1:1")
			p := NewHopPolicy(remote, []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")})
			var mu sync.Mutex
			lookups := 0
			p.lookup = func(_ context.Context, _, host string) ([]netip.Addr, error) {
				if host != "rebind.test" {
					return nil, fmt.Errorf("unexpected lookup of %s", host)
				}
				mu.Lock()
				defer mu.Unlock()
				ans := c.answers[min(lookups, len(c.answers)-1)]
				lookups++
				var out []netip.Addr
				for _, a := range ans {
					out = append(out, netip.MustParseAddr(a))
				}
				return out, nil
			}
			tr, err := newTransport("", 2*time.Second, p)
			if err != nil {
				t.Fatal(err)
			}
			tr.Proxy = nil              // the environment's proxy would dial for us
			tr.DisableKeepAlives = true // every request dials, and so resolves, again
			before, internalBefore := allowed.Load(), internal.Load()
			for i, want := range c.want {
				req, _ := http.NewRequest(http.MethodGet, "http://rebind.test:"+port+"/blob", nil)
				resp, err := tr.RoundTrip(req)
				var hr *HopRefused
				switch {
				case err == nil:
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if want != "ok" || string(body) != "ok" {
						t.Errorf("request %d: answered %q, want %s", i+1, body, want)
					}
				case !errors.As(err, &hr):
					t.Errorf("request %d: %v, want %s", i+1, err, want)
				case hr.Reason != want:
					t.Errorf("request %d: refused (%s), want %s", i+1, hr.Reason, want)
				}
			}
			if n := internal.Load() - internalBefore; n != 0 {
				t.Errorf("the internal server accepted %d connections, want 0", n)
			}
			oks := 0
			for _, w := range c.want {
				if w == "ok" {
					oks++
				}
			}
			if n := allowed.Load() - before; n != int64(oks) {
				t.Errorf("the allowed server accepted %d connections, want %d", n, oks)
			}
		})
	}
}
