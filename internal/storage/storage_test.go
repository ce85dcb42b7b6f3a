package storage

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
)

// blackHole accepts connections and never answers: a hung object store.
func blackHole(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

// A bucket whose store accepts requests and never answers fails a call
// that has no deadline of its own, instead of holding it forever: the
// response-header timeout is set on the driver's S3 client.
func TestHungStoreFailsACallWithoutDeadline(t *testing.T) {
	old := responseHeaderTimeout
	responseHeaderTimeout = 300 * time.Millisecond
	t.Cleanup(func() { responseHeaderTimeout = old })
	st := config.UpstreamStorage{S3: config.S3{
		Bucket: "b", Region: "us-east-1", Endpoint: "http://" + blackHole(t), ForcePathStyle: true,
		AccessKey: "k", SecretKey: "s",
	}}
	d, err := Driver(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := d.Stat(context.Background(), "/docker/registry/v2/blobs")
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Stat on a store that never answers succeeded")
		}
		t.Logf("Stat failed as it should: %v", err)
	case <-time.After(60 * time.Second): // only catches a hang; retries included it takes a few timeouts
		t.Fatal("Stat on a store that never answers did not return")
	}
}
