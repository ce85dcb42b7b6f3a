package config_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
)

// Upstreams inherit the top-level bucket under a prefix of their own, and
// local copies under a directory of their own; one that names its own
// bucket or path keeps it; `storage: DIR` still means the directory.
func TestStorageInheritance(t *testing.T) {
	dir := t.TempDir()
	key := writeFile(t, dir, "key", "k\n")
	yaml := `data_dir: ` + dir + `
storage:
  s3: {bucket: shared, endpoint: 'http://127.0.0.1:9000', root: /cache, access_key_file: ` + key + `, secret_key_file: ` + key + `}
  local_cache: {dir: ` + filepath.Join(dir, "copies") + `, max_size: 1GiB}
coordination:
  redis: {addr: '127.0.0.1:6379'}
upstreams:
  - {name: docker.io, listen: ':5000', remote: 'https://registry-1.docker.io'}
  - name: ghcr.io
    listen: ':5010'
    remote: https://ghcr.io
    storage:
      path: ` + filepath.Join(dir, "ghcr") + `
      s3: {bucket: own, region: eu-west-1, root: /x}
      local_cache: {max_size: 2GiB}
  - {name: quay.io, listen: ':5020', remote: 'https://quay.io', storage: ` + filepath.Join(dir, "q") + `}
`
	cfg, err := config.Load(config.LoadOptions{File: writeConfig(t, dir, yaml), Env: noEnv})
	if err != nil {
		t.Fatal(err)
	}
	d, g, q := cfg.Upstreams[0].Storage, cfg.Upstreams[1].Storage, cfg.Upstreams[2].Storage
	if d.S3.Bucket != "shared" || d.S3.Root != "/cache/docker.io" || d.S3.Region != "us-east-1" || d.S3.AccessKey.Reveal() != "k" {
		t.Errorf("docker.io inherits %+v", d.S3)
	}
	if d.LocalCache.Dir != filepath.Join(dir, "copies", "docker.io") || d.LocalCache.MaxSize != 1<<30 {
		t.Errorf("docker.io local cache %+v", d.LocalCache)
	}
	if g.S3.Bucket != "own" || g.S3.Root != "/x" || g.S3.Region != "eu-west-1" || g.S3.AccessKey != "" {
		t.Errorf("ghcr.io's own bucket became %+v", g.S3)
	}
	if g.Path != filepath.Join(dir, "ghcr") || g.LocalCache.MaxSize != 2<<30 || g.LocalCache.Dir != filepath.Join(dir, "copies", "ghcr.io") {
		t.Errorf("ghcr.io storage %+v", g)
	}
	if q.Path != filepath.Join(dir, "q") || q.S3.Root != "/cache/quay.io" {
		t.Errorf("quay.io storage %+v", q)
	}
	if cfg.Coordination.LeaseTTL != 10*time.Second || cfg.Coordination.PeerListen != ":5098" {
		t.Errorf("coordination defaults %+v", cfg.Coordination)
	}
}

// Without storage.s3 and coordination nothing changes: the filesystem
// under data_dir, and no coordination defaults filled in.
func TestStorageDefaultsStayOnTheFilesystem(t *testing.T) {
	cfg, err := config.Load(config.LoadOptions{Env: noEnv})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range cfg.Upstreams {
		if u.Storage.S3.Enabled() || u.Storage.LocalCache != (config.LocalCache{}) {
			t.Errorf("%s: storage %+v, want the filesystem only", u.Name, u.Storage)
		}
	}
	if !cfg.Coordination.IsZero() {
		t.Errorf("coordination %+v, want none", cfg.Coordination)
	}
}
