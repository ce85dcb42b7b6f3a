package testsupport

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	awss3 "github.com/aws/aws-sdk-go/service/s3"

	"github.com/multiproxy/multiproxy/internal/testinfra"
)

// S3Gate is a reverse proxy in front of StartS3's gateway that makes the
// bucket behave like object stores versitygw is not, where the product's
// rules depend on it, and lets a test act around chosen calls:
//
//   - Lag: the store's clock runs behind. Every LastModified the store
//     reports (the Last-Modified header of HEAD and GET, and
//     <LastModified> and <Initiated> in XML answers: object and
//     multipart listings, copies) is Lag earlier than versitygw's. Debian's
//     faketime cannot do this: versitygw is a Go binary, which reads the
//     clock through the vDSO rather than libc, and its posix backend
//     reports an object's LastModified from the file's mtime, which the
//     kernel stamps.
//   - MultipartStart: an object written by CompleteMultipartUpload reports
//     its upload's start (CreateMultipartUpload) as LastModified, as AWS S3
//     does; versitygw reports the completion.
//
// Requests go through unchanged, with the Host header the client signed
// (SigV4), so the gateway authenticates them as usual.
type S3Gate struct {
	// URL is the gate's endpoint: an S3 endpoint to give a driver or a
	// client in place of the gateway's.
	URL string

	s3   *S3
	opts S3GateOptions

	mu     sync.Mutex
	starts map[string]time.Time // upload ID: when the gateway answered CreateMultipartUpload
	begun  map[string]time.Time // key: its upload's start, while the key holds a completed multipart object
	before []gateHook
	after  []gateHook
	client *awss3.S3
}

// S3GateOptions say how an S3Gate's store differs from versitygw.
type S3GateOptions struct {
	// Lag is how far the store's clock is behind the gateway's.
	Lag time.Duration
	// MultipartStart reports a multipart object's upload start as its
	// LastModified.
	MultipartStart bool
}

// S3Call is one request through an S3Gate, as the S3 API names it.
type S3Call struct {
	// Op is the S3 operation: HeadObject, GetObject, PutObject,
	// CopyObject, DeleteObject, DeleteObjects, CreateMultipartUpload,
	// UploadPart, CompleteMultipartUpload, AbortMultipartUpload,
	// ListParts, ListObjects, ListObjectsV2, ListMultipartUploads, or
	// Other.
	Op string
	// Key is the object's key (no leading slash), "" for a bucket call.
	Key string
	// Prefix is a listing's prefix.
	Prefix string
	// Status is the gateway's answer, in an After hook; 0 before.
	Status int
}

type gateHook struct {
	match func(S3Call) bool
	f     func(S3Call)
}

type callKey struct{}

// StartS3Gate starts a gate in front of s on a free 127.0.0.1 port and
// closes it when the test ends.
func StartS3Gate(t testing.TB, s *S3, o S3GateOptions) *S3Gate {
	t.Helper()
	g := StartS3GateAt(t, s.Endpoint, o)
	g.s3 = s
	client, err := testinfra.S3Client(g.URL, s.AccessKey, s.SecretKey, s.Region)
	if err != nil {
		t.Fatalf("testsupport: S3 client through the gate: %v", err)
	}
	g.client = client
	return g
}

// StartS3GateAt starts a gate in front of the S3 endpoint gateway (a
// StartS3 gateway's Endpoint), for a test that has only its address. Its
// Client and DriverParameters are StartS3Gate's only.
func StartS3GateAt(t testing.TB, gateway string, o S3GateOptions) *S3Gate {
	t.Helper()
	target, err := url.Parse(gateway)
	if err != nil {
		t.Fatalf("testsupport: gateway endpoint: %v", err)
	}
	g := &S3Gate{opts: o, starts: map[string]time.Time{}, begun: map[string]time.Time{}}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Host = r.In.Host // signed by the client (SigV4)
			// Answers whose times are rewritten come uncompressed. Go's
			// transport adds Accept-Encoding after signing, so it is not
			// a signed header.
			r.Out.Header.Del("Accept-Encoding")
		},
		ModifyResponse: g.rewrite,
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := g.call(r)
		g.run(g.hooks(false), c)
		proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callKey{}, c)))
	}))
	t.Cleanup(srv.Close)
	g.URL = srv.URL
	return g
}

