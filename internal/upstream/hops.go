package upstream

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"time"
)

// A hop is any host an upstream call dials: the configured remote, a
// redirect target (a CDN, an object store, another registry) or a token
// realm. The remote is the operator's choice and may be any address. Every
// other hop is named by a stranger, in a Location or WWW-Authenticate
// header, and is held to a policy: otherwise one redirect to
// 169.254.169.254 relays a cloud VM's instance credentials to an anonymous
// client, and one to 10.0.0.1 turns the cache into a way into the cluster
// network.
//
// The policy is applied where the address is final: in the transport's
// dialer, which resolves a hop's host itself, checks every address and
// dials only the addresses that passed, by address. A name that resolves
// to a public address when checked and to a private one a moment later
// (DNS rebinding) therefore gains nothing. Through an HTTP proxy, which
// dials for us, the hop's addresses are checked before the request is sent
// (checkProxied).

// Refusal reasons, as labelled in multiproxy_upstream_refused_total.
const (
	RefusedLinkLocal   = "link_local"  // 169.254.0.0/16, fe80::/10: cloud metadata lives there
	RefusedUnspecified = "unspecified" // 0.0.0.0, ::
	RefusedMulticast   = "multicast"
	RefusedLoopback    = "loopback"    // a hop to this machine from a remote that is not on it
	RefusedPrivate     = "private"     // RFC 1918, RFC 6598, ULA, from a remote that is not private
	RefusedReserved    = "reserved"    // documentation, benchmarking, 240/4 and other special ranges
	RefusedNotAllowed  = "not_allowed" // outside upstreams[].allow_hops
	RefusedDowngrade   = "downgrade"   // https remote sent to plain http
)

// RefusedReasons lists every refusal reason, for metrics to start at zero.
var RefusedReasons = []string{RefusedLinkLocal, RefusedUnspecified, RefusedMulticast, RefusedLoopback,
	RefusedPrivate, RefusedReserved, RefusedNotAllowed, RefusedDowngrade}

// HopRefused is the error of a hop the policy did not dial. It names the
// host only: a redirect target's query may hold a presigned signature.
type HopRefused struct {
	Host   string
	Addr   netip.Addr // the refused address; invalid for a downgrade
	Reason string
}

func (e *HopRefused) Error() string {
	if e.Addr.IsValid() {
		return fmt.Sprintf("hop %s (%s) refused: %s", e.Host, e.Addr, e.Reason)
	}
	return fmt.Sprintf("hop %s refused: %s", e.Host, e.Reason)
}

// addrClass is the kind of network an address is on, as far as the policy
// is concerned.
type addrClass int

const (
	classPublic addrClass = iota
	classLoopback
	classPrivate
	classLinkLocal
	classUnspecified
	classMulticast
	classReserved
)

// special lists the IPv4 and IPv6 ranges that are neither public unicast
// nor covered by netip's own predicates (IANA special-purpose registries).
var special = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),       // "this network"
	netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
	netip.MustParsePrefix("192.0.2.0/24"),    // documentation
	netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking
	netip.MustParsePrefix("198.51.100.0/24"), // documentation
	netip.MustParsePrefix("203.0.113.0/24"),  // documentation
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved, and the broadcast address
	netip.MustParsePrefix("100::/64"),        // discard-only
	netip.MustParsePrefix("2001:db8::/32"),   // documentation
}

// sharedSpace is RFC 6598's carrier-grade NAT range: not the internet, so
// private for the policy, though netip does not say so.
var sharedSpace = netip.MustParsePrefix("100.64.0.0/10")

// IPv6 forms that carry an IPv4 address and reach it: through a NAT64
// translator, a 6to4 relay or a Teredo relay, or (IPv4-mapped and
// -compatible) on this host's own IPv4 stack. Classified as IPv6, each
// would be a public address, and 64:ff9b::a9fe:a9fe would be a way to
// 169.254.169.254.
var (
	nat64      = netip.MustParsePrefix("64:ff9b::/96")   // RFC 6052 well-known prefix
	nat64Local = netip.MustParsePrefix("64:ff9b:1::/48") // RFC 8215, local use
	sixToFour  = netip.MustParsePrefix("2002::/16")      // RFC 3056
	teredo     = netip.MustParsePrefix("2001::/32")      // RFC 4380
	v4compat   = netip.MustParsePrefix("::/96")          // RFC 4291, deprecated
)

