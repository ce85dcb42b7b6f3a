package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"

	"github.com/multiproxy/multiproxy/internal/warm"
)

// Warmer is the Backend's side of POST /api/v1/warm, kept apart from
// Backend so that a Backend without warming still serves the rest: the
// endpoint then answers 404.
type Warmer interface {
	// Warm warms req's images, calling emit for each event as it happens
	// (never concurrently), the summary last. An error returned before
	// the first emit is answered as the other endpoints' errors are;
	// after it, the stream has begun and the error is only logged.
	Warm(ctx context.Context, req warm.Request, emit func(warm.Event)) error
}

// maxWarmBody bounds a warm request: some 80,000 references.
const maxWarmBody = 8 << 20

// serveWarm answers POST /api/v1/warm: a JSON request, then the events as
// NDJSON, each flushed as it happens so that the CLI shows progress.
func serveWarm(o Options, log *slog.Logger, w http.ResponseWriter, req *http.Request) {
	warmer, ok := o.Backend.(Warmer)
	if !ok {
		writeJSON(w, http.StatusNotFound, errBody("this server does not warm"))
		return
	}
	var body warm.Request
	dec := json.NewDecoder(http.MaxBytesReader(w, req.Body, maxWarmBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		writeJSON(w, http.StatusBadRequest, errBody("bad request body: "+decodeProblem(err)))
		return
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		writeJSON(w, http.StatusBadRequest, errBody("bad request body: want one JSON object"))
		return
	}
	if err := body.Check(); err != nil {
		writeJSON(w, http.StatusBadRequest, errBody(err.Error()))
		return
	}

	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	started := false
	var writeErr error
	emit := func(e warm.Event) {
		if writeErr != nil {
			return // the client went away; the warm goes on, as a pull's fill does
		}
		if !started {
			started = true
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.Header().Set("Cache-Control", "no-store")
			w.WriteHeader(http.StatusOK)
		}
		if writeErr = enc.Encode(e); writeErr == nil {
			writeErr = rc.Flush()
		}
	}
	err := warmer.Warm(req.Context(), body, emit)
	switch {
	case err != nil && !started:
		writeError(w, req, log, err)
	case err != nil:
		log.Error("warm failed after its answer began", "err", err)
	case writeErr != nil:
		log.Info("warm client went away before the end", "remote", req.RemoteAddr, "err", writeErr)
	}
}

// decodeProblem says what is wrong with a request body without echoing
// Go type names at the client.
func decodeProblem(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var big *http.MaxBytesError
	switch {
	case errors.Is(err, io.EOF):
		return "empty; want a JSON object such as {\"images\": [\"docker.io/library/nginx:1.25\"]}"
	case errors.As(err, &syn):
		return fmt.Sprintf("invalid JSON at byte %d", syn.Offset)
	case errors.As(err, &typ):
		return fmt.Sprintf("%s has the wrong type: want %s", typ.Field, typ.Type)
	case errors.As(err, &big):
		return fmt.Sprintf("larger than %d bytes", big.Limit)
	}
	// "json: unknown field \"x\"" and the like: short and the client's own.
	return err.Error()
}
