package trust

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// redirectTo answers with a 302 to u, as a CDN, an object store or a
// misconfigured balancer in front of a registry may.
func redirectTo(u string) ts.Action {
	return func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
		http.Redirect(w, r, u, http.StatusFound)
	}
}

// challenge answers 401 with a WWW-Authenticate header of its own.
func challenge(value string) ts.Action {
	return func(w http.ResponseWriter, _ *http.Request, _ http.Handler) {
		w.Header().Set("WWW-Authenticate", value)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
	}
}

// An upstream whose tags, referrers, manifests, blobs and token realm all
// send the cache to a "metadata" server: with allow_hops naming only the
// registry's own address, that server sees no connection at all, the
// client gets the OCI error JSON of an unreachable upstream, and each
// refusal is counted.
func TestRedirectToAnInternalAddressIsNeverDialed(t *testing.T) {
	meta := startSink(t, "127.0.0.2:0")
	creds := meta.URL + "/latest/meta-data/iam/security-credentials/role?X-Amz-Signature=SECRETSIG"

	f := ts.NewFaults()
	up := ts.StartRegistry(t, ts.RegistryOptions{Wrap: f.Wrap})
	img := ts.PushImage(t, up, "team/app:v1", 1, 4096)
	manifest := ts.Digest(t, img)
	layer := ts.LayerDigests(t, img)[0]

	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "hub", Reg: up, Tweak: func(u *config.Upstream) {
		u.AllowHops = []string{"127.0.0.1/32"}
	}})
	base := p.URL("hub") + "/v2/team/app"
	f.Add(ts.Rule{Method: "GET", PathContains: "/tags/list", Action: redirectTo(creds)})
	f.Add(ts.Rule{Method: "GET", PathContains: "/referrers/", Action: redirectTo(creds)})
	f.Add(ts.Rule{Method: "GET", PathContains: "/manifests/" + manifest, Action: redirectTo(creds)})
	f.Add(ts.Rule{Method: "GET", PathContains: "/blobs/" + layer, Action: redirectTo(creds)})
	// A token realm is a hop too: a challenge naming the metadata server.
	f.Add(ts.Rule{PathContains: "/other/app/", Action: challenge(`Bearer realm="` + creds + `",service="x"`)})

	for what, url := range map[string]string{
		"tag list":    base + "/tags/list",
		"referrers":   base + "/referrers/" + manifest,
		"manifest":    base + "/manifests/" + manifest,
		"blob":        base + "/blobs/" + layer,
		"token realm": p.URL("hub") + "/v2/other/app/manifests/" + manifest,
	} {
		code, body := get(t, url)
		wantOCIError(t, what, code, body)
	}
	if n := meta.conns.Load(); n != 0 {
		t.Errorf("the metadata server accepted %d connections, want 0", n)
	}
	if n := p.Metric(t, "multiproxy_upstream_refused_total", map[string]string{"upstream": "hub", "reason": "not_allowed"}); n < 5 {
		t.Errorf("multiproxy_upstream_refused_total{reason=not_allowed} = %v, want at least 5", n)
	}
	logs := p.Logs()
	if !strings.Contains(logs, "upstream hop refused") {
		t.Errorf("no refusal logged:\n%s", logs)
	}
	if strings.Contains(logs, "SECRETSIG") || strings.Contains(logs, "meta-data") {
		t.Errorf("a refused hop's URL reached the log:\n%s", logs)
	}

	// The same image through the registry itself still pulls: only the
	// stranger's hops are refused.
	f.Reset()
	if code, _ := get(t, base+"/blobs/"+layer); code != http.StatusOK {
		t.Errorf("blob after the redirects stopped: status %d, want 200", code)
	}
}

// Redirects whose Location carries a presigned signature and fails in
// three ways: it does not parse at all (url.Parse refuses the host), it
// parses but names a port no dialer takes, and its CDN hop cannot be
// reached. Neither a log line (the access log included) nor the client's
// error body holds the signature.
func TestNoSignatureInLogs(t *testing.T) {
	f := ts.NewFaults()
	up := ts.StartRegistry(t, ts.RegistryOptions{Wrap: f.Wrap})
	img := ts.PushImage(t, up, "team/app:v1", 3, 4096)
	layers := ts.LayerDigests(t, img)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "hub", Reg: up})

	const unparsable = "http://[::1%zz/?X-Amz-Signature=SECRETSIG"
	//lint:ignore SA1007 the case is a URL that does not parse, checked here
	if _, err := url.Parse(unparsable); err == nil {
		t.Fatalf("url.Parse(%q) succeeded: the case would not be unparsable", unparsable)
	}
	dead := ts.FreeAddr(t) // nothing listens there
	locations := map[string]string{
		layers[0]: unparsable,
		layers[1]: "http://127.0.0.1:99999999/blob?X-Amz-Signature=SECRETSIG",
		layers[2]: "http://" + dead + "/blob?X-Amz-Signature=SECRETSIG",
	}
	for l, loc := range locations {
		f.Add(ts.Rule{Method: "GET", PathContains: "/blobs/" + l, Action: redirectTo(loc)})
	}
	// The registry really sends the unparsable Location as written:
	// net/http's server neither refuses nor rewrites it.
	// (A transport's round trip: http.Client refuses to read such a
	// Location even when told not to follow it.)
	req, err := http.NewRequest(http.MethodGet, up.URL()+"/v2/team/app/blobs/"+layers[0], nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Transport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("Location"); got != unparsable {
		t.Fatalf("the registry sent Location %q, want %q", got, unparsable)
	}

	for l, loc := range locations {
		code, body := get(t, p.URL("hub")+"/v2/team/app/blobs/"+l)
		if code < 500 || strings.Contains(body, "SECRETSIG") {
			t.Errorf("redirect to %q: status %d body %q; want a 5xx without the signature", loc, code, body)
		}
	}
	logs := p.Logs()
	for l, loc := range locations {
		// The access log line of that request exists, says why it failed,
		// and names no signature.
		var line string
		for ln := range strings.Lines(logs) {
			if strings.Contains(ln, "msg=request") && strings.Contains(ln, l) {
				line = ln
			}
		}
		if line == "" || !strings.Contains(line, "cause=") {
			t.Errorf("redirect to %q: no access log line with its cause:\n%s", loc, logs)
		}
	}
	for ln := range strings.Lines(logs) {
		if strings.Contains(ln, "SECRETSIG") {
			t.Errorf("a presigned signature reached the log: %s", ln)
		}
	}
}

