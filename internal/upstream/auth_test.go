package upstream

import (
	"reflect"
	"testing"
)

func TestParseChallenges(t *testing.T) {
	for _, c := range []struct {
		in   []string
		want []challenge
	}{
		{[]string{`Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"`},
			[]challenge{{"bearer", map[string]string{"realm": "https://auth.docker.io/token", "service": "registry.docker.io", "scope": "repository:library/alpine:pull"}}}},
		// A scope list holds commas inside its quotes.
		{[]string{`Bearer realm="https://r/token", scope="repository:a:pull,push"`},
			[]challenge{{"bearer", map[string]string{"realm": "https://r/token", "scope": "repository:a:pull,push"}}}},
		{[]string{`Basic realm="Registry Realm"`},
			[]challenge{{"basic", map[string]string{"realm": "Registry Realm"}}}},
		// Two challenges in one header, and escaped quotes.
		{[]string{`Basic realm="x", Bearer realm="https://r/t",service="s\"q"`},
			[]challenge{{"basic", map[string]string{"realm": "x"}}, {"bearer", map[string]string{"realm": "https://r/t", "service": `s"q`}}}},
		{[]string{`bearer realm=https://r/t,service=s`},
			[]challenge{{"bearer", map[string]string{"realm": "https://r/t", "service": "s"}}}},
	} {
		if got := parseChallenges(c.in); !reflect.DeepEqual(got, c.want) {
			t.Errorf("parseChallenges(%q)\n got %v\nwant %v", c.in, got, c.want)
		}
	}
}
