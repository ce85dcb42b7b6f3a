package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/cache"
	"github.com/multiproxy/multiproxy/internal/upstream"
)

// maxHeldRange bounds the bytes of a range kept in memory until its blob is
// verified, when the fill passes through and no file holds them.
const maxHeldRange = 4 << 20

// byteRange is one range of a Range header, resolved against a size.
type byteRange struct{ start, end int64 } // inclusive

// parseOneRange reads a Range header that asks for one range of bytes, as
// http.ServeContent reads it. ok is false for anything else (several
// ranges, another unit, a malformed header), which the caller answers once
// the whole blob is known. unsatisfiable is a range that starts past the
// end.
func parseOneRange(h string, size int64) (r byteRange, ok, unsatisfiable bool) {
	spec, found := strings.CutPrefix(h, "bytes=")
	if !found || strings.Contains(spec, ",") || size < 0 {
		return byteRange{}, false, false
	}
	first, last, found := strings.Cut(strings.TrimSpace(spec), "-")
	if !found {
		return byteRange{}, false, false
	}
	first, last = strings.TrimSpace(first), strings.TrimSpace(last)
	if first == "" {
		// A suffix: the last n bytes.
		n, err := strconv.ParseInt(last, 10, 64)
		if err != nil || n < 0 || strings.HasPrefix(last, "-") {
			return byteRange{}, false, false
		}
		if n == 0 {
			return byteRange{}, true, true
		}
		return byteRange{start: max(size-n, 0), end: size - 1}, true, false
	}
	start, err := strconv.ParseInt(first, 10, 64)
	if err != nil || start < 0 || strings.HasPrefix(first, "+") {
		return byteRange{}, false, false
	}
	if start >= size {
		return byteRange{}, true, true
	}
	end := size - 1
	if last != "" {
		e, err := strconv.ParseInt(last, 10, 64)
		if err != nil || e < start || strings.HasPrefix(last, "+") {
			return byteRange{}, false, false
		}
		end = min(e, size-1)
	}
	return byteRange{start: start, end: end}, true, false
}

// pastTheEnd reports whether a Range header asks for several ranges that
// all start at or past the end of a blob of size bytes: ServeContent
// refuses those (416) from the size alone, as it does one such range, so
// no byte need be waited for.
func pastTheEnd(h string, size int64) bool {
	spec, found := strings.CutPrefix(h, "bytes=")
	if !found || size < 0 {
		return false
	}
	n := 0
	for part := range strings.SplitSeq(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue // as ServeContent skips it
		}
		first, _, found := strings.Cut(part, "-")
		first = strings.TrimSpace(first)
		start, err := strconv.ParseInt(first, 10, 64)
		if !found || first == "" || err != nil || start < size {
			return false
		}
		n++
	}
	return n > 0
}

// ifRangeHolds reports whether a Range header is to be honoured: without
// If-Range, or with one naming this blob's ETag. A date never matches: a
// blob has no modification time to compare, and ServeContent (the warm
// path) ignores the range then too.
func ifRangeHolds(r *http.Request, d digest.Digest) bool {
	ir := r.Header.Get("If-Range")
	return ir == "" || ir == `"`+d.String()+`"`
}

