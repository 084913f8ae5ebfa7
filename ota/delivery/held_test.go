package delivery

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/store"
	"github.com/otamq/otamq/ota/wire"
)

// The offers in memory are what the store holds, field for field; the
// offers of one pass share one common part, dropped with its last offer;
// a restart finds the same.
func TestHeldOffers(t *testing.T) {
	e := setup(t, 1000, Options{})
	ctx := context.Background()
	offer := func(rollout string, deadline uint64, ids ...string) {
		t.Helper()
		if err := e.db.Update(ctx, func(tx store.Tx) error {
			res, err := e.svc.Offer(tx, ids, OfferSpec{Release: e.rel.ID, RolloutID: rollout, InstallMode: wire.InstallOnCommand, BlockSize: 4096, Deadline: deadline}, "ops")
			for _, r := range res {
				if !r.OK {
					t.Fatalf("offer to %s: %+v", r.Device, r)
				}
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	same := func(svc *Service) {
		t.Helper()
		if err := e.db.View(ctx, func(tx store.Tx) error {
			return tx.Scan(bucketOffers, nil, false, func(k, v []byte) error {
				stored, err := decodeOffer(v, nil)
				if err != nil {
					return err
				}
				stored.pending, stored.npending = nil, 0 // the timeline's, not the offer's
				svc.mu.RLock()
				h, ok := svc.offers[string(k)]
				svc.mu.RUnlock()
				if !ok {
					t.Errorf("%s: stored, not in memory", k)
					return nil
				}
				if got := h.offer(string(k)); !reflect.DeepEqual(got, *stored) {
					t.Errorf("%s: in memory %+v, stored %+v", k, got, *stored)
				}
				return nil
			})
		}); err != nil {
			t.Fatal(err)
		}
	}
	commons := func(svc *Service) int {
		svc.mu.RLock()
		defer svc.mu.RUnlock()
		return len(svc.commons)
	}
	offer("r1", 1795000000, "d1", "d2")
	same(e.svc)
	if n := commons(e.svc); n != 1 {
		t.Fatalf("two offers of one pass: %d common parts, want 1", n)
	}
	e.clk.Advance(time.Minute)
	offer("r2", 0, "d1") // d1: recent [r1]; d2 still r1's
	same(e.svc)
	if n := commons(e.svc); n != 2 {
		t.Fatalf("d1 on r2, d2 on r1: %d common parts, want 2", n)
	}
	if !e.svc.knownRollout("d1", "r1") || !e.svc.knownRollout("d1", "r2") || e.svc.knownRollout("d2", "r2") {
		t.Fatal("recent rollouts not kept")
	}
	offer("r2", 0, "d2") // d2: recent [r1] too: the same common part as d1's
	if n := commons(e.svc); n != 1 {
		t.Fatalf("both on r2 with the same history: %d common parts, want 1 (r1's dropped)", n)
	}
	if err := e.db.Update(ctx, func(tx store.Tx) error {
		_, err := e.svc.Cancel(tx, []string{"d1"}, "ops")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	same(e.svc)
	if _, ok := e.svc.Current("d1"); ok {
		t.Fatal("cancelled offer still current")
	}
	if n := commons(e.svc); n != 1 { // cancelled is the device's own
		t.Fatalf("d1 cancelled: %d common parts, want 1", n)
	}
	// one call offering a device twice, and its neighbour: each held with
	// the common of the offer before it, as the store has them
	e.clk.Advance(time.Minute)
	offer("r3", 0, "d1", "d1", "d2")
	same(e.svc)
	if n := commons(e.svc); n != 1 {
		t.Fatalf("d1 twice and d2 on r3, with the same history: %d common parts, want 1", n)
	}
	// one call whose devices have histories of their own
	offer("r4", 0, "d1")
	offer("r5", 0, "d1", "d2", "d1")
	same(e.svc)
	if n := commons(e.svc); n != 2 {
		t.Fatalf("d1 and d2 on r5 with different histories: %d common parts, want 2", n)
	}
	again, err := New(e.db, e.cat, e.reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	same(again)
	if n := commons(again); n != 2 {
		t.Fatalf("after a restart: %d common parts, want 2", n)
	}
}
