package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
	"github.com/multiproxy/multiproxy/internal/upstream"
)

// curlPost POSTs to url with curl, with extra "Name: value" headers, and
// returns the status and JSON answer. Without curl, net/http sends the
// same request.
func curlPost(t *testing.T, url string, headers ...string) (int, map[string]any) {
	t.Helper()
	var code int
	var raw []byte
	if bin, err := exec.LookPath("curl"); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// --noproxy: a proxy from the environment must not see, or
		// rewrite, these requests.
		args := []string{"-sS", "--noproxy", "*", "-X", "POST", "-o", "-", "-w", "\n%{http_code}"}
		for _, h := range headers {
			args = append(args, "-H", h)
		}
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, bin, append(args, url)...)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("curl %v: %v\n%s", args, err, stderr.String())
		}
		i := bytes.LastIndexByte(out, '\n')
		if code, err = strconv.Atoi(string(out[i+1:])); err != nil {
			t.Fatalf("curl %v: no status in %q", args, out)
		}
		raw = out[:i]
	} else {
		req, err := http.NewRequest(http.MethodPost, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range headers {
			k, v, _ := strings.Cut(h, ":")
			if v = strings.TrimSpace(v); strings.EqualFold(k, "Host") {
				req.Host = v
			} else {
				req.Header.Add(k, v)
			}
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("POST %s: %v", url, err)
		}
		defer resp.Body.Close()
		var buf bytes.Buffer
		if _, err := buf.ReadFrom(resp.Body); err != nil {
			t.Fatalf("POST %s: read: %v", url, err)
		}
		code, raw = resp.StatusCode, buf.Bytes()
	}
	var body map[string]any
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatalf("POST %s %v: %d %q is not JSON: %v", url, headers, code, raw, err)
	}
	return code, body
}

// With the default config (admin on loopback, no token), what a browser
// sends for a page on another site is refused, while curl still purges.
func TestTokenlessAdminRefusesWebPages(t *testing.T) {
	reg := ts.StartRegistry(t, ts.RegistryOptions{})
	ts.PushImage(t, reg, "library/app:1", 1, 1024)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: reg})

	accept := strings.Join(upstream.ManifestAccept, ", ")
	manifest := p.URL("docker.io") + "/v2/library/app/manifests/1"
	fetch(t, manifest, accept) // cached now
	// With the upstream gone, the tag is served only while it is cached:
	// that is how this test sees whether a purge ran.
	reg.Stop()

	admin := p.AdminURL() + "/api/v1"
	purge := admin + "/purge?image=docker.io/library/app:1"
	recycle := admin + "/recycle?upstream=docker.io"
	_, port, _ := strings.Cut(p.Process.AdminAddr(), ":")
	attacks := []struct {
		name    string
		headers []string
	}{
		{"a fetch from a page on evil.example", []string{"Origin: http://evil.example", "Sec-Fetch-Site: cross-site"}},
		{"Sec-Fetch-Site cross-site alone", []string{"Sec-Fetch-Site: cross-site"}},
		{"a foreign Origin alone", []string{"Origin: http://evil.example"}},
		{"DNS rebinding", []string{"Host: evil.example:" + port, "Origin: http://evil.example:" + port, "Sec-Fetch-Site: same-origin"}},
	}
	for _, a := range attacks {
		for _, url := range []string{purge, recycle} {
			code, body := curlPost(t, url, a.headers...)
			if code != http.StatusForbidden {
				t.Errorf("%s: POST %s: %d %v, want 403", a.name, url, code, body)
			}
			if msg, _ := body["error"].(string); msg == "" {
				t.Errorf("%s: POST %s: no JSON error in %v", a.name, url, body)
			}
		}
	}

	// Nothing ran, and the log says what was refused and why.
	fetch(t, manifest, accept)
	if n := p.Metric(t, "multiproxy_recycles_total", map[string]string{"upstream": "docker.io"}); n != 0 {
		t.Errorf("a refused recycle ran: multiproxy_recycles_total = %v", n)
	}
	logs := p.Logs()
	for _, want := range []string{"admin request refused", "path=/api/v1/purge", "path=/api/v1/recycle",
		`Sec-Fetch-Site is \"cross-site\"`, `Origin \"http://evil.example\"`, `Host \"evil.example:` + port} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %q", want)
		}
	}

	// curl as an operator types it still acts.
	if code, body := curlPost(t, purge); code != http.StatusOK {
		t.Fatalf("curl purge: %d %v", code, body)
	}
	if code, _ := get(t, manifest, accept); code == http.StatusOK {
		t.Error("the purged tag is still served: the refusals above prove nothing")
	}
	// So does a page served from the listener's own address.
	reg.Start()
	if code, body := curlPost(t, recycle, "Origin: http://127.0.0.1:"+port, "Sec-Fetch-Site: same-origin"); code != http.StatusOK {
		t.Errorf("same-origin recycle: %d %v", code, body)
	}
	if n := p.Metric(t, "multiproxy_recycles_total", map[string]string{"upstream": "docker.io", "reason": "admin"}); n != 1 {
		t.Errorf("multiproxy_recycles_total{reason=admin} = %v after an accepted recycle, want 1", n)
	}
}

// A real browser, on a page of another site, fetches the purge the way an
// attacking page would: a no-cors POST, which needs no CORS preflight. The
// page's site, evil.example, resolves to 127.0.0.1 inside chromium, so
// that nothing leaves loopback. Chromium sends the request; it must be
// refused. From the same page, a fetch to evil.example on the admin port
// stands for DNS rebinding.
func TestBrowserOnAnotherSiteCannotPurge(t *testing.T) {
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium not found: install Debian's chromium package (apt-get install chromium; ci/install-chromium.sh does)")
	}
	reg := ts.StartRegistry(t, ts.RegistryOptions{})
	ts.PushImage(t, reg, "library/app:1", 1, 1024)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: reg})
	accept := strings.Join(upstream.ManifestAccept, ", ")
	manifest := p.URL("docker.io") + "/v2/library/app/manifests/1"
	fetch(t, manifest, accept)
	reg.Stop()

	_, port, _ := strings.Cut(p.Process.AdminAddr(), ":")
	const path = "/api/v1/purge?image=docker.io/library/app:1"
	page := `<!doctype html><title>loading</title><script>
const post = url => fetch(url, {method: "POST", mode: "no-cors"}).then(() => "sent", e => "failed: " + e);
Promise.all([post("http://127.0.0.1:` + port + path + `"), post("http://evil.example:` + port + path + `")])
  .then(r => { document.title = r.join(" / "); });
</script>`
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte(page))
	}))
	defer evil.Close()
	_, evilPort, _ := strings.Cut(evil.Listener.Addr().String(), ":")

	dom := string(chromium(t, bin, "http://evil.example:"+evilPort+"/",
		"--host-resolver-rules=MAP evil.example 127.0.0.1", "--virtual-time-budget=10000", "--dump-dom"))
	if !strings.Contains(dom, "<title>sent / sent</title>") {
		t.Fatalf("the page did not get both requests out:\n%s", dom)
	}
	logs := p.Logs()
	for _, want := range []string{
		`reason="Origin \"http://evil.example:` + evilPort + `\" is not on loopback"`, // the fetch to 127.0.0.1
		`reason="Host \"evil.example:` + port + `\" is not a loopback name"`,          // the rebound name
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks the refusal %s:\n%s", want, logs)
		}
	}
	fetch(t, manifest, accept) // not purged
}
