package delivery

import (
	"context"
	"encoding/json"
	"errors"
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

// A full timeline keeps its length: each append deletes the oldest entry.
func TestTimelineTrimKeepsNewest(t *testing.T) {
	e := setup(t, 1000, Options{TimelineLength: 3})
	e.offer("d1")
	for i := range 6 {
		e.clk.Advance(time.Second)
		if err := e.svc.Event(context.Background(), "d1", wire.Event{Code: wire.EvDownloadProgress, RolloutID: "r1", Progress: uint8(i)}); err != nil {
			t.Fatal(err)
		}
		tl, err := e.svc.Timeline("d1", 0)
		if err != nil {
			t.Fatal(err)
		}
		if want := min(i+2, 3); len(tl) != want || tl[0].Progress != uint8(i) {
			t.Fatalf("after %d events: %d entries (want %d), newest %+v", i+1, len(tl), want, tl[0])
		}
	}
}

func FuzzDecodeOffer(f *testing.F) {
	f.Add(encodeOffer(sampleOffer()))
	f.Add(encodeOffer(&Offer{}))
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
