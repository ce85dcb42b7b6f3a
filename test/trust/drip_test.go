package trust

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// drip sends the real answer's headers at once and its body a byte a
// second: an idle timer that restarts on every byte never fires.
func drip(w http.ResponseWriter, r *http.Request, next http.Handler) {
	rec := httptest.NewRecorder()
	next.ServeHTTP(rec, r)
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Length", strconv.Itoa(rec.Body.Len()))
	w.WriteHeader(rec.Code)
	fl := http.NewResponseController(w)
	for _, b := range rec.Body.Bytes() {
		if _, err := w.Write([]byte{b}); err != nil {
			return
		}
		_ = fl.Flush()
		select {
		case <-r.Context().Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// An upstream that drips a manifest, a tag list, referrers or a token answer holds the
// client no longer than twice the upstream timeout: small bodies have a
// deadline, not only an idle timer.
func TestDrippedAnswersHaveADeadline(t *testing.T) {
	const timeout = time.Second
	f := ts.NewFaults()
	up := ts.StartRegistry(t, ts.RegistryOptions{Wrap: f.Wrap})
	img := ts.PushImage(t, up, "team/app:v1", 1, 4096)
	manifest := ts.Digest(t, img)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "hub", Reg: up, Tweak: func(u *config.Upstream) { u.Timeout = timeout }})
	f.Add(ts.Rule{Method: "GET", Action: drip})

	// The bound: a 5xx within 2× the upstream timeout of the
	// request's start, plus a little for the proxy's own work. The
	// client's own timeout (30 s) only catches a hang.
	bound := 2*timeout + 500*time.Millisecond
	for what, url := range map[string]string{
		"manifest by digest": p.URL("hub") + "/v2/team/app/manifests/" + manifest,
		"manifest by tag":    p.URL("hub") + "/v2/team/app/manifests/v1",
		"tag list":           p.URL("hub") + "/v2/team/app/tags/list",
		// distribution has no referrers API: its 404 arrives dripped, so
		// the answer never arrives whole, and that is no proof the
		// upstream has no referrers API.
		"referrers": p.URL("hub") + "/v2/team/app/referrers/" + manifest,
	} {
		start := time.Now()
		code, body := get(t, url)
		took := time.Since(start)
		t.Logf("%s: %d after %v", what, code, took.Round(time.Millisecond))
		wantOCIError(t, what, code, body)
		if took > bound {
			t.Errorf("%s: answered after %v, want within 2× the %v upstream timeout", what, took.Round(time.Millisecond), timeout)
		}
	}
}

// A token service that drips its answer is bounded the same way.
func TestDrippedTokenHasADeadline(t *testing.T) {
	const timeout = time.Second
	f := ts.NewFaults()
	up := ts.StartRegistry(t, ts.RegistryOptions{Token: true, WrapTokens: f.Wrap})
	img := ts.PushImage(t, up, "team/app:v1", 1, 4096)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "hub", Reg: up, Tweak: func(u *config.Upstream) { u.Timeout = timeout }})
	f.Add(ts.Rule{Action: drip})

	start := time.Now()
	code, body := get(t, p.URL("hub")+"/v2/team/app/manifests/"+ts.Digest(t, img))
	took := time.Since(start)
	wantOCIError(t, "manifest behind a dripped token", code, body)
	t.Logf("%d after %v", code, took.Round(time.Millisecond))
	if took > 2*timeout+500*time.Millisecond {
		t.Errorf("answered after %v, want within 2× the %v upstream timeout", took.Round(time.Millisecond), timeout)
	}
}