// embedded4 is the IPv4 address an IPv6 address of a translated or
// tunnelled form reaches, at a place fixed by its prefix. IPv4-mapped
// addresses are unmapped before this.
func embedded4(a netip.Addr) (netip.Addr, bool) {
	if !a.Is6() {
		return netip.Addr{}, false
	}
	b := a.As16()
	switch {
	case nat64.Contains(a), v4compat.Contains(a) && !a.IsUnspecified() && !a.IsLoopback():
		return netip.AddrFrom4([4]byte(b[12:16])), true
	case sixToFour.Contains(a):
		return netip.AddrFrom4([4]byte(b[2:6])), true
	}
	return netip.Addr{}, false
}

// opaque4 lists the IPv4 addresses an IPv6 address may reach when where
// it lands is not fixed by its form: a local-use NAT64 prefix may be any
// of RFC 6052's lengths (/48 to /96, each placing the IPv4 address
// elsewhere, skipping the zero octet 8), and a Teredo address names both
// a relay server and an obfuscated client, reached through relays nobody
// here chose. Such an address is refused by default (not public);
// allow_hops may admit it, unless one of its readings is link-local.
func opaque4(a netip.Addr) []netip.Addr {
	if !a.Is6() {
		return nil
	}
	b := a.As16()
	at := func(i ...int) netip.Addr { return netip.AddrFrom4([4]byte{b[i[0]], b[i[1]], b[i[2]], b[i[3]]}) }
	switch {
	case nat64Local.Contains(a):
		return []netip.Addr{at(6, 7, 9, 10), at(7, 9, 10, 11), at(9, 10, 11, 12), at(12, 13, 14, 15)}
	case teredo.Contains(a):
		client := netip.AddrFrom4([4]byte{^b[12], ^b[13], ^b[14], ^b[15]})
		return []netip.Addr{at(4, 5, 6, 7), client}
	}
	return nil
}

func classify4or6(a netip.Addr) addrClass {
	a = a.Unmap()
	if v4, ok := embedded4(a); ok {
		return classify4or6(v4)
	}
	if readings := opaque4(a); readings != nil {
		for _, v4 := range readings {
			if classify4or6(v4) == classLinkLocal {
				return classLinkLocal
			}
		}
		return classReserved
	}
	switch {
	case a.IsUnspecified():
		return classUnspecified
	case a.IsLoopback():
		return classLoopback
	case a.IsLinkLocalUnicast():
		return classLinkLocal
	case a.IsMulticast():
		return classMulticast
	case a.IsPrivate() || sharedSpace.Contains(a):
		return classPrivate
	}
	for _, p := range special {
		if p.Contains(a) {
			return classReserved
		}
	}
	if !a.IsGlobalUnicast() {
		return classReserved
	}
	return classPublic
}

func (c addrClass) reason() string {
	switch c {
	case classLoopback:
		return RefusedLoopback
	case classPrivate:
		return RefusedPrivate
	case classLinkLocal:
		return RefusedLinkLocal
	case classUnspecified:
		return RefusedUnspecified
	case classMulticast:
		return RefusedMulticast
	}
	return RefusedReserved
}

// HopPolicy decides which addresses the hops of one upstream may dial.
type HopPolicy struct {
	remote string         // host:port of the configured remote, port made explicit
	allow  []netip.Prefix // upstreams[].allow_hops; nil: the default rule

	// lookup resolves a hop's host; nil: the system resolver. Tests
	// inject one to name addresses no test may dial.
	lookup func(ctx context.Context, network, host string) ([]netip.Addr, error)

	mu      sync.Mutex
	classes map[addrClass]bool // of the remote's addresses, as dialed
	proxies map[string]bool    // host:port of HTTP proxies the environment names
}

// NewHopPolicy builds the policy of an upstream whose base URL is remote.
// allow, when not empty, replaces the default rule: a hop may then dial
// only addresses inside one of its prefixes.
func NewHopPolicy(remote *url.URL, allow []netip.Prefix) *HopPolicy {
	p := &HopPolicy{remote: hostPort(remote), allow: allow,
		classes: map[addrClass]bool{}, proxies: map[string]bool{}}
	if a, err := netip.ParseAddr(remote.Hostname()); err == nil {
		p.classes[classify4or6(a)] = true
	}
	return p
}

