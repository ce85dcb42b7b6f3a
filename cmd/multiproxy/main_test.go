package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// run executes the CLI in-process and returns stdout, stderr and the exit code
// main would use.
func run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	return execute(nil, args...)
}

// execute runs the command line args, with stdin if it is not nil, and
// returns stdout, stderr and the exit status main would use.
func execute(stdin io.Reader, args ...string) (string, string, int) {
	var out, errb bytes.Buffer
	root := newRoot(&out, &errb)
	if stdin != nil {
		root.SetIn(stdin)
	}
	root.SetArgs(args)
	err := root.Execute()
	code := 0
	if err != nil {
		errb.WriteString(err.Error())
		code = 1
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
	}
	return out.String(), errb.String(), code
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBadConfigExitsTwoNamingTheField(t *testing.T) {
	dir := t.TempDir()
	cases := []struct{ name, yaml, field string }{
		{"unknown key", "bogus: 1\n", "bogus"},
		{"unknown upstream key", "upstreams:\n  - name: a.io\n    listen: ':5000'\n    remote: https://a.io\n    passwrd: x\n", "upstreams[0].passwrd"},
		{"duplicate port", "upstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io'}\n  - {name: b.io, listen: ':5000', remote: 'https://b.io'}\n", "upstreams[1].listen"},
		{"duplicate name", "upstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io'}\n  - {name: a.io, listen: ':5001', remote: 'https://b.io'}\n", "upstreams[1].name"},
		{"bad url", "upstreams:\n  - {name: a.io, listen: ':5000', remote: 'ftp://a.io'}\n", "upstreams[0].remote"},
		{"unreadable password file", "upstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io', username: u, password_file: /nonexistent/pw}\n", "upstreams[0].password_file"},
		{"unreadable ca file", "upstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io', ca_file: /nonexistent/ca.pem}\n", "upstreams[0].ca_file"},
		{"zero timeout", "upstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io', timeout: 0s}\n", "upstreams[0].timeout"},
		{"s3 without bucket", "storage:\n  s3: {endpoint: 'http://127.0.0.1:9000'}\nupstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io'}\n", "storage.s3.bucket"},
		{"s3 bad endpoint", "storage:\n  s3: {bucket: b, endpoint: 'ftp://x'}\nupstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io'}\n", "storage.s3.endpoint"},
		{"s3 one key file", "storage:\n  s3: {bucket: b, access_key_file: /etc/hostname}\nupstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io'}\n", "storage.s3.access_key_file"},
		{"s3 unreadable key", "storage:\n  s3: {bucket: b, access_key_file: /nonexistent/a, secret_key_file: /nonexistent/s}\nupstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io'}\n", "storage.s3.secret_key_file"},
		{"upstream s3 without bucket", "upstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io', storage: {s3: {region: eu-west-1}}}\n", "upstreams[0].storage.s3.bucket"},
		{"redis without s3", "coordination:\n  redis: {addr: '127.0.0.1:6379'}\nupstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io'}\n", "upstreams[0].storage.s3"},
		{"redis bad addr", "storage:\n  s3: {bucket: b}\ncoordination:\n  redis: {addr: 'redis'}\nupstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io'}\n", "coordination.redis.addr"},
		{"redis unreadable password", "storage:\n  s3: {bucket: b}\ncoordination:\n  redis: {addr: '127.0.0.1:6379', password_file: /nonexistent/pw}\nupstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io'}\n", "coordination.redis.password_file"},
		{"sentinel without master", "storage:\n  s3: {bucket: b}\ncoordination:\n  redis: {sentinel: {addrs: ['127.0.0.1:26379']}}\nupstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io'}\n", "coordination.redis.sentinel.master"},
		{"sentinel without addrs", "storage:\n  s3: {bucket: b}\ncoordination:\n  redis: {sentinel: {master: mp}}\nupstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io'}\n", "coordination.redis.sentinel.addrs"},
		{"sentinel bad addr", "storage:\n  s3: {bucket: b}\ncoordination:\n  redis: {sentinel: {master: mp, addrs: ['127.0.0.1:26379', 'sentinel']}}\nupstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io'}\n", "coordination.redis.sentinel.addrs[1]"},
		{"sentinel and addr", "storage:\n  s3: {bucket: b}\ncoordination:\n  redis: {addr: '127.0.0.1:6379', sentinel: {master: mp, addrs: ['127.0.0.1:26379']}}\nupstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io'}\n", "coordination.redis.sentinel"},
		{"sentinel unreadable password", "storage:\n  s3: {bucket: b}\ncoordination:\n  redis: {sentinel: {master: mp, addrs: ['127.0.0.1:26379'], password_file: /nonexistent/spw}}\nupstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io'}\n", "coordination.redis.sentinel.password_file"},
		{"sentinel without s3", "coordination:\n  redis: {sentinel: {master: mp, addrs: ['127.0.0.1:26379']}}\nupstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io'}\n", "upstreams[0].storage.s3"},
		{"peer port taken", "storage:\n  s3: {bucket: b}\ncoordination:\n  redis: {addr: '127.0.0.1:6379'}\n  peer_listen: ':5000'\nupstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io'}\n", "coordination.peer_listen"},
		{"lease too short", "storage:\n  s3: {bucket: b}\ncoordination:\n  redis: {addr: '127.0.0.1:6379'}\n  lease_ttl: 100ms\nupstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io'}\n", "coordination.lease_ttl"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			file := writeFile(t, dir, "c"+string(rune('a'+i))+".yaml", c.yaml)
			for _, cmd := range [][]string{{"config", "check"}, {"serve"}} {
				_, stderr, code := run(t, append(cmd, "--config", file)...)
				if code != 2 {
					t.Errorf("%v: exit %d, want 2", cmd, code)
				}
				if !strings.Contains(stderr, c.field) {
					t.Errorf("%v: error %q does not name %s", cmd, stderr, c.field)
				}
			}
		})
	}
}

