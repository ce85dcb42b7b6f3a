package upstream

import (
	"errors"
	"io"
	"sync"
	"time"
)

// errIdle reports a body that stopped sending.
var errIdle = errors.New("body idle past timeout")

// IdleBody ends a body whose reads make no progress for longer than timeout,
// calling cancel (which must abort the read: the request's context) and
// returning a CauseTimeout error. A black-holed upstream, peer replica or
// object store mid-stream would otherwise hang a fill, and every client
// waiting on it, for as long as the fill may run. Close calls cancel too.
func IdleBody(rc io.ReadCloser, timeout time.Duration, cancel func()) io.ReadCloser {
	return newIdleBody(rc, timeout, cancel)
}

// idleBody is IdleBody's reader. Only time spent inside Read counts: a fill
// that pauses its reads (a pass-through fill waiting for its slowest
// client, a slow disk) is not the upstream being idle.
type idleBody struct {
	rc      io.ReadCloser
	timer   *time.Timer
	timeout time.Duration
	cancel  func()

	mu    sync.Mutex
	fired bool
}

func newIdleBody(rc io.ReadCloser, timeout time.Duration, cancel func()) *idleBody {
	b := &idleBody{rc: rc, timeout: timeout, cancel: cancel}
	b.timer = time.AfterFunc(timeout, func() {
		b.mu.Lock()
		b.fired = true
		b.mu.Unlock()
		cancel()
	})
	b.timer.Stop()
	return b
}

func (b *idleBody) Read(p []byte) (int, error) {
	b.timer.Reset(b.timeout)
	n, err := b.rc.Read(p)
	b.timer.Stop()
	if err != nil && err != io.EOF {
		b.mu.Lock()
		fired := b.fired
		b.mu.Unlock()
		if fired {
			return n, &Error{Op: "read blob", Cause: CauseTimeout, Err: errIdle}
		}
		return n, classify("read blob", err)
	}
	return n, err
}

func (b *idleBody) Close() error {
	b.timer.Stop()
	err := b.rc.Close()
	b.cancel()
	return err
}
