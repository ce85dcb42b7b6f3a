package warm

import (
	"bytes"
	"context"
	_ "crypto/sha256" // digests of manifests are checked here
	_ "crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"runtime/debug"
	"strings"

	"github.com/opencontainers/go-digest"
)

// maxManifest bounds a manifest read into memory; distribution refuses
// larger ones too.
const maxManifest = 4 << 20

// acceptManifests is what a warm accepts when it asks for a manifest: what
// containerd sends, so that the cache keeps what a node will ask for.
var acceptManifests = strings.Join([]string{
	mtOCIIndex, mtDockerList, mtOCIManifest, mtDockerManifest,
}, ", ")

const (
	mtOCIIndex       = "application/vnd.oci.image.index.v1+json"
	mtDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
	mtOCIManifest    = "application/vnd.oci.image.manifest.v1+json"
	mtDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
)

// sink is the ResponseWriter of a request a warm sends into an upstream's
// handler: the same handler chain a client's request reaches, in-process,
// so that fills, single-flight, verification, metrics and the access log
// are the cache's own. It keeps a manifest's body, and only counts a
// blob's.
type sink struct {
	header http.Header
	status int
	keep   bool // keep the body (a manifest)
	body   bytes.Buffer
	n      int64
	onData func(n int) // called for each write of a blob's body
}

func newSink(keep bool, onData func(int)) *sink {
	return &sink{header: http.Header{}, keep: keep, onData: onData}
}

func (s *sink) Header() http.Header { return s.header }

func (s *sink) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
}

func (s *sink) Write(p []byte) (int, error) {
	s.WriteHeader(http.StatusOK)
	s.n += int64(len(p))
	// An error answer is kept too: its OCI message says what went wrong.
	if s.keep || s.status >= 300 {
		if s.body.Len()+len(p) > maxManifest {
			return 0, errors.New("answer too large")
		}
		s.body.Write(p)
	} else if s.onData != nil {
		s.onData(len(p))
	}
	return len(p), nil
}

// Flush lets the handler flush as it would to a client; there is nothing
// to flush.
func (s *sink) Flush() {}

// handlerPanic is a panic of the handler a warm called in-process, which
// net/http would have recovered for a client. Its message is for the
// client; the value and stack are for the log.
type handlerPanic struct {
	value any
	stack []byte
}

func (p *handlerPanic) Error() string {
	if p.value == http.ErrAbortHandler {
		// What a client sees as a connection cut mid-answer: the
		// upstream's stream broke off, or did not verify.
		return "the cache broke the answer off"
	}
	return "the cache failed to answer (the server log has the details)"
}

// get sends GET path through h and fills s with the answer.
func get(ctx context.Context, h http.Handler, path, accept string, s *sink) error {
	return send(ctx, h, http.MethodGet, path, accept, s)
}

// send sends a bodiless request through h and fills s with the answer.
func send(ctx context.Context, h http.Handler, method, path, accept string, s *sink) (err error) {
	req, err := http.NewRequestWithContext(ctx, method, path, nil)
	if err != nil {
		return fmt.Errorf("build request for %s: %w", path, err)
	}
	req.RequestURI = path
	req.RemoteAddr = "127.0.0.1:0" // in-process: this host's own warm
	req.Header.Set("User-Agent", "multiproxy-warm")
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	defer func() {
		if v := recover(); v != nil {
			err = &handlerPanic{value: v, stack: debug.Stack()}
		}
	}()
	h.ServeHTTP(s, req)
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return nil
}

// answerError describes a non-success answer of the cache in the client's
// terms: its status and the OCI error message the cache wrote for
// clients, which holds no internals.
func answerError(what string, s *sink) error {
	msg := http.StatusText(s.status)
	var oci struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if json.Unmarshal(s.body.Bytes(), &oci) == nil && len(oci.Errors) > 0 {
		e := oci.Errors[0]
		msg = e.Code
		if e.Message != "" {
			msg += ": " + e.Message
		}
	}
	return fmt.Errorf("%s: %d %s", what, s.status, msg)
}

