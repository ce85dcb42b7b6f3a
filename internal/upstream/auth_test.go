package upstream

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
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
		if got, err := parseChallenges(c.in); err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("parseChallenges(%q)\n got %v\nwant %v", c.in, got, c.want)
		}
	}
}

// A challenge past the bounds is refused before it is read, however it is
// shaped: the old parser rescanned the rest of the header for every token,
// and a 9 MB challenge held a pull past every timeout.
func TestParseChallengesRefusesTheUnbounded(t *testing.T) {
	for name, in := range map[string][]string{
		"one large value": {`Bearer realm="https://r/t",scope="` + strings.Repeat("a", maxChallengeBytes) + `"`},
		"many tokens":     {strings.Repeat("Bearer ", maxChallengeBytes/7+1)},
		"many headers": func() []string {
			v := make([]string, 2000)
			for i := range v {
				v[i] = "Basic realm=x"
			}
			return v
		}(),
		"many challenges": {strings.Repeat("Basic realm=x, ", maxChallenges+1)},
		"many parameters": func() []string {
			var b strings.Builder
			b.WriteString("Bearer ")
			for i := range maxChallengeParams + 1 {
				fmt.Fprintf(&b, "k%d=v,", i)
			}
			return []string{b.String()}
		}(),
	} {
		if got, err := parseChallenges(in); !errors.Is(err, errChallengeTooLarge) {
			t.Errorf("%s: got %v, %v; want errChallengeTooLarge", name, got, err)
		}
	}
}

// FuzzParseChallenges: any header is parsed without a panic, within the
// bounds, and what a well-formed challenge says survives being written back
// and parsed again.
func FuzzParseChallenges(f *testing.F) {
	for _, seed := range []string{
		`Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"`,
		`Bearer realm="https://r/token", scope="repository:a:pull,push"`,
		`Basic realm="x", Bearer realm="https://r/t",service="s\"q"`,
		`bearer realm=https://r/t,service=s`,
		`Basic dXNlcjpwYXNz==`,
		`="",,, "`,
		`Bearer realm="unterminated`,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, header string) {
		chs, err := parseChallenges([]string{header})
		if err != nil {
			if !errors.Is(err, errChallengeTooLarge) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if len(chs) > maxChallenges {
			t.Fatalf("%d challenges past the bound", len(chs))
		}
		for _, ch := range chs {
			if len(ch.params) > maxChallengeParams {
				t.Fatalf("%d parameters past the bound", len(ch.params))
			}
			if ch.scheme == "" || strings.ToLower(ch.scheme) != ch.scheme {
				t.Fatalf("scheme %q not lower-cased or empty", ch.scheme)
			}
		}
		// Round trip: a challenge written with every value quoted and
		// escaped reads back the same.
		if len(chs) == 0 || !utf8.ValidString(header) {
			return
		}
		var b strings.Builder
		for i, ch := range chs {
			if strings.ContainsAny(ch.scheme, " \t,=\"") {
				return
			}
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(ch.scheme)
			sep := " "
			for k, v := range ch.params {
				if k == "" || strings.ContainsAny(k, " \t,=\"") {
					return
				}
				b.WriteString(sep + k + `="` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(v) + `"`)
				sep = ","
			}
		}
		again, err := parseChallenges([]string{b.String()})
		if err != nil || !reflect.DeepEqual(again, chs) {
			t.Fatalf("round trip of %q via %q:\n got %v, %v\nwant %v", header, b.String(), again, err, chs)
		}
	})
}
