package upstream

import (
	"context"
	"errors"
	"net/netip"
	"net/url"
	"strings"
	"testing"
)

// resolverOf answers every name with the addresses given for it, so the
// policy can be asked about addresses no test may dial.
func resolverOf(names map[string][]string) func(ctx context.Context, network, host string) ([]netip.Addr, error) {
	return func(_ context.Context, _, host string) ([]netip.Addr, error) {
		var out []netip.Addr
		for _, a := range names[host] {
			out = append(out, netip.MustParseAddr(a))
		}
		if len(out) == 0 {
			return nil, errors.New("no such host")
		}
		return out, nil
	}
}

func policyFor(t *testing.T, remote string, allow []netip.Prefix, names map[string][]string) *HopPolicy {
	t.Helper()
	u, err := url.Parse(remote)
	if err != nil {
		t.Fatal(err)
	}
	p := NewHopPolicy(u, allow)
	p.lookup = resolverOf(names)
	return p
}

func TestHopPolicy(t *testing.T) {
	names := map[string][]string{
		"registry.example":  {"203.0.114.10"}, // a public remote
		"cdn.example":       {"198.51.99.7", "2606:4700::1"},
		"metadata.example":  {"169.254.169.254"},
		"rebind.example":    {"10.0.0.1"},
		"internal.example":  {"10.1.2.3"},
		"private.registry":  {"10.0.0.5"},
		"storage.private":   {"10.0.9.9"},
		"mixed.example":     {"10.0.0.1", "198.51.99.8"},
		"ula.example":       {"fd00::1"},
		"mapped.example":    {"::ffff:169.254.169.254"},
		"cgnat.example":     {"100.64.1.1"},
		"broadcast.example": {"255.255.255.255"},
	}
	cases := []struct {
		remote, hop string
		allow       []netip.Prefix
		want        string // a refusal reason, or "" for allowed
	}{
		// A public remote's hops may reach the internet only.
		{"https://registry.example", "cdn.example", nil, ""},
		{"https://registry.example", "169.254.169.254", nil, RefusedLinkLocal},
		{"https://registry.example", "metadata.example", nil, RefusedLinkLocal},
		{"https://registry.example", "mapped.example", nil, RefusedLinkLocal},
		{"https://registry.example", "10.0.0.1", nil, RefusedPrivate},
		{"https://registry.example", "rebind.example", nil, RefusedPrivate},
		{"https://registry.example", "cgnat.example", nil, RefusedPrivate},
		{"https://registry.example", "ula.example", nil, RefusedPrivate},
		{"https://registry.example", "::1", nil, RefusedLoopback},
		{"https://registry.example", "127.0.0.1", nil, RefusedLoopback},
		{"https://registry.example", "fe80::1", nil, RefusedLinkLocal},
		{"https://registry.example", "0.0.0.0", nil, RefusedUnspecified},
		{"https://registry.example", "::", nil, RefusedUnspecified},
		{"https://registry.example", "224.0.0.1", nil, RefusedMulticast},
		{"https://registry.example", "ff02::1", nil, RefusedMulticast},
		{"https://registry.example", "broadcast.example", nil, RefusedReserved},
		{"https://registry.example", "192.0.2.1", nil, RefusedReserved},
		// Of a name with a private and a public address, only the public
		// one is dialed.
		{"https://registry.example", "mixed.example", nil, ""},
		// A private remote may send its clients to private storage, never
		// to the metadata service.
		{"https://private.registry", "storage.private", nil, ""},
		{"https://private.registry", "metadata.example", nil, RefusedLinkLocal},
		{"https://private.registry", "127.0.0.1", nil, RefusedLoopback},
		{"http://10.0.0.5:5000", "10.0.9.9", nil, ""},
		// A loopback remote, the tests' own, may redirect to loopback.
		{"http://127.0.0.1:5000", "127.0.0.2", nil, ""},
		{"http://127.0.0.1:5000", "internal.example", nil, RefusedPrivate},
		// allow_hops replaces the default, but never opens link-local.
		{"https://registry.example", "storage.private", []netip.Prefix{netip.MustParsePrefix("10.0.9.0/24")}, ""},
		{"https://registry.example", "cdn.example", []netip.Prefix{netip.MustParsePrefix("10.0.9.0/24")}, RefusedNotAllowed},
		{"https://registry.example", "metadata.example", []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, RefusedLinkLocal},
		{"http://127.0.0.1:5000", "127.0.0.2", []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, RefusedNotAllowed},
		// IPv6 forms that reach an IPv4 address are judged by it: NAT64,
		// 6to4, IPv4-mapped and IPv4-compatible.
		{"https://registry.example", "64:ff9b::a9fe:a9fe", nil, RefusedLinkLocal}, // 169.254.169.254
		{"https://registry.example", "64:ff9b::a00:1", nil, RefusedPrivate},       // 10.0.0.1
		{"https://registry.example", "64:ff9b::7f00:1", nil, RefusedLoopback},     // 127.0.0.1
		{"https://registry.example", "64:ff9b::c633:6307", nil, ""},               // 198.51.99.7, public
		{"https://registry.example", "2002:a9fe:a9fe::1", nil, RefusedLinkLocal},
		{"https://registry.example", "2002:a00:1::1", nil, RefusedPrivate},
		{"https://registry.example", "2002:c633:6307::1", nil, ""},
		{"https://registry.example", "::ffff:10.0.0.1", nil, RefusedPrivate},
		{"https://registry.example", "::a9fe:a9fe", nil, RefusedLinkLocal},
		{"https://registry.example", "::a00:1", nil, RefusedPrivate},
		{"https://registry.example", "::e000:1", nil, RefusedMulticast}, // 224.0.0.1
		// allow_hops never opens link-local behind a translator either,
		// and admits a translated address by its IPv4 address.
		{"https://registry.example", "64:ff9b::a9fe:a9fe", []netip.Prefix{netip.MustParsePrefix("::/0")}, RefusedLinkLocal},
		{"https://registry.example", "64:ff9b::a00:909", []netip.Prefix{netip.MustParsePrefix("10.0.9.0/24")}, ""},
		// A private remote's storage behind DNS64 is private storage.
		{"https://private.registry", "64:ff9b::a00:909", nil, ""},
		// Local-use NAT64 places the IPv4 address by a prefix length we
		// cannot know, and Teredo goes through relays nobody here chose:
		// refused unless allow_hops admits them, and never when one
		// reading is link-local.
		{"https://registry.example", "64:ff9b:1::c633:6307", nil, RefusedReserved},
		{"https://registry.example", "64:ff9b:1::c633:6307", []netip.Prefix{netip.MustParsePrefix("64:ff9b:1::/48")}, ""},
		{"https://registry.example", "64:ff9b:1::a9fe:a9fe", []netip.Prefix{netip.MustParsePrefix("64:ff9b:1::/48")}, RefusedLinkLocal},
		{"https://registry.example", "64:ff9b:1:a9fe:a9:fe00::", nil, RefusedLinkLocal},   // the /48 layout
		{"https://registry.example", "2001:0:c633:6307::3ccc:9cf8", nil, RefusedReserved}, // Teredo, public client
		{"https://registry.example", "2001:0:c633:6307::3ccc:9cf8", []netip.Prefix{netip.MustParsePrefix("2001::/32")}, ""},
		{"https://registry.example", "2001:0:c633:6307::5601:5601", []netip.Prefix{netip.MustParsePrefix("2001::/32")}, RefusedLinkLocal}, // client 169.254.169.254
		{"https://registry.example", "2001:0:a9fe:a9fe::3ccc:9cf8", nil, RefusedLinkLocal},                                                // server 169.254.169.254
	}
	for _, c := range cases {
		p := policyFor(t, c.remote, c.allow, names)
		// The remote is dialed first, as every upstream call starts there.
		remote, _ := url.Parse(c.remote)
		if _, err := p.resolve(context.Background(), remote.Hostname(), true); err != nil {
			t.Fatalf("%s: resolve the remote: %v", c.remote, err)
		}
		addrs, err := p.resolve(context.Background(), c.hop, false)
		var hr *HopRefused
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s -> %s: refused (%v), want allowed", c.remote, c.hop, err)
		case c.want == "" && len(addrs) == 0:
			t.Errorf("%s -> %s: no address to dial", c.remote, c.hop)
		case c.want != "" && !errors.As(err, &hr):
			t.Errorf("%s -> %s: got %v, %v; want refused (%s)", c.remote, c.hop, addrs, err, c.want)
		case c.want != "" && hr.Reason != c.want:
			t.Errorf("%s -> %s: refused for %s, want %s", c.remote, c.hop, hr.Reason, c.want)
		}
		for _, a := range addrs {
			if classify4or6(a) != classPublic && c.hop == "mixed.example" {
				t.Errorf("%s -> %s: would dial %s", c.remote, c.hop, a)
			}
		}
	}
}

// The remote itself is the operator's choice: whatever its address, it is
// dialed, link-local included (a registry on a link-local interface).
func TestHopPolicyNeverRefusesTheRemote(t *testing.T) {
	p := policyFor(t, "http://169.254.10.1:5000", nil, nil)
	if _, err := p.resolve(context.Background(), "169.254.10.1", true); err != nil {
		t.Errorf("the remote was refused: %v", err)
	}
}

// An error naming a presigned URL keeps its host and path, not its query.
func TestClassifyDropsTheQuery(t *testing.T) {
	in := &url.Error{Op: "Get", URL: "https://bucket.example/blob?X-Amz-Signature=SECRETSIG", Err: errors.New("connection reset")}
	got := classify("get blob", in).Error()
	if want := "Get https://bucket.example/blob: connection reset"; !strings.Contains(got, want) || strings.Contains(got, "SECRETSIG") {
		t.Errorf("classify = %q, want it to hold %q and no signature", got, want)
	}
	in.URL = "http://[::1%zz/?X-Amz-Signature=SECRETSIG"
	if got := classify("get blob", in).Error(); strings.Contains(got, "SECRETSIG") {
		t.Errorf("classify of an unparsable URL = %q, holds the signature", got)
	}
}
