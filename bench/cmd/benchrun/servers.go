package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// referenceEnv is what the official registry image sets (its Dockerfile has
// ENV OTEL_TRACES_EXPORTER=none); without it, every request's span would be
// exported to an OTLP collector on localhost:4318 that is not there.
var referenceEnv = []string{"OTEL_TRACES_EXPORTER=none"}

// upstreamConfig is a plain (non-proxy) registry: the "remote" registry.
func upstreamConfig(root string, port int) string {
	return fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: %s
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:%d
  secret: multiproxy-bench-upstream
`, root, port)
}

// referenceConfig is registry:2's stock /etc/docker/registry/config.yml
// with the proxy section the seeds add (REGISTRY_PROXY_REMOTEURL), as five
// registry:2 containers run it. Logging stays at its defaults (info, access
// log on), as multiproxy's does.
func referenceConfig(root string, port int, remote string) string {
	return fmt.Sprintf(`version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: %s
http:
  addr: 127.0.0.1:%d
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
proxy:
  remoteurl: %s
`, root, port, remote)
}

// startRegistry starts the reference registry binary with cfg.
func startRegistry(name, dir, bin, cfg string, port int) (*proc, string, error) {
	return startRegistryWant(name, dir, bin, cfg, port, http.StatusOK)
}

// startRegistryWant is startRegistry for a registry whose /v2/ answers
// want once up (401 with token auth).
func startRegistryWant(name, dir, bin, cfg string, port, want int) (*proc, string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", err
	}
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, "", err
	}
	p, err := startProc(name, dir, cleanEnv(referenceEnv...), bin, "serve", cfgPath)
	if err != nil {
		return nil, "", err
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	if err := waitHTTP(p, base+"/v2/", want, 60*time.Second); err != nil {
		p.stop()
		return nil, "", fmt.Errorf("%s: %w", name, err)
	}
	return p, base, nil
}

// refFleet is N reference proxies, one per upstream, as the seeds run them.
type refFleet struct {
	procs []*proc
	bases []string
}

func (f *refFleet) pids() []int {
	out := make([]int, len(f.procs))
	for i, p := range f.procs {
		out[i] = p.pid()
	}
	return out
}

func (f *refFleet) stop() {
	var wg sync.WaitGroup
	for _, p := range f.procs {
		wg.Go(p.stop)
	}
	wg.Wait()
}

// startRefFleet starts n reference proxies in parallel, all pointing at remote.
func startRefFleet(dir, bin, remote string, n int) (*refFleet, error) {
	ports, err := freePorts(n)
	if err != nil {
		return nil, err
	}
	f := &refFleet{procs: make([]*proc, n), bases: make([]string, n)}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			d := filepath.Join(dir, fmt.Sprintf("ref%d", i))
			f.procs[i], f.bases[i], errs[i] = startRegistry(fmt.Sprintf("ref%d", i), d, bin,
				referenceConfig(filepath.Join(d, "storage"), ports[i], remote), ports[i])
		})
	}
	wg.Wait()
	for _, e := range errs {
		if e != nil {
			for _, p := range f.procs {
				if p != nil {
					p.stop()
				}
			}
			return nil, e
		}
	}
	return f, nil
}

// mpInstance is one multiproxy process serving n upstreams.
type mpInstance struct {
	p     *proc
	bases []string
	admin string
}

func (m *mpInstance) pids() []int { return []int{m.p.pid()} }

// multiproxyConfig writes the YAML config: n upstreams, all on remote, with
// the given upstream timeout. extra is appended verbatim (e.g. recycle).
func multiproxyConfig(dataDir string, adminPort int, ports []int, remote string, timeout time.Duration, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "data_dir: %s\nlog_level: info\nshutdown_timeout: 5s\nadmin:\n  listen: 127.0.0.1:%d\n", dataDir, adminPort)
	b.WriteString(extra)
	b.WriteString("upstreams:\n")
	for i, p := range ports {
		fmt.Fprintf(&b, "  - name: up%d.bench.test\n    listen: 127.0.0.1:%d\n    remote: %s\n    timeout: %s\n",
			i, p, remote, timeout)
	}
	return b.String()
}

// mpConfigAccepted runs `multiproxy config check` on cfg.
func mpConfigAccepted(bin, dir, cfg string) (bool, string) {
	path := filepath.Join(dir, "check.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return false, err.Error()
	}
	out, err := exec.Command(bin, "config", "check", "--config", path).CombinedOutput()
	return err == nil, strings.TrimSpace(string(out))
}

func startMultiproxy(dir, bin, remote string, n int, timeout time.Duration, extra string, env ...string) (*mpInstance, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	ports, err := freePorts(n + 1)
	if err != nil {
		return nil, err
	}
	cfg := multiproxyConfig(filepath.Join(dir, "data"), ports[n], ports[:n], remote, timeout, extra)
	cfgPath := filepath.Join(dir, "multiproxy.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	p, err := startProc("multiproxy", dir, cleanEnv(env...), bin, "serve", "--config", cfgPath)
	if err != nil {
		return nil, err
	}
	m := &mpInstance{p: p, admin: fmt.Sprintf("http://127.0.0.1:%d", ports[n])}
	for _, port := range ports[:n] {
		base := fmt.Sprintf("http://127.0.0.1:%d", port)
		if err := waitHTTP(p, base+"/v2/", 200, 60*time.Second); err != nil {
			p.stop()
			return nil, fmt.Errorf("multiproxy: %w", err)
		}
		m.bases = append(m.bases, base)
	}
	return m, nil
}

// startNginx serves dir/www with sendfile: the ceiling for warm blob serving.
func startNginx(dir, bin string, root string) (*proc, string, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	for _, d := range []string{"tmp", "logs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, "", err
		}
	}
	user := ""
	if os.Geteuid() == 0 {
		// Workers otherwise drop to nobody and could not read a 0700 temp dir.
		user = "user root;\n"
	}
	cfg := fmt.Sprintf(`%sworker_processes auto;
daemon off;
master_process on;
pid %[2]s/nginx.pid;
error_log %[2]s/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  client_body_temp_path %[2]s/tmp/body;
  proxy_temp_path %[2]s/tmp/proxy;
  fastcgi_temp_path %[2]s/tmp/fastcgi;
  uwsgi_temp_path %[2]s/tmp/uwsgi;
  scgi_temp_path %[2]s/tmp/scgi;
  server {
    listen 127.0.0.1:%[3]d;
    root %[4]s;
  }
}
`, user, dir, port, root)
	cfgPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, "", err
	}
	p, err := startProc("nginx", dir, cleanEnv(), bin, "-p", dir, "-c", cfgPath, "-e", filepath.Join(dir, "logs/error.log"))
	if err != nil {
		return nil, "", err
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	if err := waitHTTP(p, base+"/blob", 200, 30*time.Second); err != nil {
		p.stop()
		return nil, "", fmt.Errorf("nginx: %w", err)
	}
	return p, base, nil
}
