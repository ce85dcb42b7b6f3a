package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/session"
	awss3 "github.com/aws/aws-sdk-go/service/s3"
	"github.com/redis/go-redis/v9"

	"github.com/multiproxy/multiproxy/internal/testinfra"
)

// The shared services of --ha: an S3 gateway (versitygw's posix backend)
// and a redis-server, both on 127.0.0.1, started the way
// internal/testsupport starts them for test/ha.

// s3Gateway is a versitygw over a directory of the work dir.
type s3Gateway struct {
	p                      *proc
	endpoint, region       string
	access, secret         string
	accessFile, secretFile string
	dir                    string // the gateway's root: a bucket is a subdirectory
}

// startS3Gateway starts versitygw on a free port and creates buckets
// through the S3 API (a bare mkdir in the root would do for the posix
// backend, but the API is what a deployment uses).
func startS3Gateway(dir, bin string, buckets ...string) (*s3Gateway, error) {
	g := &s3Gateway{region: "us-east-1", access: "MPBENCH" + strings.ToUpper(testinfra.RandomHex(6)), secret: testinfra.RandomHex(20),
		dir: filepath.Join(dir, "gw")}
	if err := os.MkdirAll(g.dir, 0o755); err != nil {
		return nil, err
	}
	g.accessFile, g.secretFile = filepath.Join(dir, "access-key"), filepath.Join(dir, "secret-key")
	for f, v := range map[string]string{g.accessFile: g.access, g.secretFile: g.secret} {
		if err := os.WriteFile(f, []byte(v+"\n"), 0o600); err != nil {
			return nil, err
		}
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	g.endpoint = fmt.Sprintf("http://127.0.0.1:%d", port)
	start := func(name string, backend ...string) error {
		args := append([]string{"--access", g.access, "--secret", g.secret, "--region", g.region,
			"--port", fmt.Sprintf("127.0.0.1:%d", port), "--health", "/health", "--quiet"}, backend...)
		p, err := startProc(name, dir, cleanEnv(), bin, args...)
		if err != nil {
			return err
		}
		if err := waitHTTP(p, g.endpoint+"/health", http.StatusOK, 30*time.Second); err != nil {
			p.stop()
			return err
		}
		g.p = p
		return nil
	}
	// Object metadata goes into extended attributes; without user xattrs
	// on the work dir's filesystem versitygw refuses to start, and a
	// sidecar directory holds the metadata instead.
	if err := start("versitygw", "posix", g.dir); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "versitygw.log"))
		if !strings.Contains(string(log), "xattr") {
			return nil, fmt.Errorf("versitygw: %w", err)
		}
		side := filepath.Join(dir, "meta")
		if err := os.MkdirAll(side, 0o755); err != nil {
			return nil, err
		}
		if err := start("versitygw-sidecar", "posix", "--sidecar", side, g.dir); err != nil {
			return nil, fmt.Errorf("versitygw (sidecar metadata): %w", err)
		}
	}
	sess, err := session.NewSession(aws.NewConfig().
		WithCredentials(credentials.NewStaticCredentials(g.access, g.secret, "")).
		WithEndpoint(g.endpoint).WithRegion(g.region).
		WithS3ForcePathStyle(true).WithDisableSSL(true).WithMaxRetries(0).
		WithHTTPClient(&http.Client{Transport: &http.Transport{Proxy: nil}}))
	if err != nil {
		return nil, err
	}
	cl := awss3.New(sess)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, bk := range buckets {
		if _, err := cl.CreateBucketWithContext(ctx, &awss3.CreateBucketInput{Bucket: aws.String(bk)}); err != nil {
			return nil, fmt.Errorf("versitygw: create bucket %s: %w", bk, err)
		}
	}
	return g, nil
}

// redisServer is Debian's redis-server with a password and no persistence.
type redisServer struct {
	p                      *proc
	addr                   string
	password, passwordFile string
}

