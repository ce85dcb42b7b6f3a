package proxy

import (
	"errors"
	"io"
	"math"
	"net/http"
	"os"
	"time"
)

// stallTimeout is how long a client may take to accept one chunk of a blob
// (stallChunk bytes) before it is dropped. A client that stops reading
// would otherwise hold its handler, its file or spool descriptor and, on a
// pass-through fill paced to its slowest client, every other client of the
// fill. A variable so that tests need not wait 30 s.
var stallTimeout = 30 * time.Second

// stallChunk is the most written under one deadline. It is the progress a
// client must make per stallTimeout: 256 KiB in 30 s is about 8.7 KB/s,
// slower than any pull worth waiting for. Larger chunks would let a client
// trickle a few bytes a second for minutes; smaller ones cost a deadline
// and a sendfile call per few pages.
const stallChunk = 256 << 10

// stallGuard writes a blob's body to a client in chunks, each under a
// fresh write deadline, so that a client that makes no progress for
// stallTimeout gets a failed write instead of holding the handler forever.
// It keeps the recorder's ReadFrom, so the stored file and a fill's spool
// still go by sendfile, one chunk per deadline.
type stallGuard struct {
	*recorder
	rc      *http.ResponseController
	timeout time.Duration
	stalled error // the write that missed its deadline, if one did
}

func newStallGuard(w *recorder) *stallGuard {
	return &stallGuard{recorder: w, rc: http.NewResponseController(w), timeout: stallTimeout}
}

func (g *stallGuard) arm() {
	// Every writer in this server supports deadlines; one that did not
	// (http.ErrNotSupported) would still get the body, without the guard.
	_ = g.rc.SetWriteDeadline(time.Now().Add(g.timeout))
}

func (g *stallGuard) note(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) && g.stalled == nil {
		g.stalled = err
	}
	return err
}

func (g *stallGuard) Write(p []byte) (int, error) {
	var total int
	for len(p) > 0 {
		g.arm()
		n, err := g.recorder.Write(p[:min(len(p), stallChunk)])
		total += n
		if err != nil {
			return total, g.note(err)
		}
		p = p[n:]
	}
	return total, nil
}

// ReadFrom sends src in chunks. A src that is an io.LimitedReader (what
// io.CopyN and http.ServeContent pass) is unwrapped rather than wrapped
// again: the kernel's sendfile is used only for a LimitedReader directly
// over a file.
func (g *stallGuard) ReadFrom(src io.Reader) (int64, error) {
	lr, ok := src.(*io.LimitedReader)
	if !ok {
		lr = &io.LimitedReader{R: src, N: math.MaxInt64}
	}
	var total int64
	for lr.N > 0 {
		g.arm()
		n, err := g.recorder.ReadFrom(&io.LimitedReader{R: lr.R, N: min(lr.N, stallChunk)})
		total += n
		lr.N -= n
		if err != nil {
			return total, g.note(err)
		}
		if n == 0 {
			return total, nil // src ended
		}
	}
	return total, nil
}

// finish sends what is buffered under a last deadline, then lifts it: the
// server sets no write timeout of its own, so a deadline left in place
// would fail the next response on this keep-alive connection.
func (g *stallGuard) finish() {
	g.arm()
	_ = g.note(g.rc.Flush())
	_ = g.rc.SetWriteDeadline(time.Time{})
}
