package delivery

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/store"
	"github.com/otamq/otamq/ota/wire"
)

func sampleOffer() *Offer {
	return &Offer{Device: "d1", RolloutID: "r2", Release: "1.0.0@abcdef01", Version: "1.0.0",
		Digest: manifest.Digest{1, 2, 3, 31: 9}, InstallMode: wire.InstallOnCommand, BlockSize: 4096,
		Deadline: 1795000000, Created: time.Date(2026, 11, 26, 12, 0, 0, 123, time.UTC), By: "rollout r2",
		Recent: []string{"r2", "r1"}, Cancelled: true}
}

func TestOfferRecordRoundTrip(t *testing.T) {
	for _, of := range []*Offer{sampleOffer(), {Device: "d", RolloutID: "r", Created: time.Unix(0, 0).UTC()}} {
		got, err := decodeOffer(encodeOffer(of), nil)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, of) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, of)
		}
	}
}

// Offers stored as JSON, before the binary record, still load; the next
// write of such an offer is binary.
func TestOfferRecordReadsJSON(t *testing.T) {
	e := setup(t, 1000, Options{})
	old := sampleOffer()
	old.Cancelled = false
	old.Release, old.Version = e.rel.ID, e.rel.Version
	v, err := json.Marshal(old)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := e.db.Update(ctx, func(tx store.Tx) error { return tx.Put(bucketOffers, []byte("d1"), v) }); err != nil {
		t.Fatal(err)
	}
	svc, err := New(e.db, e.cat, e.reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := svc.Current("d1"); !ok || !reflect.DeepEqual(&got, old) {
		t.Fatalf("JSON offer loaded as %+v (%v), want %+v", got, ok, old)
	}
	e.svc = svc
	if res := e.offer("d1"); !res[0].OK {
		t.Fatal(res)
	}
	var stored []byte
	_ = e.db.View(ctx, func(tx store.Tx) error { stored = append(stored, tx.Get(bucketOffers, []byte("d1"))...); return nil })
	of, err := decodeOffer(stored, nil)
	if err != nil || stored[0] != offerVersion {
		t.Fatalf("rewritten offer %q: %v", stored, err)
	}
	if want := []string{"r1", "r2"}; !reflect.DeepEqual(of.Recent, want) {
		t.Fatalf("recent after the JSON offer: %q, want %q", of.Recent, want)
	}
}

// A damaged record is an error naming the device, never a panic or a
// half-read offer: loading refuses the store.
func TestOfferRecordDamaged(t *testing.T) {
	b := encodeOffer(sampleOffer())
	for _, c := range []struct {
		name string
		v    []byte
	}{
		{"empty", nil},
		{"unknown version", append([]byte{9}, b[1:]...)},
		{"truncated", b[:len(b)-1]},
		{"trailing", append(append([]byte(nil), b...), 0)},
		{"bad flags", append([]byte{b[0], 0x80}, b[2:]...)},
		{"pending flag, no entries", append([]byte{b[0], b[1] | offerPending}, b[2:]...)},
		{"bad json", []byte(`{"device":`)},
	} {
		if _, err := decodeOffer(c.v, nil); !errors.Is(err, errOffer) {
			t.Errorf("%s: %v, want errOffer", c.name, err)
		}
	}
	e := setup(t, 1000, Options{})
	if err := e.db.Update(context.Background(), func(tx store.Tx) error { return tx.Put(bucketOffers, []byte("d1"), b[:10]) }); err != nil {
		t.Fatal(err)
	}
	if _, err := New(e.db, e.cat, e.reg, nil); err == nil || !strings.Contains(err.Error(), `"d1"`) {
		t.Fatalf("load of a damaged offer: %v", err)
	}
}

// progress sends device id's download progress events first, first+1, ...
// first+n-1 in rollout r1, a second apart.
func (e *env) progress(id string, first, n int) {
	e.t.Helper()
	for i := first; i < first+n; i++ {
		e.clk.Advance(time.Second)
		if err := e.svc.Event(context.Background(), id, wire.Event{Code: wire.EvDownloadProgress, RolloutID: "r1", Progress: uint8(i)}); err != nil {
			e.t.Fatal(err)
		}
	}
}

// A full timeline keeps its length: readers see the newest entries, and
// the store trims back to the length once it holds the slack more.
func TestTimelineTrimKeepsNewest(t *testing.T) {
	e := setup(t, 1000, Options{TimelineLength: 3})
	e.offer("d1")
	for i := range 6 {
		e.progress("d1", i, 1)
		tl, err := e.svc.Timeline("d1", 0)
		if err != nil {
			t.Fatal(err)
		}
		if want := min(i+2, 3); len(tl) != want || tl[0].Progress != uint8(i) {
			t.Fatalf("after %d events: %d entries (want %d), newest %+v", i+1, len(tl), want, tl[0])
		}
		// stored: at most the length and its slack (1 here), and the
		// count says how many
		stored, counted := storedTimeline(t, e.db, "d1")
		want := i + 2 // the offer and the events
		if want > 4 {
			want = 3 + (want-5)%2 // the fifth is trimmed back to 3, and so on
		}
		if stored != want {
			t.Fatalf("after %d events: %d entries stored, want %d", i+1, stored, want)
		}
		if counted != stored {
			t.Fatalf("after %d events: %d entries stored, the count says %d", i+1, stored, counted)
		}
	}
}

// storedTimeline returns how many entries id's timeline holds in the
// store, and what its count record says.
func storedTimeline(t *testing.T, db store.Store, id string) (stored, counted int) {
	t.Helper()
	prefix := []byte(id + "\x00")
	if err := db.View(context.Background(), func(tx store.Tx) error {
		if err := tx.Scan(bucketTimeline, prefix, false, func(k, _ []byte) error {
			if !strings.HasPrefix(string(k), string(prefix)) {
				return store.ErrStop
			}
			stored++
			return nil
		}); err != nil {
			return err
		}
		n, _ := binary.Uvarint(tx.Get(bucketTimelineLen, []byte(id)))
		counted = int(n)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return stored, counted
}

func FuzzDecodeOffer(f *testing.F) {
	f.Add(encodeOffer(sampleOffer()))
	f.Add(encodeOffer(&Offer{}))
	withPending := sampleOffer()
	it := itemOf(withPending, 7)
	withPending.pending = appendItem(appendItem(nil, &it, nil), &it, &it)
	f.Add(encodeOffer(withPending))
	j, _ := json.Marshal(sampleOffer())
	f.Add(j)
	f.Fuzz(func(t *testing.T, v []byte) {
		of, err := decodeOffer(v, func(b []byte) string { return string(b) })
		if err != nil {
			return
		}
		if v[0] == offerVersion {
			if again, err := decodeOffer(encodeOffer(of), nil); err != nil || !reflect.DeepEqual(again, of) {
				t.Fatalf("re-encoded %+v decodes as %+v (%v)", of, again, err)
			}
		}
	})
}

func sampleEntry() Entry {
	return Entry{Time: time.Date(2026, 11, 26, 12, 0, 0, 123, time.UTC), Source: "device", Type: "update.download.progress",
		RolloutID: "r2", Version: "1.1.0", Progress: 40, Error: "flash_write", Detail: "sector 12", DeviceTime: 1795000000}
}

func TestEntryRecordRoundTrip(t *testing.T) {
	for _, e := range []Entry{sampleEntry(), {Time: time.Unix(0, 0).UTC()}} {
		got, err := decodeEntry(encodeEntry(&e))
		if err != nil || got != e {
			t.Fatalf("%+v decodes as %+v (%v)", e, got, err)
		}
	}
	// an entry written before the binary record
	e := sampleEntry()
	j, _ := json.Marshal(e)
	if got, err := decodeEntry(j); err != nil || got != e {
		t.Fatalf("JSON %s decodes as %+v (%v)", j, got, err)
	}
	b := encodeEntry(&e)
	for _, bad := range [][]byte{nil, {}, {2, 0}, b[:len(b)-1], append(b, 0), {'{'}} {
		if _, err := decodeEntry(bad); !errors.Is(err, errEntry) {
			t.Errorf("decodeEntry(%x): %v, want errEntry", bad, err)
		}
	}
}

// A store from before the entry count: its JSON entries are read, counted
// once, and trimmed like the others.
func TestTimelineFromOlderStore(t *testing.T) {
	e := setup(t, 1000, Options{TimelineLength: 4})
	e.offer("d1") // carried by the offer record: no entry written yet
	var old []Entry
	if err := e.db.Update(context.Background(), func(tx store.Tx) error {
		if err := tx.Delete(bucketTimelineLen, []byte("d1")); err != nil {
			return err
		}
		for i := range 2 {
			en := Entry{Time: e.clk.Now().Add(time.Duration(i+1) * time.Millisecond), Source: "device", Type: "update.check.started", RolloutID: "r1"}
			old = append(old, en)
			v, _ := json.Marshal(en)
			if err := tx.Put(bucketTimeline, timelineKey("d1", en.Time, uint64(1000+i)), v); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	e.progress("d1", 0, 3)
	tl, err := e.svc.Timeline("d1", 0)
	if err != nil {
		t.Fatal(err)
	}
	// 1 offer + 2 old + 3 new = 6, trimmed to the newest 4: the old ones
	// (the offer and the first old one are gone)
	if len(tl) != 4 || tl[0].Progress != 2 || tl[3] != old[1] {
		t.Fatalf("timeline %+v", tl)
	}
	if err := e.db.View(context.Background(), func(tx store.Tx) error {
		if n, err := timelineLen(tx, "d1", []byte("d1\x00")); err != nil || n != 4 {
			t.Errorf("stored count %d (%v), want 4", n, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// A transaction that appended and then failed leaves the entries and the
// count as they were: the timeline keeps its length afterwards.
func TestTimelineCountFailedTransaction(t *testing.T) {
	e := setup(t, 1000, Options{TimelineLength: 3})
	e.offer("d1")
	failed := errors.New("injected after the append")
	for i := range 12 {
		e.clk.Advance(time.Second)
		fail := i%2 == 1
		err := e.db.Update(context.Background(), func(tx store.Tx) error {
			if err := e.svc.appendTimeline(tx, "d1", Entry{Time: e.clk.Now(), Source: "device", Type: "update.download.progress", RolloutID: "r1", Progress: uint8(i)}); err != nil {
				return err
			}
			if fail {
				return failed
			}
			return nil
		})
		if fail != errors.Is(err, failed) {
			t.Fatalf("append %d: %v", i, err)
		}
		stored, counted := storedTimeline(t, e.db, "d1")
		if stored != counted || stored > 4 {
			t.Fatalf("after append %d: %d entries stored, the count says %d (at most 4: the length and its slack)", i, stored, counted)
		}
	}
	tl, err := e.svc.Timeline("d1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(tl) != 3 || tl[0].Progress != 10 || tl[1].Progress != 8 || tl[2].Progress != 6 {
		t.Fatalf("timeline %+v", tl)
	}
}

func FuzzDecodeEntry(f *testing.F) {
	e := sampleEntry()
	f.Add(encodeEntry(&e))
	f.Add(encodeEntry(&Entry{}))
	j, _ := json.Marshal(e)
	f.Add(j)
	f.Fuzz(func(t *testing.T, v []byte) {
		en, err := decodeEntry(v)
		if err != nil {
			return
		}
		if v[0] == entryVersion {
			if again, err := decodeEntry(encodeEntry(&en)); err != nil || again != en {
				t.Fatalf("re-encoded %+v decodes as %+v (%v)", en, again, err)
			}
		}
	})
}

// BenchmarkTimelineAppend: one entry appended to each of 100 devices,
// each timeline full (as in any broker that has run a while), in one
// transaction, the way a rollout's pass writes its offers.
func BenchmarkTimelineAppend(b *testing.B) {
	db, err := store.Open(filepath.Join(b.TempDir(), "x.db"), &store.Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	s := &Service{db: db, o: Options{TimelineLength: DefaultTimelineLength}}
	ids := make([]string, 100)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%05d", i)
	}
	at := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	appendAll := func() {
		if err := db.Update(context.Background(), func(tx store.Tx) error {
			for _, id := range ids {
				at = at.Add(time.Millisecond)
				if err := s.appendTimeline(tx, id, Entry{Time: at, Source: "broker", Type: "offer", RolloutID: "r1", Version: "1.2.3"}); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	for range DefaultTimelineLength + timelineSlack(DefaultTimelineLength) {
		appendAll()
	}
	b.ResetTimer()
	for b.Loop() {
		appendAll()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(ids)), "ns/append")
}

// Pages reach the newest TimelineLength entries only, also while the store
// holds more (up to the slack, before its next trim).
func TestTimelinePagesStopAtLength(t *testing.T) {
	e := setup(t, 1000, Options{TimelineLength: 8})
	e.offer("d1")
	e.progress("d1", 0, 9) // with the offer: 10 entries stored, the slack is 2
	if stored, _ := storedTimeline(t, e.db, "d1"); stored != 10 {
		t.Fatalf("%d entries stored, want 10 (not trimmed yet)", stored)
	}
	all, _, more, err := e.svc.TimelinePage("d1", "", 0)
	if err != nil || len(all) != 8 || more || all[0].Progress != 8 || all[7].Progress != 1 {
		t.Fatalf("one page: %d entries, more %v (%v): %+v", len(all), more, err, all)
	}
	var got []Entry
	before := ""
	for page := 0; ; page++ {
		es, cs, more, err := e.svc.TimelinePage("d1", before, 3)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, es...)
		if !more {
			break
		}
		if page > 5 || len(cs) == 0 {
			t.Fatalf("page %d: more with %d entries", page, len(es))
		}
		before = cs[len(cs)-1]
	}
	if !reflect.DeepEqual(got, all) {
		t.Fatalf("pages of 3 gave %d entries, want the %d of one page: %+v", len(got), len(all), got)
	}
}