// The real binary's exit status, not just the error value.
func TestBinaryExitStatusOnBadConfig(t *testing.T) {
	bin := buildBinary(t)
	file := writeFile(t, t.TempDir(), "bad.yaml", "data_dir: x\nadmin: {listen: 'nope'}\n")
	cmd := exec.Command(bin, "serve", "--config", file)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("exit %v, want status 2; output %s", err, out)
	}
	if !strings.Contains(string(out), "admin.listen") {
		t.Errorf("output does not name admin.listen: %s", out)
	}
}

func TestConfigPrintRedactsSecrets(t *testing.T) {
	dir := t.TempDir()
	pw := writeFile(t, dir, "pw", "hunter2-very-secret\n")
	file := writeFile(t, dir, "c.yaml", "upstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io', username: me, password_file: "+pw+"}\n")
	out, stderr, code := run(t, "config", "print", "--config", file)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if strings.Contains(out, "hunter2") {
		t.Fatalf("config print shows the password:\n%s", out)
	}
	if !strings.Contains(out, "<redacted>") || !strings.Contains(out, "username: me") {
		t.Errorf("config print lacks the redacted password line:\n%s", out)
	}
}

// The bucket keys and the Redis password are secrets like an upstream's
// password: config print shows the files, never what is in them.
func TestConfigPrintRedactsStorageSecrets(t *testing.T) {
	dir := t.TempDir()
	ak := writeFile(t, dir, "ak", "AKIA-VERY-SECRET\n")
	sk := writeFile(t, dir, "sk", "s3-secret-hunter2\n")
	rp := writeFile(t, dir, "rp", "redis-hunter2\n")
	file := writeFile(t, dir, "c.yaml", "storage:\n  s3: {bucket: cache, endpoint: 'http://127.0.0.1:9000', access_key_file: "+ak+", secret_key_file: "+sk+", force_path_style: true}\n"+
		"coordination:\n  redis: {addr: '127.0.0.1:6379', password_file: "+rp+"}\n"+
		"upstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io'}\n")
	out, stderr, code := run(t, "config", "print", "--config", file)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, secret := range []string{"AKIA-VERY-SECRET", "s3-secret-hunter2", "redis-hunter2"} {
		if strings.Contains(out, secret) {
			t.Errorf("config print shows %s:\n%s", secret, out)
		}
	}
	// The upstream inherits the bucket under its own prefix.
	for _, want := range []string{"bucket: cache", "root: /a.io", "addr: 127.0.0.1:6379", "lease_ttl: 10s"} {
		if !strings.Contains(out, want) {
			t.Errorf("config print lacks %q:\n%s", want, out)
		}
	}
}

