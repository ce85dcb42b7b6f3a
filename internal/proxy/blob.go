package proxy

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"
)

func (s *Server) serveBlob(w *recorder, r *http.Request, route apiRoute) {
	ctx := r.Context()
	d, err := digest.Parse(route.ref)
	if err != nil {
		writeError(w, http.StatusBadRequest, codeDigestInvalid, "invalid digest")
		return
	}
	if r.Method == http.MethodHead {
		// A HEAD asks whether the blob exists and how big it is: the store
		// or one upstream HEAD answers that, never a download.
		size, err := s.cache.BlobSize(ctx, route.repo, d)
		if err != nil {
			s.writeUpstreamError(w, r, err, kindBlob)
			return
		}
		setBlobHeaders(w.Header(), d)
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		w.Header().Set("Accept-Ranges", "bytes")
		w.WriteHeader(http.StatusOK)
		return
	}
	if u, ok := s.cache.RedirectURL(r, route.repo, d); ok {
		// storage.s3.redirect: the bucket sends the bytes, presigned
		// for this one blob; containerd and skopeo follow a 307.
		w.Header().Set("Docker-Content-Digest", d.String())
		http.Redirect(w, r, u, http.StatusTemporaryRedirect)
		return
	}
	b, err := s.cache.Blob(ctx, route.repo, d)
	if err != nil {
		s.writeUpstreamError(w, r, err, kindBlob)
		return
	}
	defer b.Close()
	g := newStallGuard(w)
	if b.File != nil {
		// Straight from the file, with the headers distribution's
		// ServeBlob sets, so the kernel can copy it (sendfile) and ranges
		// work. Measured on loopback, sendfile halves the CPU per byte at
		// 16 clients for the same throughput, though one stream alone
		// runs a little slower than a user-space copy (1.85 against
		// 2.4 GB/s), far above any NIC.
		setBlobHeaders(w.Header(), d)
		w.Header().Set("Cache-Control", "max-age=31536000")
		http.ServeContent(g, r, "", time.Time{}, b.File)
		s.dropIfStalled(g, route, d)
		g.finish()
		return
	}
	st := b.Stream
	if r.Header.Get("Range") != "" && ifRangeHolds(r, d) {
		s.serveColdRange(w, g, r, route, d, st)
		return
	}
	// The status goes out only with the first byte: a fill that fails
	// before it (the upstream stalls after its headers, a CDN refuses)
	// still gets a clean error status instead of a 200 cut short.
	buf := make([]byte, 256<<10)
	n, err := st.Read(buf)
	if err != nil && !(err == io.EOF && n == 0 && st.Size() == 0) {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		s.writeUpstreamError(w, r, err, kindBlob)
		return
	}
	w.fromUpstream = true
	setBlobHeaders(w.Header(), d)
	if st.Size() >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(st.Size(), 10))
	}
	w.WriteHeader(http.StatusOK)
	if n > 0 {
		if _, err := g.Write(buf[:n]); err != nil {
			s.dropIfStalled(g, route, d)
			panic(http.ErrAbortHandler)
		}
	}
	if _, err := st.WriteTo(g); err != nil {
		s.dropIfStalled(g, route, d)
		if ctx.Err() == nil {
			s.log.Warn("blob stream aborted", "repository", route.repo, "digest", d, "err", err)
		}
		// Abort the connection: a clean end would let the client take a
		// short or unverified body for the blob.
		panic(http.ErrAbortHandler)
	}
	g.finish()
}

// dropIfStalled closes the connection of a client that stopped reading a
// blob: its stream is closed on the way out, so a fill paced to it goes on
// for the others.
func (s *Server) dropIfStalled(g *stallGuard, route apiRoute, d digest.Digest) {
	if g.stalled == nil {
		return
	}
	g.cause = fmt.Errorf("client stalled: no progress for %v: %w", g.timeout, g.stalled)
	s.log.Warn("client stopped reading a blob; dropped", "repository", route.repo, "digest", d,
		"sent", g.bytes, "stall_timeout", g.timeout)
	panic(http.ErrAbortHandler)
}

func setBlobHeaders(h http.Header, d digest.Digest) {
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Etag", `"`+d.String()+`"`)
	h.Set("Docker-Distribution-Api-Version", "registry/2.0")
}
