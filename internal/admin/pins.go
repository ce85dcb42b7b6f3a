package admin

// The pins API, behind `multiproxy pin`:
//
//	GET    /api/v1/pins[?upstream=]        every pin and what pins hold
//	POST   /api/v1/pins  {"upstream", "ref"}  pin an image       (guarded)
//	DELETE /api/v1/pins?ref=[&upstream=]   unpin it              (guarded)
//
// A ref is repo:tag or repo@digest within the upstream named, or, without
// an upstream, an image reference whose registry names it
// (docker.io/library/nginx:1.25, or nginx:1.25 for Docker Hub).

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"

	"github.com/gorilla/mux"
)

// Pinner is what the pins API acts on. A Backend that implements it serves
// /api/v1/pins; one that does not answers 404 there.
type Pinner interface {
	// Pins lists the pins of one upstream, or of all with upstream "".
	Pins(ctx context.Context, upstream string) ([]UpstreamPins, error)
	// AddPin pins ref; a ref that would make pins hold more than the
	// upstream's max_size is refused with a 4xx StatusError.
	AddPin(ctx context.Context, upstream, ref string) (Pin, error)
	// RemovePin unpins a ref pinned through AddPin.
	RemovePin(ctx context.Context, upstream, ref string) error
}

// PinRequest is the body of POST /api/v1/pins.
type PinRequest struct {
	Upstream string `json:"upstream,omitempty"`
	Ref      string `json:"ref"`
}

// Pin is one pinned image.
type Pin struct {
	Upstream string `json:"upstream"`
	Ref      string `json:"ref"`
	// Source is "config" (upstreams[].pins) or "api" (pin add).
	Source string `json:"source"`
	// Digest is the manifest the pin stands for in the store now; empty
	// until it is cached.
	Digest string `json:"digest,omitempty"`
	// Bytes are the cached manifests and blobs it holds.
	Bytes int64 `json:"bytes"`
}

// UpstreamPins is one upstream's pins and what they hold together.
type UpstreamPins struct {
	Upstream    string `json:"upstream"`
	PinnedBytes int64  `json:"pinned_bytes"`
	// MaxSize is the upstream's max_size, 0 for none.
	MaxSize int64 `json:"max_size"`
	Pins    []Pin `json:"pins"`
}

// PinsAnswer is the body of GET /api/v1/pins.
type PinsAnswer struct {
	Upstreams []UpstreamPins `json:"upstreams"`
}

// maxPinBody bounds a POST body: a ref is a line.
const maxPinBody = 64 << 10

func routePins(r *mux.Router, o Options, log *slog.Logger) {
	pinner, ok := o.Backend.(Pinner)
	if !ok {
		return
	}
	const path = "/api/v1/pins"
	writeErr := func(w http.ResponseWriter, req *http.Request, err error) { writeError(w, req, log, err) }
	r.HandleFunc(path, func(w http.ResponseWriter, req *http.Request) {
		ups, err := pinner.Pins(req.Context(), strings.TrimSpace(req.URL.Query().Get("upstream")))
		if err != nil {
			writeErr(w, req, err)
			return
		}
		writeJSON(w, http.StatusOK, PinsAnswer{Upstreams: ups})
	}).Methods(http.MethodGet)
	r.Handle(path, guard(o, log, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var body PinRequest
		dec := json.NewDecoder(io.LimitReader(req.Body, maxPinBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil {
			writeJSON(w, http.StatusBadRequest, errBody(fmt.Sprintf(`want a JSON body {"upstream": NAME, "ref": REPO:TAG or REPO@DIGEST}: %v`, err)))
			return
		}
		if strings.TrimSpace(body.Ref) == "" {
			writeJSON(w, http.StatusBadRequest, errBody(`"ref" required, e.g. {"ref": "docker.io/library/nginx:1.25"}`))
			return
		}
		pin, err := pinner.AddPin(req.Context(), strings.TrimSpace(body.Upstream), strings.TrimSpace(body.Ref))
		if err != nil {
			writeErr(w, req, err)
			return
		}
		writeJSON(w, http.StatusOK, pin)
	}))).Methods(http.MethodPost)
	r.Handle(path, guard(o, log, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		q := req.URL.Query()
		ref := strings.TrimSpace(q.Get("ref"))
		if ref == "" {
			writeJSON(w, http.StatusBadRequest, errBody("ref parameter required, e.g. ?ref=docker.io/library/nginx:1.25"))
			return
		}
		if err := pinner.RemovePin(req.Context(), strings.TrimSpace(q.Get("upstream")), ref); err != nil {
			writeErr(w, req, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"unpinned": ref})
	}))).Methods(http.MethodDelete)
}

// Pins lists the pins of one upstream, or of all with upstream "".
func (c Client) Pins(ctx context.Context, upstream string) (PinsAnswer, error) {
	var out PinsAnswer
	path := "/api/v1/pins"
	if upstream != "" {
		path += "?" + url.Values{"upstream": {upstream}}.Encode()
	}
	err := c.call(ctx, http.MethodGet, path, &out)
	return out, err
}

// AddPin pins ref (see the package's pins API).
func (c Client) AddPin(ctx context.Context, upstream, ref string) (Pin, error) {
	body, err := json.Marshal(PinRequest{Upstream: upstream, Ref: ref})
	if err != nil {
		return Pin{}, err
	}
	var out Pin
	err = c.callBody(ctx, http.MethodPost, "/api/v1/pins", body, &out)
	return out, err
}

// RemovePin unpins ref.
func (c Client) RemovePin(ctx context.Context, upstream, ref string) error {
	q := url.Values{"ref": {ref}}
	if upstream != "" {
		q.Set("upstream", upstream)
	}
	return c.call(ctx, http.MethodDelete, "/api/v1/pins?"+q.Encode(), nil)
}
