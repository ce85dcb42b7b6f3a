// Package distlog carries what the embedded distribution registries log
// into the process's slog handler, so that an operator reads one log in one
// format.
//
// Distribution v3 logs through logrus's standard logger only: its context
// logger package (dcontext) is internal, so no App can be given a logger of
// its own (dcontext.WithLogger cannot be called from outside the module);
// NewApp reads no level or formatter from configuration.Log (only mail
// hooks, which it adds to the same standard logger); App.ServeHTTP builds
// each request's logger from the request's context, falling back to the
// standard logger; and parts of it (notifications, the storage walk) call
// logrus's package functions directly. So the one adapter is installed once
// per process, on logrus's standard logger, and sync.Once keeps it at that.
package distlog

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

var once sync.Once

// Install sends distribution's warnings and errors to h, from the first call
// on; later calls change nothing (see the package comment for why there is
// one per process). Below warnings nothing is passed on: distribution logs
// every request at info level, and our own access log is the one line per
// request.
func Install(h slog.Handler) {
	once.Do(func() {
		std := logrus.StandardLogger()
		std.SetLevel(logrus.WarnLevel)
		std.SetOutput(io.Discard)
		std.AddHook(hook{h: h})
	})
}

// hook passes logrus entries on to a slog handler.
type hook struct{ h slog.Handler }

func (hook) Levels() []logrus.Level { return logrus.AllLevels }

func (k hook) Fire(e *logrus.Entry) error {
	level := slogLevel(e.Level)
	ctx := e.Context
	if ctx == nil {
		ctx = context.Background()
	}
	if !k.h.Enabled(ctx, level) {
		return nil
	}
	t := e.Time
	if t.IsZero() {
		t = time.Now()
	}
	r := slog.NewRecord(t, level, e.Message, 0)
	r.AddAttrs(slog.String("component", "distribution"))
	for _, key := range slices.Sorted(maps.Keys(e.Data)) {
		v := e.Data[key]
		if err, ok := v.(error); ok {
			v = err.Error()
		}
		r.AddAttrs(slog.Any(key, v))
	}
	if err := k.h.Handle(ctx, r); err != nil {
		return fmt.Errorf("distlog: %w", err)
	}
	return nil
}

func slogLevel(l logrus.Level) slog.Level {
	switch {
	case l <= logrus.ErrorLevel: // panic, fatal, error
		return slog.LevelError
	case l == logrus.WarnLevel:
		return slog.LevelWarn
	case l == logrus.InfoLevel:
		return slog.LevelInfo
	default:
		return slog.LevelDebug
	}
}
