package coord

import (
	"context"
	"strings"

	"github.com/opencontainers/go-digest"
)

// FillLease is the outcome of asking for a blob's fill lease.
type FillLease struct {
	// Lease is set when this replica is to fetch the blob.
	Lease *Lease
	// Owner is the peer address of the replica fetching it, otherwise
	// ("" if the holder released it meanwhile).
	Owner string
	// Holder is the whole value of that replica's lease as read: it names
	// one process's hold, not just its address, so RevokeFill with it can
	// never remove a lease taken since, by a restart on the same address
	// included.
	Holder string
	// Earlier is set when the holder is an earlier process at this
	// replica's own address (it restarted): that process and its fill are
	// gone, and nothing will renew or release its lease.
	Earlier bool
}

// AcquireFill asks to be the replica that fetches d from the upstream.
func (c *Coordinator) AcquireFill(ctx context.Context, upstream string, d digest.Digest) (FillLease, error) {
	l, holder, err := c.acquire(ctx, keyFill(upstream, d))
	if err != nil {
		return FillLease{}, err
	}
	if l != nil {
		return FillLease{Lease: l}, nil
	}
	owner, _, _ := strings.Cut(holder, "|")
	earlier := owner == c.self && !strings.HasPrefix(holder, c.self+"|"+c.id+"|")
	return FillLease{Owner: owner, Holder: holder, Earlier: earlier}, nil
}

// RevokeFill removes d's fill lease if it is still holder's (a
// FillLease.Holder), so that the next AcquireFill anywhere takes it over
// at once instead of waiting out the TTL of a holder known to be dead. It
// reports whether it removed it: false when the lease was released, had
// expired or was taken since, which are left alone.
//
// Revoking a holder that is in fact alive costs a duplicate fetch, not a
// failed pull: its next renewal finds the key gone and stops, its fill
// goes on to the end for its own clients and is uploaded as a fill
// without the lease would be, and its Release removes nothing that is not
// its own.
func (c *Coordinator) RevokeFill(ctx context.Context, upstream string, d digest.Digest, holder string) (bool, error) {
	var n int64
	err := c.call(ctx, func(ctx context.Context) error {
		var err error
		n, err = releaseScript.Run(ctx, c.rdb, []string{keyFill(upstream, d)}, holder).Int64()
		return err
	})
	return n == 1, err
}