func startRedis(dir, bin string) (*redisServer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	r := &redisServer{addr: fmt.Sprintf("127.0.0.1:%d", port), password: testinfra.RandomHex(16),
		passwordFile: filepath.Join(dir, "password")}
	if err := os.WriteFile(r.passwordFile, []byte(r.password+"\n"), 0o600); err != nil {
		return nil, err
	}
	conf := strings.Join([]string{
		"bind 127.0.0.1", "port " + strconv.Itoa(port), "protected-mode yes", "requirepass " + r.password,
		`save ""`, "appendonly no", "daemonize no", `logfile ""`, "dir " + dir, "",
	}, "\n")
	confPath := filepath.Join(dir, "redis.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	r.p, err = startProc("redis-server", dir, cleanEnv(), bin, confPath)
	if err != nil {
		return nil, err
	}
	c := redis.NewClient(&redis.Options{Addr: r.addr, Password: r.password, DialTimeout: time.Second, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return r, nil
		}
		if !r.p.alive() {
			return nil, fmt.Errorf("redis-server exited during start (see %s)", filepath.Join(dir, "redis-server.log"))
		}
		if time.Now().After(deadline) {
			r.p.stop()
			return nil, fmt.Errorf("redis-server on %s: no PONG after 30 s: %v", r.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mpS3Section is multiproxy's storage section on bucket/root.
func mpS3Section(g *s3Gateway, bucket, root string) string {
	return fmt.Sprintf(`storage:
  s3:
    endpoint: %s
    region: %s
    bucket: %s
    root: %s
    access_key_file: %s
    secret_key_file: %s
    force_path_style: true
`, g.endpoint, g.region, bucket, root, g.accessFile, g.secretFile)
}

// mpCoordSection is multiproxy's coordination section: Redis DB 0, the
// peer listener on loopback (advertised as itself).
func mpCoordSection(r *redisServer, peerPort int, leaseTTL time.Duration) string {
	return fmt.Sprintf(`coordination:
  redis:
    addr: %s
    password_file: %s
  peer_listen: 127.0.0.1:%[3]d
  advertise: 127.0.0.1:%[3]d
  lease_ttl: %[4]s
`, r.addr, r.passwordFile, peerPort, leaseTTL)
}

// referenceHAConfig is distribution's own answer for replicas: the stock
// proxy config on the s3 driver (all replicas on one bucket and root), the
// redis blob descriptor cache (Redis DB 1, so its keys never meet
// multiproxy's) and one http.secret for all. Redirects to the bucket are
// off, so it serves the bytes itself as multiproxy does by default.
func referenceHAConfig(g *s3Gateway, bucket, root string, r *redisServer, port int, remote, secret string) string {
	return fmt.Sprintf(`version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: redis
  s3:
    accesskey: %s
    secretkey: %s
    region: %s
    regionendpoint: %s
    forcepathstyle: true
    bucket: %s
    rootdirectory: %s
    secure: false
    v4auth: true
  redirect:
    disable: true
redis:
  addrs: [%s]
  password: %s
  db: 1
http:
  addr: 127.0.0.1:%d
  secret: %s
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
proxy:
  remoteurl: %s
`, g.access, g.secret, g.region, g.endpoint, bucket, root, r.addr, r.password, port, secret, remote)
}

// startRefHAFleet starts n reference replicas on the shared bucket and Redis.
func startRefHAFleet(dir, bin, remote string, n int, g *s3Gateway, bucket string, r *redisServer) (*refFleet, error) {
	ports, err := freePorts(n)
	if err != nil {
		return nil, err
	}
	secret := testinfra.RandomHex(16)
	f := &refFleet{}
	for i := range n {
		d := filepath.Join(dir, fmt.Sprintf("ref%d", i))
		p, base, err := startRegistry(fmt.Sprintf("ref%d", i), d, bin,
			referenceHAConfig(g, bucket, "/registry", r, ports[i], remote, secret), ports[i])
		if err != nil {
			f.stop()
			return nil, err
		}
		f.procs = append(f.procs, p)
		f.bases = append(f.bases, base)
	}
	return f, nil
}

// promSample is one sample of the Prometheus text exposition.
type promSample struct {
	name   string
	labels map[string]string
	value  float64
}

// scrape reads admin's /metrics.
func scrape(c *http.Client, admin string) ([]promSample, error) {
	resp, err := c.Get(admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s/metrics: status %d", admin, resp.StatusCode)
	}
	var out []promSample
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		s := promSample{name: line[:i], labels: map[string]string{}, value: v}
		if j := strings.IndexByte(s.name, '{'); j >= 0 {
			ls := strings.TrimSuffix(s.name[j+1:], "}")
			s.name = s.name[:j]
			// Label values here are names and words: no escaped quotes or commas.
			for _, kv := range strings.Split(ls, ",") {
				k, val, ok := strings.Cut(kv, "=")
				if ok {
					s.labels[k] = strings.Trim(val, `"`)
				}
			}
		}
		out = append(out, s)
	}
	return out, sc.Err()
}

// sumMetric sums name's samples whose labels include want.
func sumMetric(ss []promSample, name string, want map[string]string) float64 {
	var sum float64
next:
	for _, s := range ss {
		if s.name != name {
			continue
		}
		for k, v := range want {
			if s.labels[k] != v {
				continue next
			}
		}
		sum += s.value
	}
	return sum
}