func TestResolveAndPurge(t *testing.T) {
	up := ts.StartRegistry(t, ts.RegistryOptions{})
	first := ts.PushImage(t, up, "library/app:3.20", 1, 1024)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})

	out, stderr, code := run(t, "resolve", "--admin", p.AdminURL(), "docker.io/library/app:3.20")
	if code != 0 {
		t.Fatalf("resolve: exit %d: %s", code, stderr)
	}
	if want := "docker.io/library/app@" + ts.Digest(t, first) + "\n"; out != want {
		t.Fatalf("resolve printed %q, want %q", out, want)
	}
	second := ts.PushImage(t, up, "library/app:3.20", 1, 1024)
	out, _, _ = run(t, "resolve", "--admin", p.AdminURL(), "docker.io/library/app:3.20")
	if !strings.HasSuffix(strings.TrimSpace(out), ts.Digest(t, second)) {
		t.Fatalf("resolve after a push printed %q, want the new digest %s", out, ts.Digest(t, second))
	}

	if _, stderr, code := run(t, "purge", "--admin", p.AdminURL(), "docker.io/library/app:3.20"); code != 0 {
		t.Fatalf("purge: exit %d: %s", code, stderr)
	}
	// Purged: with the upstream gone there is no cached tag to fall back on.
	up.Stop()
	resp, err := http.Get(p.URL("docker.io") + "/v2/library/app/manifests/3.20")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("purged tag with upstream down: %d, want 503 (nothing cached)", resp.StatusCode)
	}

	if _, _, code := run(t, "resolve", "--admin", p.AdminURL(), "ghcr.io/x/y:1"); code == 0 {
		t.Error("resolve of an image of an unconfigured registry succeeded")
	}
}

func TestGCCommandOnlineAndOffline(t *testing.T) {
	up := ts.StartRegistry(t, ts.RegistryOptions{})
	ts.PushImage(t, up, "library/app:1", 1, 64<<10)
	cfg := ts.NewProxyConfig(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	p := ts.StartProxyConfig(t, cfg)
	resp, err := http.Get(p.URL("docker.io") + "/v2/library/app/manifests/1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	file := writeFile(t, t.TempDir(), "c.yaml", fmt.Sprintf(
		"data_dir: %s\nupstreams:\n  - {name: docker.io, listen: '127.0.0.1:1', remote: '%s', storage: '%s'}\n",
		cfg.DataDir, up.URL(), cfg.Upstreams[0].Storage.Path))

	out, stderr, code := run(t, "gc", "--config", file, "--admin", p.AdminURL(), "--dry-run")
	if code != 0 || !strings.Contains(out, `"dry_run": true`) {
		t.Fatalf("online dry run: exit %d, out %s, err %s", code, out, stderr)
	}
	if _, stderr, code := run(t, "gc", "--config", file, "--offline"); code == 0 || !strings.Contains(stderr, "in use by a running multiproxy") {
		t.Fatalf("offline gc under a running server: exit %d, %s", code, stderr)
	}
	p.Stop()
	out, stderr, code = run(t, "gc", "--config", file, "--offline")
	if code != 0 || !strings.Contains(out, `"upstream": "docker.io"`) {
		t.Fatalf("offline gc: exit %d, out %s, err %s", code, out, stderr)
	}
	if _, _, code := run(t, "gc", "--config", file, "--offline", "--upstream", "nope"); code != 2 {
		t.Errorf("unknown --upstream: exit %d, want 2", code)
	}
}

