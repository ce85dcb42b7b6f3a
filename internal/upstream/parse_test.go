package upstream

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

func isBadContent(err error) bool {
	var ue *Error
	return errors.As(err, &ue) && ue.Cause == CauseBadContent
}

func TestParseTagList(t *testing.T) {
	for _, c := range []struct {
		body string
		want []string // nil: refused
	}{
		{`{"name":"library/app","tags":["1","latest"]}`, []string{"1", "latest"}},
		// Behind a redirected API the upstream names its own repository.
		{`{"name":"backend/images/pause","tags":["3.9"]}`, []string{"3.9"}},
		{`{"name":"library/app","tags":null}`, []string{}},
		{`{"name":"library/app","tags":[],"extra":true}`, []string{}},
		{`{"foo":1}`, nil},
		{`[1,2]`, nil},
		{`not json`, nil},
		{``, nil},
		{`null`, nil},
		{`{"name":"library/app"}`, nil},
		{`{"tags":["1"]}`, nil},
		{`{"name":"library/app","tags":[1,2]}`, nil},
		{`{"name":"library/app","tags":"1"}`, nil},
		{`{"name":"Library/App","tags":["1"]}`, nil},
		{`{"name":"library/app","tags":["../../etc"]}`, nil},
		{`{"name":"library/app","tags":["a b"]}`, nil},
		{`{"name":"library/app","tags":["1"]} trailing`, nil},
	} {
		got, err := parseTagList([]byte(c.body))
		if c.want == nil {
			if !isBadContent(err) {
				t.Errorf("%s: %v, %v; want bad content", c.body, got, err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %q, %v; want %q", c.body, got, err, c.want)
		}
	}
}

func TestParseReferrers(t *testing.T) {
	const d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	desc := `{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + d + `","size":512,"artifactType":"application/vnd.example.sig","annotations":{"a":"b"}}`
	valid := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` + desc + `]}`
	for _, c := range []struct {
		body string
		ok   bool
	}{
		{valid, true},
		{`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`, true},
		{`{"foo":1}`, false},
		{`not json`, false},
		{`[]`, false},
		{`{"schemaVersion":1,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`, false},
		{`{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}`, false},
		{`{"schemaVersion":2,"manifests":[]}`, false},
		{`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}`, false},
		{`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"x","digest":"` + d + `","size":1}]}`, false},
		{`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"a/b","digest":"sha256:nothex","size":1}]}`, false},
		{`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"a/b","digest":"` + d + `"}]}`, false},
		{`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"a/b","digest":"` + d + `","size":-1}]}`, false},
		{`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"a/b","digest":"` + d + `","size":"1"}]}`, false},
		{`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[1]}`, false},
	} {
		got, err := ParseReferrers([]byte(c.body))
		if !c.ok {
			if !isBadContent(err) {
				t.Errorf("%s: %s, %v; want bad content", c.body, got, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.body, err)
			continue
		}
		// Re-encoded, the same index.
		var in, out any
		_ = json.Unmarshal([]byte(c.body), &in)
		if err := json.Unmarshal(got, &out); err != nil || !reflect.DeepEqual(in, out) {
			t.Errorf("%s re-encoded as %s", c.body, got)
		}
	}
}

func TestCheckToken(t *testing.T) {
	for tok, ok := range map[string]bool{
		"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln": true,
		"opaque+token/with=":                        true,
		"":                                          false,
		"two words":                                 false,
		"line\r\nX-Injected: 1":                     false,
		"tab\there":                                 false,
		"caf\u00e9":                                 false,
	} {
		if err := checkToken(tok); (err == nil) != ok || err != nil && !isBadContent(err) {
			t.Errorf("checkToken(%q) = %v", tok, err)
		}
	}
}
