package gc

import (
	"testing"
	"time"
)

func TestBeginWaitsForEarlierHoldsOnly(t *testing.T) {
	var g Guard
	early := g.Hold()
	begun := make(chan struct{})
	go func() { g.begin(); close(begun) }()
	select {
	case <-begun:
		t.Fatal("a collection began while work from before it was still relying on the store")
	case <-time.After(50 * time.Millisecond):
	}
	// Work starting now must not hold the collection back, and nests.
	late := g.Hold()
	inner := g.Hold()
	early()
	select {
	case <-begun:
	case <-time.After(5 * time.Second):
		t.Fatal("a hold taken after the collection started kept it waiting")
	}
	inner()
	late()
	g.Use("sha256:" + "aa")
	if !g.wasUsed("sha256:" + "aa") {
		t.Error("a digest claimed during the collection was not recorded")
	}
	g.end()
}