// An operator deletes data_dir under a running process and the next pulls
// recreate the store. The store is still served, so an offline collection
// must still be refused, whichever write recreated it: a manifest (a pull
// by tag) or a blob's spool.
func TestOfflineGCRefusedAfterDataDirRecreated(t *testing.T) {
	up := ts.StartRegistry(t, ts.RegistryOptions{})
	img := ts.PushImage(t, up, "library/app:1", 1, 64<<10)
	cfg := ts.NewProxyConfig(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	p := ts.StartProxyConfig(t, cfg)
	base := p.URL("docker.io")
	c := &http.Client{Timeout: time.Minute}
	if err := ts.PullVerified(c, base, "library/app", "1"); err != nil {
		t.Fatal(err)
	}
	file := writeFile(t, t.TempDir(), "c.yaml", fmt.Sprintf(
		"data_dir: %s\nupstreams:\n  - {name: docker.io, listen: '127.0.0.1:1', remote: '%s', storage: '%s'}\n",
		cfg.DataDir, up.URL(), cfg.Upstreams[0].Storage.Path))
	refused := func(when string) {
		t.Helper()
		out, stderr, code := run(t, "gc", "--config", file, "--offline")
		if code == 0 || !strings.Contains(stderr, "in use by a running multiproxy") {
			t.Fatalf("offline gc %s: exit %d, out %s, err %s; want it refused", when, code, out, stderr)
		}
	}
	refused("on the intact store")
	removeDataDir := func() {
		// The process may be writing there meanwhile (a pull's links).
		ts.WaitFor(t, 30*time.Second, "rm -rf data_dir", func() bool { return os.RemoveAll(cfg.DataDir) == nil })
	}

	// A pull by tag: the manifest is the first write to the new store.
	removeDataDir()
	req, err := http.NewRequest("GET", base+"/v2/library/app/manifests/1", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("manifest pull after data_dir was deleted: %d", resp.StatusCode)
	}
	if _, err := os.Stat(cfg.Upstreams[0].Storage.Path); err != nil {
		t.Fatalf("the pull did not recreate the store: %v", err)
	}
	refused("after a manifest pull recreated the deleted store")

	// A blob alone: its spool recreates the store.
	removeDataDir()
	if err := ts.PullVerifiedBlob(c, base, "library/app", ts.LayerDigests(t, img)[0]); err != nil {
		t.Fatalf("blob pull after data_dir was deleted: %v", err)
	}
	refused("after a blob pull recreated the deleted store")

	// Once the process has stopped, the recreated store is collected.
	p.Stop()
	if out, stderr, code := run(t, "gc", "--config", file, "--offline"); code != 0 {
		t.Fatalf("offline gc once stopped: exit %d, out %s, err %s", code, out, stderr)
	}
}

// config check --probe writes to the real bucket and Redis the config
// names, and names the section that fails.
func TestConfigCheckProbesBucketAndRedis(t *testing.T) {
	s3 := ts.StartS3(t)
	redis := ts.StartRedis(t)
	dir := t.TempDir()
	conf := func(secretFile string) string {
		return writeFile(t, dir, "c.yaml", fmt.Sprintf("storage:\n  s3: {bucket: %s, endpoint: '%s', region: %s, access_key_file: %s, secret_key_file: %s, force_path_style: true}\n"+
			"coordination:\n  redis: {addr: '%s', password_file: %s}\n"+
			"upstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io'}\n  - {name: b.io, listen: ':5001', remote: 'https://b.io'}\n",
			s3.Bucket, s3.Endpoint, s3.Region, s3.AccessKeyFile, secretFile, redis.Addr, redis.PasswordFile))
	}
	out, stderr, code := run(t, "config", "check", "--probe", "--config", conf(s3.SecretKeyFile))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"upstreams[0].storage.s3: bucket " + s3.Bucket + " writable", "upstreams[1].storage.s3: bucket", "coordination.redis: " + redis.Addr + " answers"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if left := s3.Objects(t, ""); len(left) != 0 {
		t.Errorf("the probe left objects in the bucket: %v", left)
	}

	wrong := writeFile(t, dir, "wrong", "not-the-secret\n")
	_, stderr, code = run(t, "config", "check", "--probe", "--config", conf(wrong))
	if code != 1 || !strings.Contains(stderr, "upstreams[0].storage.s3") {
		t.Errorf("wrong secret key: exit %d, %q; want 1 naming upstreams[0].storage.s3", code, stderr)
	}
	if strings.Contains(stderr, "not-the-secret") {
		t.Errorf("the error shows the secret: %s", stderr)
	}

	redis.Stop(t)
	_, stderr, code = run(t, "config", "check", "--probe", "--config", conf(s3.SecretKeyFile))
	if code != 1 || !strings.Contains(stderr, "coordination.redis") {
		t.Errorf("Redis down: exit %d, %q; want 1 naming coordination.redis", code, stderr)
	}
}

// With Sentinel, config check --probe asks the Sentinels for the master
// and writes there; a wrong master name or Sentinel password fails it
// naming coordination.redis.sentinel. config print shows
// the Sentinels, never their password nor the master's.
func TestConfigCheckProbesRedisThroughSentinel(t *testing.T) {
	s3 := ts.StartS3(t)
	sentinel := ts.StartRedisSentinel(t)
	dir := t.TempDir()
	conf := func(master, sentinelPasswordFile string) string {
		return writeFile(t, dir, master+filepath.Base(sentinelPasswordFile)+".yaml", fmt.Sprintf("storage:\n  s3: {bucket: %s, endpoint: '%s', region: %s, access_key_file: %s, secret_key_file: %s, force_path_style: true}\n"+
			"coordination:\n  redis:\n    password_file: %s\n    sentinel: {master: %s, addrs: ['%s'], password_file: %s}\n"+
			"upstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io'}\n",
			s3.Bucket, s3.Endpoint, s3.Region, s3.AccessKeyFile, s3.SecretKeyFile,
			sentinel.Servers[0].PasswordFile, master, sentinel.Addr, sentinelPasswordFile))
	}
	good := conf(sentinel.MasterName, sentinel.PasswordFile)
	out, stderr, code := run(t, "config", "print", "--config", good)
	if code != 0 {
		t.Fatalf("config print: exit %d: %s", code, stderr)
	}
	for _, secret := range []string{sentinel.Password, sentinel.Servers[0].Password} {
		if strings.Contains(out, secret) {
			t.Errorf("config print shows a Redis password:\n%s", out)
		}
	}
	if !strings.Contains(out, "master: "+sentinel.MasterName) || !strings.Contains(out, sentinel.Addr) {
		t.Errorf("config print lacks the sentinel section:\n%s", out)
	}

	out, stderr, code = run(t, "config", "check", "--probe", "--config", good)
	if code != 0 {
		t.Fatalf("probe: exit %d: %s", code, stderr)
	}
	want := fmt.Sprintf("coordination.redis.sentinel: master %q at %s answers", sentinel.MasterName, sentinel.Master(t))
	if !strings.Contains(out, want) {
		t.Errorf("output lacks %q:\n%s", want, out)
	}
	if n, err := sentinel.Server(t, sentinel.Master(t)).Client().DBSize(context.Background()).Result(); err != nil || n != 0 {
		t.Errorf("the probe left %d keys on the master (%v)", n, err)
	}

	wrongPassword := writeFile(t, dir, "wrong", "not-the-password\n")
	for name, file := range map[string]string{
		"unknown master":          conf("nobody", sentinel.PasswordFile),
		"wrong sentinel password": conf(sentinel.MasterName, wrongPassword),
	} {
		_, stderr, code = run(t, "config", "check", "--probe", "--config", file)
		if code != 1 || !strings.Contains(stderr, "coordination.redis.sentinel") {
			t.Errorf("%s: exit %d, %q; want 1 naming coordination.redis.sentinel", name, code, stderr)
		}
		if strings.Contains(stderr, "not-the-password") || strings.Contains(stderr, sentinel.Password) {
			t.Errorf("%s: the error shows a password: %s", name, stderr)
		}
	}
}

// deploy/ha/multiproxy.yaml is a working config once its secret files
// exist: the HA guide tells operators to start from it.
func TestHAExampleConfigIsValid(t *testing.T) {
	raw, err := os.ReadFile("../../deploy/ha/multiproxy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, f := range []string{"admin-token", "s3-access-key", "s3-secret-key", "redis-password", "peer-token"} {
		writeFile(t, dir, f, "VALUE-OF-"+f+"\n")
	}
	text := strings.ReplaceAll(string(raw), "/etc/multiproxy/", dir+"/")
	text = strings.ReplaceAll(text, "/var/lib/multiproxy", filepath.Join(dir, "data"))
	file := writeFile(t, dir, "multiproxy.yaml", text)
	out, stderr, code := run(t, "config", "print", "--config", file)
	if code != 0 {
		t.Fatalf("deploy/ha/multiproxy.yaml: exit %d: %s", code, stderr)
	}
	for _, want := range []string{"root: /docker.io", "bucket: multiproxy-cache", "peer_listen: :5098", "peer_token: <redacted>"} {
		if !strings.Contains(out, want) {
			t.Errorf("effective config lacks %q", want)
		}
	}
	if strings.Contains(out, "VALUE-OF-") {
		t.Errorf("config print shows a secret:\n%s", out)
	}
}

// An offline collection works on a directory; a bucket is shared with
// running replicas, so it is refused rather than run beside them.
func TestOfflineGCRefusesASharedBucket(t *testing.T) {
	dir := t.TempDir()
	file := writeFile(t, dir, "c.yaml", "data_dir: "+dir+"\nstorage:\n  s3: {bucket: cache, endpoint: 'http://127.0.0.1:9'}\n"+
		"upstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io'}\n")
	_, stderr, code := run(t, "gc", "--offline", "--config", file)
	if code != 2 || !strings.Contains(stderr, "bucket cache") {
		t.Errorf("gc --offline on a bucket: exit %d, %q; want 2 naming the bucket", code, stderr)
	}
}
