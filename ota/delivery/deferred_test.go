package delivery

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/store"
	"github.com/otamq/otamq/ota/wire"
)

// pendingOf returns how many entries device id's offer record carries.
func pendingOf(t *testing.T, db store.Store, id string) int {
	t.Helper()
	n := 0
	if err := db.View(context.Background(), func(tx store.Tx) error {
		of, err := storedOffer(tx, id)
		if err != nil || of == nil {
			return err
		}
		items, err := decodeItems(of.pending)
		n = len(items)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// page returns device id's whole timeline as one page, with its cursors.
func page(t *testing.T, svc *Service, id string) ([]Entry, []string) {
	t.Helper()
	es, cs, more, err := svc.TimelinePage(id, "", 0)
	if err != nil || more {
		t.Fatalf("timeline of %s: more %v, %v", id, more, err)
	}
	return es, cs
}

// An offer's timeline entry is carried by the offer record and written into
// the timeline with the device's next event; readers see the same entry,
// with the same cursor, before and after.
func TestOfferEntryWrittenWithNextEvent(t *testing.T) {
	e := setup(t, 1000, Options{})
	e.offer("d1", "d2")
	for _, id := range []string{"d1", "d2"} {
		if stored, _ := storedTimeline(t, e.db, id); stored != 0 {
			t.Fatalf("%s: %d entries in the timeline after the offer, want none (carried by the offer)", id, stored)
		}
		if n := pendingOf(t, e.db, id); n != 1 {
			t.Fatalf("%s: the offer carries %d entries, want 1", id, n)
		}
	}
	before, cursors := page(t, e.svc, "d1")
	if len(before) != 1 || before[0].Type != "offer" || before[0].RolloutID != "r1" || before[0].Detail != "release "+e.rel.ID ||
		!before[0].Time.Equal(e.clk.Now()) || before[0].Source != "broker" {
		t.Fatalf("timeline after the offer: %+v", before)
	}
	e.progress("d1", 10, 1)
	if stored, counted := storedTimeline(t, e.db, "d1"); stored != 2 || counted != 2 {
		t.Fatalf("d1 after an event: %d entries stored (count %d), want the offer's and the event's", stored, counted)
	}
	if n := pendingOf(t, e.db, "d1"); n != 0 {
		t.Fatalf("d1 after an event: the offer still carries %d entries", n)
	}
	after, cursors2 := page(t, e.svc, "d1")
	if len(after) != 2 || after[0].Progress != 10 || !reflect.DeepEqual(after[1], before[0]) || cursors2[1] != cursors[0] {
		t.Fatalf("timeline after the event: %+v (cursors %v), before it %+v (%v)", after, cursors2, before, cursors)
	}
	// the event's page continues at the offer's cursor as before
	es, _, _, err := e.svc.TimelinePage("d1", cursors2[0], 0)
	if err != nil || len(es) != 1 || es[0].Type != "offer" {
		t.Fatalf("page after the event's cursor: %+v, %v", es, err)
	}
	// d2 sent nothing: its entry is still carried, and its offer is
	// unchanged in memory
	if n := pendingOf(t, e.db, "d2"); n != 1 {
		t.Fatalf("d2: the offer carries %d entries, want 1", n)
	}
	if of, ok := e.svc.Current("d1"); !ok || of.RolloutID != "r1" {
		t.Fatalf("d1's offer after its entry was written: %+v, %v", of, ok)
	}
}

// A device that sends nothing through many offers and cancels: its record
// carries at most maxPendingEntries, then they are written into the
// timeline; every step's timeline, read through a restart too, is the
// same as if each entry had been written at once.
func TestPendingEntriesBounded(t *testing.T) {
	e := setup(t, 1000, Options{TimelineLength: 12})
	ctx := context.Background()
	var want []Entry // newest first
	for i := range 2*maxPendingEntries + 3 {
		e.clk.Advance(time.Minute)
		rid := "r" + string(rune('a'+i/2))
		if i%2 == 0 {
			if err := e.db.Update(ctx, func(tx store.Tx) error {
				_, err := e.svc.Offer(tx, []string{"d1"}, OfferSpec{Release: e.rel.ID, RolloutID: rid}, "t")
				return err
			}); err != nil {
				t.Fatal(err)
			}
			want = append([]Entry{{Time: e.clk.Now(), Source: "broker", Type: "offer", RolloutID: rid, Version: "1.0.0", Detail: "release " + e.rel.ID}}, want...)
		} else {
			if err := e.db.Update(ctx, func(tx store.Tx) error {
				res, err := e.svc.Cancel(tx, []string{"d1"}, "t")
				if err == nil && !res[0].OK {
					t.Fatalf("cancel: %+v", res)
				}
				return err
			}); err != nil {
				t.Fatal(err)
			}
			want = append([]Entry{{Time: e.clk.Now(), Source: "broker", Type: "cancel", RolloutID: rid, Version: "1.0.0"}}, want...)
		}
		n := pendingOf(t, e.db, "d1")
		stored, counted := storedTimeline(t, e.db, "d1")
		if n < 1 || n > maxPendingEntries || counted != stored {
			t.Fatalf("step %d: %d entries carried (want 1 to %d), %d stored, count %d", i, n, maxPendingEntries, stored, counted)
		}
		if wantN := i%maxPendingEntries + 1; n != wantN {
			t.Fatalf("step %d: %d entries carried, want %d", i, n, wantN)
		}
		// written: the full records' entries, a timeline of 12 trimmed
		// back to 12 when it holds 16 (its slack is 3)
		wantStored := i / maxPendingEntries * maxPendingEntries
		if wantStored > 12+3 {
			wantStored = 12
		}
		if stored != wantStored {
			t.Fatalf("step %d: %d entries written, want %d", i, stored, wantStored)
		}
		got, _ := page(t, e.svc, "d1")
		if l := min(len(want), 12); !reflect.DeepEqual(got, want[:l]) {
			t.Fatalf("step %d: timeline\n%+v\nwant\n%+v", i, got, want[:l])
		}
	}
	// a restarted service reads the same
	svc, err := New(e.db, e.cat, e.reg, &Options{Clock: e.clk, TimelineLength: 12})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := page(t, svc, "d1"); !reflect.DeepEqual(got, want[:12]) {
		t.Fatalf("after a restart: %+v", got)
	}
	// an event writes what is carried, before itself
	e.clk.Advance(time.Second)
	if err := svc.Event(ctx, "d1", wire.Event{Code: wire.EvDownloadStarted, RolloutID: "rj"}); err != nil {
		t.Fatal(err)
	}
	if n := pendingOf(t, e.db, "d1"); n != 0 {
		t.Fatalf("after an event: %d entries carried", n)
	}
	got, _ := page(t, svc, "d1")
	if got[0].Type != wire.EvDownloadStarted.String() || !reflect.DeepEqual(got[1:], want[:11]) {
		t.Fatalf("after an event: %+v", got)
	}
}

// An offer record whose pending items do not parse stops nothing: the
// timeline reads without them, the device's events are recorded, and the
// next offer replaces the record.
func TestPendingEntriesDamaged(t *testing.T) {
	e := setup(t, 1000, Options{})
	e.offer("d1")
	ctx := context.Background()
	var bad []byte
	if err := e.db.Update(ctx, func(tx store.Tx) error {
		bad = append(append([]byte(nil), tx.Get(bucketOffers, []byte("d1"))...), 0) // an item of sequence 0, cut short
		return tx.Put(bucketOffers, []byte("d1"), bad)
	}); err != nil {
		t.Fatal(err)
	}
	if es, _, _, err := e.svc.TimelinePage("d1", "", 0); err != nil || len(es) != 0 {
		t.Fatalf("timeline of a damaged offer record: %+v, %v (want none, no error)", es, err)
	}
	e.progress("d1", 5, 1)
	if es, _ := page(t, e.svc, "d1"); len(es) != 1 || es[0].Progress != 5 {
		t.Fatalf("timeline after an event: %+v", es)
	}
	var left []byte
	if err := e.db.View(ctx, func(tx store.Tx) error {
		left = append([]byte(nil), tx.Get(bucketOffers, []byte("d1"))...)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(left, bad) {
		t.Fatal("the event changed the damaged record")
	}
	e.clk.Advance(time.Second)
	if err := e.db.Update(ctx, func(tx store.Tx) error {
		_, err := e.svc.Offer(tx, []string{"d1"}, OfferSpec{Release: e.rel.ID, RolloutID: "r2"}, "t")
		return err
	}); err != nil {
		t.Fatalf("offer over a damaged record: %v", err)
	}
	if n := pendingOf(t, e.db, "d1"); n != 1 {
		t.Fatalf("the new offer record carries %d entries, want its own", n)
	}
	if es, _ := page(t, e.svc, "d1"); len(es) != 2 || es[0].RolloutID != "r2" || es[1].Progress != 5 {
		t.Fatalf("timeline after the new offer: %+v", es)
	}
}

// An event whose transaction fails leaves the entries the offer record
// carries where they were: carried, not written, the count unchanged.
func TestPendingEntriesKeptByFailedEvent(t *testing.T) {
	fail := false
	e := setup(t, 1000, Options{EventFault: func() error {
		if fail {
			return errors.New("injected")
		}
		return nil
	}})
	e.offer("d1")
	fail = true
	e.clk.Advance(time.Second)
	if err := e.svc.Event(context.Background(), "d1", wire.Event{Code: wire.EvDownloadStarted, RolloutID: "r1"}); err == nil {
		t.Fatal("event with the fault: no error")
	}
	if n := pendingOf(t, e.db, "d1"); n != 1 {
		t.Fatalf("after the failed event the offer carries %d entries, want 1", n)
	}
	if stored, counted := storedTimeline(t, e.db, "d1"); stored != 0 || counted != 0 {
		t.Fatalf("after the failed event: %d entries written, count %d", stored, counted)
	}
	if es, _ := page(t, e.svc, "d1"); len(es) != 1 || es[0].Type != "offer" {
		t.Fatalf("timeline after the failed event: %+v", es)
	}
}

// BenchmarkOfferPass: one transaction offering a release to 4,000 devices
// whose timelines are full (as in any broker that has run a while), the
// way a rollout's pass writes a batch of its offers; the store does not
// fsync, so this is the transaction's own work. Each round offers under a
// new rollout, and cancels in a transaction of its own.
func BenchmarkOfferPass(b *testing.B) {
	const n = 4000
	e := setup(b, 1000, Options{})
	ctx := context.Background()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%05d", i)
	}
	if err := e.db.Update(ctx, func(tx store.Tx) error {
		for _, id := range ids {
			if _, err := e.reg.Register(tx, fleet.Registration{ID: id, Attributes: fleet.Attributes{Hardware: "esp32-v2"}}, fleet.TokenSecret("x"), "t"); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	for range DefaultTimelineLength {
		e.clk.Advance(time.Millisecond)
		if err := e.db.Update(ctx, func(tx store.Tx) error {
			for _, id := range ids {
				if err := e.svc.appendTimeline(tx, id, Entry{Time: e.clk.Now(), Source: "device", Type: "update.download.progress", RolloutID: "r0"}); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	round := 0
	b.ResetTimer()
	for b.Loop() {
		round++
		e.clk.Advance(time.Second)
		if err := e.db.Update(ctx, func(tx store.Tx) error {
			_, err := e.svc.Offer(tx, ids, OfferSpec{Release: e.rel.ID, RolloutID: fmt.Sprintf("r%d", round)}, "t")
			return err
		}); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := e.db.Update(ctx, func(tx store.Tx) error { _, err := e.svc.Cancel(tx, ids, "t"); return err }); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/offer")
}