// An https upstream with a password that redirects to plain http on the
// same host: the plain listener is never contacted, so it sees no
// Authorization, and the pull fails cleanly. A token realm on plain http is
// refused the same way: the password never crosses in clear.
func TestHTTPSNeverDowngrades(t *testing.T) {
	plain := startSink(t, "127.0.0.1:0")
	plainURL := strings.Replace(plain.URL, "127.0.0.1", "localhost", 1)

	f := ts.NewFaults()
	up := ts.StartRegistry(t, ts.RegistryOptions{TLS: true, Username: "puller", Password: "s3cret", Wrap: f.Wrap})
	img := ts.PushImage(t, up, "team/app:v1", 1, 4096)
	manifest := ts.Digest(t, img)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "hub", Reg: up, URL: strings.Replace(up.URL(), "127.0.0.1", "localhost", 1)})

	// First a pull that works, so the upstream's credentials are cached
	// for the https origin.
	if code, body := get(t, p.URL("hub")+"/v2/team/app/manifests/v1"); code != http.StatusOK {
		t.Fatalf("pull through the https upstream: %d %s", code, body)
	}
	f.Add(ts.Rule{Method: "GET", PathContains: "/blobs/", Action: redirectTo(plainURL + "/blob")})
	f.Add(ts.Rule{PathContains: "/other/", Action: challenge(`Bearer realm="` + plainURL + `/token",service="x"`)})

	code, body := get(t, p.URL("hub")+"/v2/team/app/blobs/"+ts.LayerDigests(t, img)[0])
	wantOCIError(t, "blob redirected to http", code, body)
	code, body = get(t, p.URL("hub")+"/v2/other/app/manifests/"+manifest)
	wantOCIError(t, "token realm on http", code, body)

	if n := plain.conns.Load(); n != 0 {
		t.Errorf("the plain-http listener was contacted %d times (Authorization seen: %q)", n, plain.authorizations())
	}
	if n := p.Metric(t, "multiproxy_upstream_refused_total", map[string]string{"upstream": "hub", "reason": "downgrade"}); n < 2 {
		t.Errorf("multiproxy_upstream_refused_total{reason=downgrade} = %v, want at least 2", n)
	}
	if logs := p.Logs(); strings.Contains(logs, "s3cret") {
		t.Errorf("the upstream password reached the log")
	}
}

// A challenge of megabytes costs the client one quick error, not a parse
// that outlasts every timeout: the header is refused by size before it is
// read whole (10 MiB), and a challenge past 8 KiB is refused unparsed.
func TestHugeChallengeIsRefused(t *testing.T) {
	f := ts.NewFaults()
	up := ts.StartRegistry(t, ts.RegistryOptions{Wrap: f.Wrap})
	img := ts.PushImage(t, up, "team/app:v1", 1, 4096)
	manifest := ts.Digest(t, img)
	const timeout = time.Second
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "hub", Reg: up, Tweak: func(u *config.Upstream) { u.Timeout = timeout }})

	for _, size := range []int{10 << 20, 64 << 10} {
		f.Reset()
		f.Add(ts.Rule{PathContains: "/manifests/", Action: challenge(
			`Bearer realm="http://localhost/token",scope="` + strings.Repeat("a,", size/2) + `"`)})
		start := time.Now()
		code, body := get(t, p.URL("hub")+"/v2/team/app/manifests/"+manifest)
		took := time.Since(start)
		t.Logf("%d-byte challenge: %d after %v", size, code, took.Round(time.Millisecond))
		wantOCIError(t, fmt.Sprintf("%d-byte challenge", size), code, body)
		// Refused within the upstream timeout, plus a second for sending
		// 10 MiB over loopback under -race: the client's own 30 s only
		// catches a hang.
		if took > timeout+time.Second {
			t.Errorf("%d-byte challenge: answered after %v, want within the %v upstream timeout", size, took.Round(time.Millisecond), timeout)
		}
	}
	f.Reset()
	if code, _ := get(t, p.URL("hub")+"/v2/team/app/manifests/"+manifest); code != http.StatusOK {
		t.Errorf("manifest once the challenges stopped: status %d, want 200", code)
	}
}