// Client is an S3 client with the gateway's root credentials that goes
// through the gate.
func (g *S3Gate) Client() *awss3.S3 { return g.client }

// DriverParameters are the gateway's s3-aws driver parameters
// (S3.DriverParameters) with the gate as the endpoint.
func (g *S3Gate) DriverParameters() map[string]any {
	if g.s3 == nil {
		panic("testsupport: DriverParameters of a gate from StartS3GateAt")
	}
	p := g.s3.DriverParameters()
	p["regionendpoint"] = g.URL
	return p
}

// Before runs f on every call that match accepts, before it is sent to
// the gateway. f may block: the call waits for it, so a test can hold a
// writer or the collector at a chosen point. A blocked f must return
// before the test's end: the gate's server waits for its calls.
func (g *S3Gate) Before(match func(S3Call) bool, f func(S3Call)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.before = append(g.before, gateHook{match, f})
}

// After runs f on every call that match accepts once the gateway has
// answered (Status is set), before the client sees the answer. f may
// block: the call has happened in the bucket, and the client does not
// know yet.
func (g *S3Gate) After(match func(S3Call) bool, f func(S3Call)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.after = append(g.after, gateHook{match, f})
}

func (g *S3Gate) hooks(after bool) []gateHook {
	g.mu.Lock()
	defer g.mu.Unlock()
	if after {
		return append([]gateHook(nil), g.after...)
	}
	return append([]gateHook(nil), g.before...)
}

func (g *S3Gate) run(hooks []gateHook, c S3Call) {
	for _, h := range hooks {
		if h.match(c) {
			h.f(c)
		}
	}
}

// call names a path-style request.
func (g *S3Gate) call(r *http.Request) S3Call {
	_, key, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	q := r.URL.Query()
	c := S3Call{Key: key, Prefix: q.Get("prefix"), Op: "Other"}
	switch {
	case key == "" && r.Method == http.MethodGet && q.Has("uploads"):
		c.Op = "ListMultipartUploads"
	case key == "" && r.Method == http.MethodGet && q.Get("list-type") == "2":
		c.Op = "ListObjectsV2"
	case key == "" && r.Method == http.MethodGet && len(q) > 0 && !q.Has("location") && !q.Has("versioning"):
		c.Op = "ListObjects"
	case key == "" && r.Method == http.MethodPost && q.Has("delete"):
		c.Op = "DeleteObjects"
	case key == "":
	case r.Method == http.MethodHead:
		c.Op = "HeadObject"
	case r.Method == http.MethodGet && q.Has("uploadId"):
		c.Op = "ListParts"
	case r.Method == http.MethodGet:
		c.Op = "GetObject"
	case r.Method == http.MethodPut && q.Has("uploadId"):
		c.Op = "UploadPart"
	case r.Method == http.MethodPut && r.Header.Get("X-Amz-Copy-Source") != "":
		c.Op = "CopyObject"
	case r.Method == http.MethodPut:
		c.Op = "PutObject"
	case r.Method == http.MethodPost && q.Has("uploads"):
		c.Op = "CreateMultipartUpload"
	case r.Method == http.MethodPost && q.Has("uploadId"):
		c.Op = "CompleteMultipartUpload"
	case r.Method == http.MethodDelete && q.Has("uploadId"):
		c.Op = "AbortMultipartUpload"
	case r.Method == http.MethodDelete:
		c.Op = "DeleteObject"
	}
	return c
}