// serveColdRange answers a ranged GET of a blob that is being filled, with
// exactly the range, never the whole body unless the range covers it, and
// never an unverified byte:
//
//   - a range to the end (containerd resuming a layer with bytes=N-) is
//     streamed as the fill brings it: the blob's last byte, sent last, is
//     held back until the whole blob is verified, as for a whole body;
//   - any other range is answered once the fill is verified: from the
//     spool file, exactly as the stored file answers it (one range,
//     several, If-Range, 416), or, when the fill passed through and kept
//     no file, from the bytes of a single range held in memory meanwhile.
//
// Either way the request starts or joins the fill, so the blob is cached
// for the next pull.
func (s *Server) serveColdRange(w *recorder, g *stallGuard, r *http.Request, route apiRoute, d digest.Digest, st *cache.Stream) {
	size := st.Size()
	rng, single, unsatisfiable := parseOneRange(r.Header.Get("Range"), size)
	if size == 0 || (single && unsatisfiable) || pastTheEnd(r.Header.Get("Range"), size) {
		// The fill goes on for the cache; this client is answered now,
		// by the code that answers the stored file, which reads nothing
		// to refuse a range (one or several) or to send the no bytes of
		// an empty blob.
		setBlobHeaders(w.Header(), d)
		w.Header().Set("Cache-Control", "max-age=31536000")
		http.ServeContent(w, r, "", time.Time{}, sizeOnly(size))
		return
	}
	if single && rng.end == size-1 {
		s.streamRange(w, g, r, route, d, st, rng)
		return
	}

	// Read the fill to its verified end, keeping a single range's bytes in
	// memory if they are few: a pass-through fill keeps nothing else.
	keep := &rangeKeeper{r: rng, ok: single && rng.end-rng.start+1 <= maxHeldRange}
	if _, err := io.Copy(keep, st); err != nil {
		s.writeUpstreamError(w, r, err, kindBlob)
		return
	}
	w.fromUpstream = true
	setBlobHeaders(w.Header(), d)
	if f := st.Whole(); f != nil {
		w.Header().Set("Cache-Control", "max-age=31536000")
		http.ServeContent(g, r, "", time.Time{}, f)
		s.dropIfStalled(g, route, d)
		g.finish()
		return
	}
	if !keep.ok {
		// Several ranges, or one larger than memory may hold, of a blob
		// that could not be stored: the bytes are gone. The retry finds
		// the blob stored, or streams what it asks for.
		s.writeUpstreamError(w, r, &upstream.Error{Op: "get blob", Cause: upstream.CauseUnreachable,
			Err: errors.New("range of a blob passed through uncached; retry")}, kindBlob)
		return
	}
	h := w.Header()
	h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", rng.start, rng.end, size))
	h.Set("Content-Length", strconv.Itoa(keep.buf.Len()))
	h.Set("Accept-Ranges", "bytes")
	w.WriteHeader(http.StatusPartialContent)
	if _, err := g.Write(keep.buf.Bytes()); err != nil {
		s.dropIfStalled(g, route, d)
		panic(http.ErrAbortHandler)
	}
	g.finish()
}

// streamRange sends the bytes from rng.start to the end of a blob being
// filled, as they arrive. The status goes out with the first of them, so a
// fill failing before it is still a clean error.
func (s *Server) streamRange(w *recorder, g *stallGuard, r *http.Request, route apiRoute, d digest.Digest, st *cache.Stream, rng byteRange) {
	if _, err := io.CopyN(io.Discard, st, rng.start); err != nil {
		s.writeUpstreamError(w, r, noEOF(err), kindBlob)
		return
	}
	buf := make([]byte, 256<<10)
	n, err := st.Read(buf)
	if err != nil {
		s.writeUpstreamError(w, r, noEOF(err), kindBlob)
		return
	}
	w.fromUpstream = true
	h := w.Header()
	setBlobHeaders(h, d)
	h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", rng.start, rng.end, st.Size()))
	h.Set("Content-Length", strconv.FormatInt(rng.end-rng.start+1, 10))
	h.Set("Accept-Ranges", "bytes")
	w.WriteHeader(http.StatusPartialContent)
	if _, err := g.Write(buf[:n]); err != nil {
		s.dropIfStalled(g, route, d)
		panic(http.ErrAbortHandler)
	}
	if _, err := st.WriteTo(g); err != nil {
		s.dropIfStalled(g, route, d)
		if r.Context().Err() == nil {
			s.log.Warn("blob stream aborted", "repository", route.repo, "digest", d, "err", err)
		}
		panic(http.ErrAbortHandler)
	}
	g.finish()
}

// noEOF makes a body that ended early an error, not a clean end.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// rangeKeeper takes a blob's bytes in order and keeps those of one range.
type rangeKeeper struct {
	r   byteRange
	ok  bool // keep them; false: just count
	off int64
	buf bytes.Buffer
}

func (k *rangeKeeper) Write(p []byte) (int, error) {
	if k.ok {
		lo, hi := max(k.r.start-k.off, 0), min(k.r.end+1-k.off, int64(len(p)))
		if lo < hi {
			k.buf.Write(p[lo:hi])
		}
	}
	k.off += int64(len(p))
	return len(p), nil
}

// sizeOnly is a ReadSeeker of a known size and no bytes, for ServeContent
// to refuse a range with, which it does without reading.
type sizeOnly int64

func (z sizeOnly) Seek(offset int64, whence int) (int64, error) {
	if whence == io.SeekEnd {
		return int64(z) + offset, nil
	}
	return offset, nil
}

func (sizeOnly) Read([]byte) (int, error) { return 0, errors.New("no bytes to read") }
