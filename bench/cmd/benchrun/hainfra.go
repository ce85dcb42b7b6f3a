package main

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/multiproxy/multiproxy/internal/testinfra"
)

// The shared services of --ha: an S3 gateway (versitygw's posix backend)
// and a redis-server, both on 127.0.0.1, started by internal/testinfra as
// it starts them for test/ha.

// startS3Gateway starts versitygw with the buckets, its output in
// dir/versitygw.log; stopAll kills it.
func startS3Gateway(dir, bin string, buckets ...string) (*testinfra.S3, error) {
	log, err := serverLog(dir, "versitygw")
	if err != nil {
		return nil, err
	}
	g, err := testinfra.StartS3(testinfra.S3Options{Dir: dir, Bin: bin, Buckets: buckets, Env: cleanEnv(), Log: log})
	if err != nil {
		log.Close()
		return nil, err
	}
	atStopAll(func() {
		_ = g.Kill()
		log.Close()
	})
	return g, nil
}

// startRedis starts Debian's redis-server with a password and no
// persistence, its output in dir/redis-server.log; stopAll kills it.
func startRedis(dir, bin string) (*testinfra.Redis, error) {
	log, err := serverLog(dir, "redis-server")
	if err != nil {
		return nil, err
	}
	r, err := testinfra.StartRedis(testinfra.RedisOptions{Dir: dir, Bin: bin, Env: cleanEnv(), Log: log})
	if err != nil {
		log.Close()
		return nil, err
	}
	atStopAll(func() {
		_ = r.Close()
		log.Close()
	})
	return r, nil
}

// serverLog creates dir/name.log, as startProc logs the other servers.
func serverLog(dir, name string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return os.Create(filepath.Join(dir, name+".log"))
}

// mpS3Section is multiproxy's storage section on bucket/root.
func mpS3Section(g *testinfra.S3, bucket, root string) string {
	return fmt.Sprintf(`storage:
  s3:
    endpoint: %s
    region: %s
    bucket: %s
    root: %s
    access_key_file: %s
    secret_key_file: %s
    force_path_style: true
`, g.Endpoint, g.Region, bucket, root, g.AccessKeyFile, g.SecretKeyFile)
}

// mpCoordSection is multiproxy's coordination section: Redis DB 0, the
// peer listener on loopback (advertised as itself).
func mpCoordSection(r *testinfra.Redis, peerPort int, leaseTTL time.Duration) string {
	return fmt.Sprintf(`coordination:
  redis:
    addr: %s
    password_file: %s
  peer_listen: 127.0.0.1:%[3]d
  advertise: 127.0.0.1:%[3]d
  lease_ttl: %[4]s
`, r.Addr, r.PasswordFile, peerPort, leaseTTL)
}

// referenceHAConfig is distribution's own answer for replicas: the stock
// proxy config on the s3 driver (all replicas on one bucket and root), the
// redis blob descriptor cache (Redis DB 1, so its keys never meet
// multiproxy's) and one http.secret for all. Redirects to the bucket are
// off, so it serves the bytes itself as multiproxy does by default.
func referenceHAConfig(g *testinfra.S3, bucket, root string, r *testinfra.Redis, port int, remote, secret string) string {
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
`, g.AccessKey, g.SecretKey, g.Region, g.Endpoint, bucket, root, r.Addr, r.Password, port, secret, remote)
}

// startRefHAFleet starts n reference replicas on the shared bucket and Redis.
func startRefHAFleet(dir, bin, remote string, n int, g *testinfra.S3, bucket string, r *testinfra.Redis) (*refFleet, error) {
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