var (
	uploadIDRe = regexp.MustCompile(`<UploadId>([^<]+)</UploadId>`)
	// A listed object, or a time anywhere else in an answer.
	timesRe = regexp.MustCompile(`(?s)<Contents>.*?</Contents>|<(LastModified|Initiated)>[^<]*</(?:LastModified|Initiated)>`)
	keyRe   = regexp.MustCompile(`<Key>([^<]*)</Key>`)
	lmRe    = regexp.MustCompile(`<LastModified>([^<]*)</LastModified>`)
	elemRe  = regexp.MustCompile(`^<(\w+)>([^<]*)</\w+>$`)
)

// rewrite records what multipart uploads did and shifts the answer's
// times, then runs the After hooks.
func (g *S3Gate) rewrite(resp *http.Response) error {
	c, _ := resp.Request.Context().Value(callKey{}).(S3Call)
	c.Status = resp.StatusCode
	var body []byte
	xml := strings.Contains(resp.Header.Get("Content-Type"), "xml") && c.Op != "GetObject"
	if xml {
		var err error
		body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
	}
	ok := resp.StatusCode/100 == 2 && !bytes.Contains(body, []byte("<Error>"))
	g.mu.Lock()
	switch {
	case !ok:
	case c.Op == "CreateMultipartUpload":
		if m := uploadIDRe.FindSubmatch(body); m != nil {
			g.starts[string(m[1])] = time.Now().Truncate(time.Second)
		}
	case c.Op == "CompleteMultipartUpload":
		id := resp.Request.URL.Query().Get("uploadId")
		if at, found := g.starts[id]; found {
			g.begun[c.Key] = at
		}
		delete(g.starts, id)
	case c.Op == "PutObject" || c.Op == "CopyObject":
		delete(g.begun, c.Key)
	}
	g.mu.Unlock()

	if lm := resp.Header.Get("Last-Modified"); lm != "" {
		if at, err := http.ParseTime(lm); err == nil {
			resp.Header.Set("Last-Modified", g.reported(c.Key, at).UTC().Format(http.TimeFormat))
		}
	}
	if xml {
		body = timesRe.ReplaceAllFunc(body, func(m []byte) []byte {
			if bytes.HasPrefix(m, []byte("<Contents>")) {
				key := ""
				if k := keyRe.FindSubmatch(m); k != nil {
					key = unescapeXML(string(k[1]))
				}
				return lmRe.ReplaceAllFunc(m, func(e []byte) []byte { return g.shiftElem(key, e) })
			}
			return g.shiftElem("", m)
		})
		resp.Body = io.NopCloser(bytes.NewReader(body))
		resp.ContentLength = int64(len(body))
		resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
	}
	g.run(g.hooks(true), c)
	return nil
}

// shiftElem rewrites one <LastModified> or <Initiated> element of key's.
func (g *S3Gate) shiftElem(key string, e []byte) []byte {
	m := elemRe.FindSubmatch(e)
	if m == nil {
		return e
	}
	at, err := time.Parse(time.RFC3339Nano, string(m[2]))
	if err != nil {
		return e
	}
	if string(m[1]) != "LastModified" {
		key = "" // an upload's Initiated is its start already
	}
	return []byte("<" + string(m[1]) + ">" + g.reported(key, at).UTC().Format("2006-01-02T15:04:05.000Z") + "</" + string(m[1]) + ">")
}

// reported is what the store says of key's LastModified where versitygw
// says at.
func (g *S3Gate) reported(key string, at time.Time) time.Time {
	if key != "" && g.opts.MultipartStart {
		g.mu.Lock()
		began, ok := g.begun[key]
		g.mu.Unlock()
		if ok {
			at = began
		}
	}
	return at.Add(-g.opts.Lag)
}

func unescapeXML(s string) string {
	return strings.NewReplacer("&amp;", "&", "&lt;", "<", "&gt;", ">", "&quot;", `"`, "&apos;", "'").Replace(s)
}
