package distlog_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"

	"github.com/multiproxy/multiproxy/internal/distlog"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A real App's warning (built without an HTTP secret, it says so) reaches
// the process's slog handler as a warning tagged as distribution's, with
// the App's instance; its info lines do not.
func TestAnAppsWarningReachesTheSlogHandler(t *testing.T) {
	var buf syncBuffer
	distlog.Install(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))

	cfg := &configuration.Configuration{
		Version: "0.1",
		Storage: configuration.Storage{
			"filesystem":  configuration.Parameters{"rootdirectory": t.TempDir()},
			"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
		},
	}
	//lint:ignore SA1029 the key is distribution's, not ours
	ctx := context.WithValue(context.Background(), "instance.id", "docker.io")
	app := handlers.NewApp(ctx, cfg)
	t.Cleanup(func() { _ = app.Shutdown() })

	var line string
	for l := range strings.Lines(buf.String()) {
		if strings.Contains(l, "No HTTP secret provided") {
			line = l
		}
	}
	if line == "" {
		t.Fatalf("the App's warning is not in the slog output:\n%s", buf.String())
	}
	for _, want := range []string{"level=WARN", "component=distribution", "instance.id=docker.io"} {
		if !strings.Contains(line, want) {
			t.Errorf("the App's warning lacks %s: %s", want, line)
		}
	}
	// NewApp says at info level that no Redis is configured: below warnings
	// nothing of distribution's is passed on.
	if strings.Contains(buf.String(), "redis not configured") {
		t.Errorf("an info line of distribution's was passed on:\n%s", buf.String())
	}
}