// hostPort is u's host with its port made explicit, as a dialer sees it.
func hostPort(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// Check says whether a hop named host may dial a. The remote itself is
// never refused; its address classes are noted, since its hops may share
// them (a private registry redirecting to private storage).
func (p *HopPolicy) Check(host string, a netip.Addr) error {
	a = a.Unmap()
	class := classify4or6(a)
	refuse := func(reason string) error { return &HopRefused{Host: host, Addr: a, Reason: reason} }
	switch class {
	case classLinkLocal, classUnspecified, classMulticast:
		// Never a registry, and where cloud metadata answers: refused
		// whatever allow_hops says.
		return refuse(class.reason())
	}
	if p.allow != nil {
		// A translated address is admitted by its IPv4 address too: on
		// an IPv6-only network, DNS64 names private storage in 64:ff9b::/96.
		v4, _ := embedded4(a)
		for _, pre := range p.allow {
			if pre.Contains(a) || v4.IsValid() && pre.Contains(v4) {
				return nil
			}
		}
		return refuse(RefusedNotAllowed)
	}
	if class == classPublic {
		return nil
	}
	p.mu.Lock()
	same := p.classes[class]
	p.mu.Unlock()
	if same && class != classReserved {
		return nil
	}
	return refuse(class.reason())
}

// dialContext dials addr (host:port) for the upstream's transport. A hop's
// host is resolved here, each address checked, and only checked addresses
// dialed: the address that passed is the one connected to, so a name that
// resolves to a public address once and to a private one the next time (DNS
// rebinding) gains nothing.
func (p *HopPolicy) dialContext(timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		p.mu.Lock()
		trusted := p.proxies[addr]
		p.mu.Unlock()
		if trusted {
			return d.DialContext(ctx, network, addr)
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		addrs, err := p.resolve(ctx, host, addr == p.remote)
		if err != nil {
			return nil, err
		}
		var first error
		for _, a := range addrs {
			c, err := d.DialContext(ctx, network, net.JoinHostPort(a.String(), port))
			if err == nil {
				return c, nil
			}
			if first == nil {
				first = err
			}
			if ctx.Err() != nil {
				break
			}
		}
		return nil, first
	}
}

// resolve returns the addresses a hop named host may dial, or the policy's
// refusal when none may be. For the remote every address is returned, and
// its classes noted.
func (p *HopPolicy) resolve(ctx context.Context, host string, remote bool) ([]netip.Addr, error) {
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else {
		lookup := p.lookup
		if lookup == nil {
			lookup = net.DefaultResolver.LookupNetIP
		}
		if addrs, err = lookup(ctx, "ip", host); err != nil {
			return nil, fmt.Errorf("resolve %s: %w", host, err)
		}
		if len(addrs) == 0 {
			return nil, fmt.Errorf("resolve %s: no address", host)
		}
	}
	if remote {
		p.mu.Lock()
		for _, a := range addrs {
			p.classes[classify4or6(a)] = true
		}
		p.mu.Unlock()
		return addrs, nil
	}
	var ok []netip.Addr
	var refused error
	for _, a := range addrs {
		if err := p.Check(host, a); err != nil {
			refused = err
			continue
		}
		ok = append(ok, a.Unmap())
	}
	if len(ok) == 0 {
		return nil, refused
	}
	return ok, nil
}

// proxyFunc is http.ProxyFromEnvironment, noting the proxies it names: the
// operator chose them, so dialing one is not a hop. The hop behind it is
// checked before the request is sent (checkProxied), since the proxy, not
// us, resolves and dials it.
func (p *HopPolicy) proxyFunc(req *http.Request) (*url.URL, error) {
	u, err := http.ProxyFromEnvironment(req)
	if u != nil {
		p.mu.Lock()
		p.proxies[hostPort(u)] = true
		p.mu.Unlock()
	}
	return u, err
}

// checkProxied checks, before a request is sent through an HTTP proxy, the
// addresses its hop's host resolves to. Without a proxy it does nothing:
// the dialer checks the address it really dials.
func (p *HopPolicy) checkProxied(ctx context.Context, target *url.URL) error {
	if hostPort(target) == p.remote {
		return nil
	}
	if u, _ := http.ProxyFromEnvironment(&http.Request{URL: target}); u == nil {
		return nil
	}
	host := target.Hostname()
	_, err := p.resolve(ctx, host, false)
	return err
}
