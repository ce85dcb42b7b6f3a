package upstream

import (
	"errors"
	"io"
	"sync"
	"time"
)

// errIdle reports an upstream body that stopped sending.
var errIdle = errors.New("upstream body idle past timeout")

// idleBody ends a body whose reads make no progress for longer than timeout.
// A black-holed upstream mid-stream would otherwise hang a fill, and every
// client waiting on it, forever. Only time spent inside Read counts: a fill
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
