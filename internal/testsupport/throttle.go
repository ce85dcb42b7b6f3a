package testsupport

import (
	"net/http"
	"time"
)

// Throttle passes the request through but sends the body at about
// bytesPerSecond, flushing as it goes, so a test can watch what happens
// while a download is still running (first bytes, joins, kills).
func Throttle(bytesPerSecond int64) Action {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		next.ServeHTTP(&slowWriter{ResponseWriter: w, rate: bytesPerSecond, done: r.Context().Done()}, r)
	}
}

type slowWriter struct {
	http.ResponseWriter
	rate int64
	done <-chan struct{}
}

const slowChunk = 64 << 10

func (s *slowWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := min(len(p), slowChunk)
		m, err := s.ResponseWriter.Write(p[:n])
		written += m
		if err != nil {
			return written, err
		}
		if f, ok := s.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		p = p[n:]
		select {
		case <-time.After(time.Duration(int64(n) * int64(time.Second) / s.rate)):
		case <-s.done:
			abort()
		}
	}
	return written, nil
}

func (s *slowWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