// manifest is what a warm needs of a manifest or index.
type manifest struct {
	MediaType string       `json:"mediaType"`
	Config    *descriptor  `json:"config"`
	Layers    []descriptor `json:"layers"`
	Manifests []descriptor `json:"manifests"`
}

type descriptor struct {
	MediaType string        `json:"mediaType"`
	Digest    digest.Digest `json:"digest"`
	Size      int64         `json:"size"`
	Platform  *descPlatform `json:"platform"`
}

// descPlatform is an index entry's platform.
type descPlatform struct {
	OS           string `json:"os"`
	Architecture string `json:"architecture"`
	Variant      string `json:"variant"`
}

// fetchManifest GETs repo's manifest ref (a tag or digest) through h and
// checks its bytes against want, or else against the digest the cache
// answered with: a warm never reports a digest it did not see.
func fetchManifest(ctx context.Context, h http.Handler, repo, ref string, want digest.Digest) (manifest, digest.Digest, string, error) {
	s := newSink(true, nil)
	sep := ":"
	if strings.Contains(ref, ":") {
		sep = "@" // a digest
	}
	what := "manifest " + repo + sep + ref
	if err := get(ctx, h, "/v2/"+repo+"/manifests/"+ref, acceptManifests, s); err != nil {
		return manifest{}, "", "", fmt.Errorf("%s: %w", what, err)
	}
	if s.status != http.StatusOK {
		return manifest{}, "", "", answerError(what, s)
	}
	if want == "" {
		d, err := digest.Parse(s.header.Get("Docker-Content-Digest"))
		if err != nil {
			return manifest{}, "", "", fmt.Errorf("%s: the answer has no valid Docker-Content-Digest", what)
		}
		want = d
	}
	if !want.Algorithm().Available() {
		return manifest{}, "", "", fmt.Errorf("%s: digest algorithm %s is not supported", what, want.Algorithm())
	}
	if got := want.Algorithm().FromBytes(s.body.Bytes()); got != want {
		return manifest{}, "", "", fmt.Errorf("%s: content has digest %s, want %s", what, got, want)
	}
	var m manifest
	if err := json.Unmarshal(s.body.Bytes(), &m); err != nil {
		return manifest{}, "", "", fmt.Errorf("%s: not a JSON manifest: %w", what, err)
	}
	mt := m.MediaType
	if ct, _, _ := strings.Cut(s.header.Get("Content-Type"), ";"); mt == "" {
		mt = strings.TrimSpace(ct)
	}
	return m, want, mt, nil
}

// headBlob asks h for a blob's size as a client's HEAD does: from the
// store, it claims the blob from a collection running now and counts a hit,
// without reading it.
func headBlob(ctx context.Context, h http.Handler, repo string, d descriptor) bool {
	s := newSink(false, nil)
	err := send(ctx, h, http.MethodHead, "/v2/"+repo+"/blobs/"+d.Digest.String(), "", s)
	return err == nil && s.status == http.StatusOK
}

// fetchBlob GETs one blob through h, reading its body to the end, and
// returns the bytes read. A redirect is an answer from the store: the
// cache redirects only blobs it holds (storage.s3.redirect).
func fetchBlob(ctx context.Context, h http.Handler, repo string, d descriptor, onData func(int)) (int64, error) {
	s := newSink(false, onData)
	what := "blob " + d.Digest.String()
	if err := get(ctx, h, "/v2/"+repo+"/blobs/"+d.Digest.String(), "", s); err != nil {
		return s.n, fmt.Errorf("%s: %w", what, err)
	}
	switch {
	case s.status == http.StatusTemporaryRedirect || s.status == http.StatusFound:
		return 0, nil
	case s.status != http.StatusOK:
		return 0, answerError(what, s)
	case s.n != d.Size:
		return s.n, fmt.Errorf("%s: got %d bytes, the manifest says %d", what, s.n, d.Size)
	}
	return s.n, nil
}
