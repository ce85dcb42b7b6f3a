package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/warm"
)

func TestWarmClientStreamsEventsAsTheyArrive(t *testing.T) {
	release := make(chan struct{})
	var got warm.Request
	var auth string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/api/v1/warm" {
			http.NotFound(w, r)
			return
		}
		auth = r.Header.Get("Authorization")
		if err := json.NewDecoder(r.Body).Decode(&got); err != nil {
			t.Error(err)
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		_, _ = w.Write([]byte(`{"event":"plan","image":"nginx:1.25","upstream":"docker.io"}` + "\n"))
		w.(http.Flusher).Flush()
		// The rest is sent only once the client has seen the plan: a
		// client that waits for the whole answer would hang here.
		<-release
		_, _ = w.Write([]byte("\n" + `{"event":"done","image":"nginx:1.25","upstream":"docker.io","digest":"sha256:ab","bytes":10,"blobs":2}` + "\n" +
			`{"event":"summary","cached":1,"bytes":10,"seconds":0.5}` + "\n"))
	}))
	defer srv.Close()

	var events []warm.Event
	c := Client{Base: srv.URL, Token: "s3cret"}
	err := c.Warm(context.Background(), warm.Request{Images: []string{"nginx:1.25"}, Platforms: []string{"linux/arm64"}},
		func(ev warm.Event) {
			if ev.Event == warm.EventPlan {
				close(release)
			}
			events = append(events, ev)
		})
	if err != nil {
		t.Fatal(err)
	}
	if auth != "Bearer s3cret" {
		t.Errorf("Authorization = %q", auth)
	}
	if len(got.Images) != 1 || got.Images[0] != "nginx:1.25" || len(got.Platforms) != 1 || got.Platforms[0] != "linux/arm64" || got.DryRun {
		t.Errorf("server got %+v", got)
	}
	if len(events) != 3 || events[1].Digest != "sha256:ab" || events[1].Blobs != 2 || events[2].Cached != 1 || events[2].Seconds != 0.5 {
		t.Errorf("events = %+v", events)
	}
}

func TestWarmClientErrors(t *testing.T) {
	cases := []struct {
		name    string
		handler http.HandlerFunc
		want    string
		status  int
	}{
		{"bad request", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":"platform \"linux\": want os/arch[/variant]"}`))
		}, `admin API: 400: platform "linux": want os/arch[/variant]`, 400},
		{"older server", http.NotFound, "admin API: 404 Not Found", 404},
		{"cut short", func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte(`{"event":"plan","image":"a","upstream":"u"}` + "\n"))
		}, "ended before its summary", 0},
		{"not json", func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte(`{"event":"plan"}` + "\n<html>\n"))
		}, "warm answer line 2", 0},
		{"endless line", func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte(`{"event":"plan","image":"` + strings.Repeat("a", maxEventLine) + `"}` + "\n"))
		}, "token too long", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := httptest.NewServer(c.handler)
			defer srv.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := Client{Base: srv.URL}.Warm(ctx, warm.Request{Images: []string{"a"}}, func(warm.Event) {})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
			var ae *APIError
			if errors.As(err, &ae) != (c.status != 0) || (ae != nil && ae.Status != c.status) {
				t.Errorf("APIError = %+v, want status %d", ae, c.status)
			}
		})
	}
}
