package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/multiproxy/multiproxy/internal/testinfra"
)

// memLayer is a genuine tar+gzip layer held in memory. The tar holds one
// file of random bytes; gzip runs at NoCompression (stored blocks), so the
// blob is as large as asked and generating hundreds of MiB takes a moment,
// while containerd would still accept it (diff_id matches the tar).
type memLayer struct {
	gz     []byte
	digest v1.Hash
	diffID v1.Hash
}

var _ v1.Layer = (*memLayer)(nil)

func (l *memLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *memLayer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *memLayer) Size() (int64, error)                { return int64(len(l.gz)), nil }
func (l *memLayer) MediaType() (types.MediaType, error) { return types.OCILayer, nil }
func (l *memLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.gz)), nil
}
func (l *memLayer) Uncompressed() (io.ReadCloser, error) {
	zr, err := gzip.NewReader(bytes.NewReader(l.gz))
	if err != nil {
		return nil, err
	}
	return zr, nil
}

// newRNG is a fast generator seeded from crypto/rand, so every run has
// content no cache has seen.
func newRNG() *mrand.ChaCha8 {
	var seed [32]byte
	if _, err := rand.Read(seed[:]); err != nil {
		panic(err)
	}
	return mrand.NewChaCha8(seed)
}

// newLayer builds a layer whose tar holds one file of size random bytes.
func newLayer(rng *mrand.ChaCha8, size int64) (*memLayer, error) {
	var gzBuf bytes.Buffer
	gzBuf.Grow(int(size) + int(size>>14) + 4096)
	zw, err := gzip.NewWriterLevel(&gzBuf, gzip.NoCompression)
	if err != nil {
		return nil, err
	}
	diff := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(zw, diff))
	hdr := &tar.Header{Name: "bench.bin", Mode: 0o644, Size: size, Typeflag: tar.TypeReg,
		ModTime: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	buf := make([]byte, 1<<20)
	for left := size; left > 0; {
		n := int64(len(buf))
		if left < n {
			n = left
		}
		_, _ = rng.Read(buf[:n])
		if _, err := tw.Write(buf[:n]); err != nil {
			return nil, err
		}
		left -= n
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	l := &memLayer{gz: gzBuf.Bytes()}
	l.diffID = v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", diff.Sum(nil))}
	l.digest = v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", sha256.Sum256(l.gz))}
	return l, nil
}

// pushed describes an image in the upstream.
type pushed struct {
	repo, tag string
	manifest  string   // digest
	config    string   // digest
	layers    []string // digests
	sizes     []int64  // layer sizes
}

// pusher writes images to the upstream registry directly (not through the
// counting front).
type pusher struct {
	host string // 127.0.0.1:port
	tr   http.RoundTripper
	rng  *mrand.ChaCha8
	auth authn.Authenticator // anonymous unless set (the token upstream's pusher account)
}

func newPusher(host string) *pusher {
	return &pusher{host: host, tr: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 16, DisableCompression: true}, rng: newRNG(), auth: authn.Anonymous}
}

// push builds an image of len(layerSizes) random layers and pushes it as
// repo:tag. If keep is non-nil, layer i's blob bytes are written to keep[i].
func (p *pusher) push(repo, tag string, layerSizes []int64, keep map[int]string) (pushed, error) {
	out := pushed{repo: repo, tag: tag}
	var layers []v1.Layer
	for i, sz := range layerSizes {
		l, err := newLayer(p.rng, sz)
		if err != nil {
			return out, err
		}
		if path, ok := keep[i]; ok {
			if err := os.WriteFile(path, l.gz, 0o644); err != nil {
				return out, err
			}
		}
		out.layers = append(out.layers, l.digest.String())
		out.sizes = append(out.sizes, int64(len(l.gz)))
		layers = append(layers, l)
	}
	img, err := testinfra.OCIImage(layers, "multiproxy bench", func(cf *v1.ConfigFile) {
		cf.OS, cf.Architecture = "linux", "amd64"
		cf.Config.Labels = map[string]string{"org.multiproxy.bench.nonce": fmt.Sprintf("%x", p.rng.Uint64())}
	})
	if err != nil {
		return out, err
	}
	ref, err := name.ParseReference(p.host+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		return out, err
	}
	if err := remote.Write(ref, img, remote.WithTransport(p.tr), remote.WithAuth(p.auth), remote.WithJobs(3)); err != nil {
		return out, fmt.Errorf("push %s: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return out, err
	}
	out.manifest = d.String()
	cd, err := img.ConfigName()
	if err != nil {
		return out, err
	}
	out.config = cd.String()
	return out, nil
}
