package cache

// The peer side of a shared bucket: what one replica asks another for
// (the blob its fill lease holder is fetching) and what it answers.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"

	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/upstream"
)

// PeerPath is where a replica serves its running fills and local copies
// of an upstream to the others.
func PeerPath(upstreamName string, d digest.Digest) string {
	return "/peer/v1/" + upstreamName + "/blobs/" + d.String()
}

// errNotHere is a peer request for a blob this replica neither holds nor
// is fetching.
var errNotHere = errors.New("not held by this replica")

// errBadOwner is a fill lease whose owner, as read from Redis, is not a
// host:port, or answers as no peer port does (a redirect). The first is
// never dialled, and no redirect is followed, so whoever can write Redis
// cannot make replicas send requests anywhere but to a peer port.
var errBadOwner = errors.New("fill lease owner is not a peer")

// errPeerRefused is a peer that answered 401 or 403: the replicas disagree
// on coordination.peer_token_file, and asking again will not change that.
var errPeerRefused = errors.New("peer refused this replica")

// validPeer reports whether owner, as read from Redis, is a host:port a
// peer can listen at: a URL, a path or anything else a request could be
// steered with is not.
func validPeer(owner string) bool {
	host, port, err := net.SplitHostPort(owner)
	if err != nil || host == "" {
		return false
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return false
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return true
	}
	for _, r := range host {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

// peerSource streams d from offset on from the replica fetching it.
func (c *Cache) peerSource(ctx context.Context, peer string, d digest.Digest, offset int64) (*source, error) {
	if !validPeer(peer) {
		return nil, fmt.Errorf("%w: %q", errBadOwner, peer)
	}
	hc := c.shared.Peers
	u := url.URL{Scheme: "http", Host: peer, Path: PeerPath(c.shared.Name, d)}
	rctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, u.String(), nil)
	if err != nil {
		cancel()
		return nil, err
	}
	if c.shared.PeerToken != "" {
		req.Header.Set("Authorization", "Bearer "+c.shared.PeerToken)
	}
	if offset > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	}
	resp, err := hc.Do(req)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("peer %s: %w", peer, err)
	}
	from, ok := bodyStart(resp, offset)
	if !ok {
		resp.Body.Close()
		cancel()
		switch code := resp.StatusCode; {
		case code == http.StatusUnauthorized || code == http.StatusForbidden:
			// Not a fill that ended: every blob this replica wants from
			// that one is fetched twice until the tokens agree. Said once
			// per peer, not once per blob.
			if _, said := c.shared.refused.LoadOrStore(peer, true); !said {
				c.log.Warn("peer refused this replica's peer token; fetching alone what it holds (check coordination.peer_token_file on both)",
					"peer", peer, "status", code, "token_set", c.shared.PeerToken != "")
			}
			return nil, fmt.Errorf("peer %s answered %s: %w", peer, resp.Status, errPeerRefused)
		case code >= 300 && code < 400:
			// Not followed (see Shared.Peers): a peer port never
			// redirects, so whatever answered is not a replica.
			return nil, fmt.Errorf("%w: %s answered %s", errBadOwner, peer, resp.Status)
		}
		return nil, fmt.Errorf("peer %s answered %s", peer, resp.Status)
	}
	body := upstream.IdleBody(resp.Body, c.client().Timeout(), cancel)
	return &source{kind: SourcePeer, body: body, size: resp.ContentLength, from: from, peer: peer}, nil
}

// PeerBlob is what another replica gets for d: this replica's running fill
// or its local copy, never a new fetch (the asking replica does that
// itself when this one has nothing).
func (c *Cache) PeerBlob(ctx context.Context, d digest.Digest) (*BlobReader, error) {
	if c.shared != nil {
		if f, ok := c.shared.tier.open(d); ok {
			return &BlobReader{File: f}, nil
		}
	}
	c.mu.Lock()
	f, ok := c.fills[d]
	if !ok || !f.joinable() {
		c.mu.Unlock()
		return nil, errNotHere
	}
	s := f.attach(ctx)
	c.mu.Unlock()
	if err := s.awaitHeader(); err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		return nil, errNotHere
	}
	return &BlobReader{Stream: s}, nil
}
