package upstream_test

import (
	"context"
	"net/http"
	"slices"
	"testing"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
	"github.com/multiproxy/multiproxy/internal/upstream"
)

// A tag list reaches the caller only as parsed tags; an answer that is no
// tag list is bad content, whatever its status said.
func TestTagListIsParsed(t *testing.T) {
	up := ts.Profile{Name: "plain"}.Start(t)
	for _, tag := range []string{"1", "2"} {
		up.Push(t, "team/a:"+tag, 1, 1024)
	}
	c, _ := client(t, up.URL, upstream.Options{})
	list, err := c.GetTags(context.Background(), "team/a", "n=1")
	if err != nil || !slices.Equal(list.Tags, []string{"1"}) || list.Next != "last=1&n=1" {
		t.Fatalf("first page: %+v, %v", list, err)
	}
	for _, body := range []string{`{"foo":1}`, `[1,2]`, `not json`, `{"name":"team/a","tags":[1]}`} {
		remove := up.Faults.Add(ts.Rule{PathContains: "/tags/list", Action: ts.Body(http.StatusOK, "application/json", body)})
		list, err := c.GetTags(context.Background(), "team/a", "")
		if cause := upstream.CauseOf(err); cause != upstream.CauseBadContent {
			t.Errorf("tag list %s: %+v, %v; want bad content", body, list, err)
		}
		remove()
	}
}

// A token service whose token cannot be sent as a header value is bad
// content, not a refusal of our credentials and not an unreachable
// upstream: nothing is sent with it.
func TestTokenThatIsNoHeaderValueIsRefused(t *testing.T) {
	f := ts.NewFaults()
	reg := ts.StartRegistry(t, ts.RegistryOptions{Token: true, WrapTokens: f.Wrap})
	ts.PushImage(t, reg, "team/a:1", 1, 1024)
	c, _ := client(t, reg.URL(), upstream.Options{CAFile: reg.CAFile()})
	for _, body := range []string{`{"token":"x\r\nX-Injected: 1"}`, `{"token":"two words"}`, `{"token":""}`, `<html>`} {
		remove := f.Add(ts.Rule{Action: ts.Body(http.StatusOK, "application/json", body)})
		_, err := c.HeadManifest(context.Background(), "team/a", "1")
		if cause := upstream.CauseOf(err); cause != upstream.CauseBadContent {
			t.Errorf("token response %s: %v, want bad content", body, err)
		}
		remove()
	}
	if _, err := c.HeadManifest(context.Background(), "team/a", "1"); err != nil {
		t.Errorf("with the token service well again: %v", err)
	}
}
