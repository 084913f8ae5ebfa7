package delivery

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/clock"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/fleet/fleettest"
	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/release"
	"github.com/otamq/otamq/ota/store"
	"github.com/otamq/otamq/ota/wire"
)

type sent struct {
	mu     sync.Mutex
	offers map[string][][]byte
}

func (s *sent) SendOffer(id string, p []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.offers[id] = append(s.offers[id], p)
}
func (s *sent) SendCommand(string, []byte) error { return nil }

type env struct {
	t     testing.TB
	db    store.Store
	reg   *fleet.Registry
	cat   *release.Catalog
	svc   *Service
	clk   *clock.Fake
	sent  *sent
	image []byte
	rel   release.Release
}

// setup makes a store with one trusted key, one release of size bytes for
// esp32-v2, and devices d1 and d2 of that hardware.
func setup(t testing.TB, size int, o Options) *env {
	t.Helper()
	clk := clock.NewFake(time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC))
	db, reg := fleettest.Open(t, &fleet.Options{Clock: clk})
	cat, _ := release.Open(db, &release.Options{Clock: clk})
	key, _ := manifest.GenerateKey()
	pub, _ := manifest.MarshalPublicKey(&key.PublicKey)
	img := make([]byte, size)
	_, _ = rand.Read(img)
	n, d, _ := manifest.HashImage(bytes.NewReader(img))
	signed, err := manifest.Sign(&manifest.Manifest{Sequence: 1, Version: "1.0.0", Hardware: []string{"esp32-v2"}, ImageSize: n, ImageDigest: d}, key)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var rel *release.Release
	if err := db.Update(ctx, func(tx store.Tx) error {
		if _, err := cat.AddKey(tx, "k", pub, "t"); err != nil {
			return err
		}
		for _, id := range []string{"d1", "d2"} {
			if _, err := reg.Register(tx, fleet.Registration{ID: id, Attributes: fleet.Attributes{Hardware: "esp32-v2"}}, fleet.TokenSecret("x"), "t"); err != nil {
				return err
			}
		}
		_, err := reg.Register(tx, fleet.Registration{ID: "other", Attributes: fleet.Attributes{Hardware: "rp2040"}}, fleet.TokenSecret("x"), "t")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Update(ctx, func(tx store.Tx) error { _, _, err := cat.BeginUpload(tx, signed, "t"); return err }); err != nil {
		t.Fatal(err)
	}
	if err := db.Update(ctx, func(tx store.Tx) error {
		var err error
		_, rel, err = cat.AppendUpload(tx, d.String(), 0, img, "t")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	s := &sent{offers: map[string][][]byte{}}
	o.Clock, o.Sender = clk, s
	svc, err := New(db, cat, reg, &o)
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, db: db, reg: reg, cat: cat, svc: svc, clk: clk, sent: s, image: img, rel: *rel}
}

func (e *env) offer(ids ...string) []OfferResult {
	e.t.Helper()
	var res []OfferResult
	if err := e.db.Update(context.Background(), func(tx store.Tx) error {
		var err error
		res, err = e.svc.Offer(tx, ids, OfferSpec{Release: e.rel.ID, RolloutID: "r1"}, "t")
		return err
	}); err != nil {
		e.t.Fatal(err)
	}
	return res
}

// blocks serves a request and collects copies of the messages.
func blocks(svc *Service, id string, req wire.BlockRequest, maxData int) [][]byte {
	var out [][]byte
	svc.Serve(context.Background(), id, req, maxData, func(m []byte) { out = append(out, bytes.Clone(m)) })
	return out
}

func decodeAll(t *testing.T, msgs [][]byte) ([]*wire.Block, []*wire.BlockError) {
	t.Helper()
	var bs []*wire.Block
	var es []*wire.BlockError
	for _, m := range msgs {
		b, e, err := wire.DecodeBlock(m, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if b != nil {
			bs = append(bs, b)
		} else {
			es = append(es, e)
		}
	}
	return bs, es
}

func TestBlocksCapsAndErrors(t *testing.T) {
	e := setup(t, 100_000, Options{MaxBlockSize: 8192, MaxWindow: 4, DeviceRate: -1})
	res := e.offer("d1", "other", "ghost")
	if !res[0].OK || res[1].OK || res[2].OK {
		t.Fatalf("offer results %+v", res)
	}
	d := e.rel.Digest[:]
	// Size capped by the service (8 KiB) and by the client (3000), window by 4.
	bs, es := decodeAll(t, blocks(e.svc, "d1", wire.BlockRequest{Digest: d, Offset: 10, Size: 65536, Count: 99, RequestID: 5}, 3000))
	if len(es) != 0 || len(bs) != 4 {
		t.Fatalf("%d blocks, %d errors", len(bs), len(es))
	}
	off := uint64(10)
	for _, b := range bs {
		if len(b.Data) != 3000 || b.Offset != off || b.ImageSize != 100_000 || b.RequestID != 5 ||
			!bytes.Equal(b.Data, e.image[off:off+3000]) {
			t.Fatalf("block at %d: %d bytes, offset %d", off, len(b.Data), b.Offset)
		}
		off += 3000
	}
	// The last window stops at the end of the image.
	bs, _ = decodeAll(t, blocks(e.svc, "d1", wire.BlockRequest{Digest: d, Offset: 99_000, Size: 512, Count: 4, RequestID: 6}, 0))
	if len(bs) != 2 || len(bs[1].Data) != 488 {
		t.Fatalf("tail: %d blocks", len(bs))
	}
	for _, c := range []struct {
		id   string
		req  wire.BlockRequest
		code wire.BlockErr
	}{
		{"d2", wire.BlockRequest{Digest: d, Size: 1, Count: 1}, wire.BlockNotAssigned},
		{"d1", wire.BlockRequest{Digest: make([]byte, 32), Size: 1, Count: 1}, wire.BlockUnknownImage},
		{"d1", wire.BlockRequest{Digest: d, Offset: 100_000, Size: 1, Count: 1}, wire.BlockOutOfRange},
	} {
		_, es := decodeAll(t, blocks(e.svc, c.id, c.req, 0))
		if len(es) != 1 || es[0].Code != c.code {
			t.Errorf("%s %+v: %+v", c.id, c.req, es)
		}
	}
	// A client whose packets cannot carry a block at all.
	if _, es := decodeAll(t, blocks(e.svc, "d1", wire.BlockRequest{Digest: d, Size: 100, Count: 1}, -5)); len(es) != 1 || es[0].Code != wire.BlockBadRequest {
		t.Errorf("no room: %+v", es)
	}
}

func TestRateLimits(t *testing.T) {
	// One device: a burst of one window (2 x 4 KiB), then 4 KiB/s.
	e := setup(t, 100_000, Options{MaxBlockSize: 4096, MaxWindow: 2, DeviceRate: 4096})
	e.offer("d1", "d2")
	d := e.rel.Digest[:]
	req := wire.BlockRequest{Digest: d, Size: 4096, Count: 2}
	if bs, _ := decodeAll(t, blocks(e.svc, "d1", req, 0)); len(bs) != 2 {
		t.Fatal("burst not served")
	}
	_, es := decodeAll(t, blocks(e.svc, "d1", req, 0))
	if len(es) != 1 || es[0].Code != wire.BlockRateLimited || es[0].RetryAfterMS < 1900 || es[0].RetryAfterMS > 2100 {
		t.Fatalf("second window: %+v", es)
	}
	// d2 has its own bucket.
	if bs, _ := decodeAll(t, blocks(e.svc, "d2", req, 0)); len(bs) != 2 {
		t.Fatal("d2 limited by d1's use")
	}
	e.clk.Advance(2 * time.Second)
	if bs, _ := decodeAll(t, blocks(e.svc, "d1", req, 0)); len(bs) != 2 {
		t.Fatal("not served after waiting as told")
	}

	// All devices together: 8 KiB/s.
	g := setup(t, 100_000, Options{MaxBlockSize: 4096, MaxWindow: 2, DeviceRate: -1, GlobalRate: 8192})
	g.offer("d1", "d2")
	d = g.rel.Digest[:]
	req.Digest = d
	if bs, _ := decodeAll(t, blocks(g.svc, "d1", req, 0)); len(bs) != 2 {
		t.Fatal("global burst not served")
	}
	if _, es := decodeAll(t, blocks(g.svc, "d2", req, 0)); len(es) != 1 || es[0].Code != wire.BlockRateLimited {
		t.Fatalf("global cap not applied to another device: %+v", es)
	}
}

func TestTimelineAndEvents(t *testing.T) {
	e := setup(t, 1000, Options{TimelineLength: 5})
	e.offer("d1")
	if err := e.svc.Event(context.Background(), "d1", wire.Event{Code: wire.EvCheckStarted, RolloutID: "nope"}); !errors.Is(err, ErrUnknownRun) {
		t.Fatalf("event for an unknown rollout: %v", err)
	}
	for i := range 8 {
		e.clk.Advance(time.Second)
		if err := e.svc.Event(context.Background(), "d1", wire.Event{Code: wire.EvDownloadProgress, RolloutID: "r1", Progress: uint8(10 * i)}); err != nil {
			t.Fatal(err)
		}
	}
	tl, err := e.svc.Timeline("d1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(tl) != 5 || tl[0].Progress != 70 || tl[4].Progress != 30 {
		t.Fatalf("timeline trimmed to %d, newest %+v", len(tl), tl[0])
	}
	// Events of an older rollout stay acceptable after a new offer, and
	// after a cancel.
	if err := e.db.Update(context.Background(), func(tx store.Tx) error {
		_, err := e.svc.Offer(tx, []string{"d1"}, OfferSpec{Release: e.rel.ID, RolloutID: "r2"}, "t")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.db.Update(context.Background(), func(tx store.Tx) error { _, err := e.svc.Cancel(tx, []string{"d1"}, "t"); return err }); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.Event(context.Background(), "d1", wire.Event{Code: wire.EvRollbackCompleted, RolloutID: "r1"}); err != nil {
		t.Fatalf("late event of an older rollout: %v", err)
	}
	if _, ok := e.svc.Current("d1"); ok {
		t.Fatal("offer still current after cancel")
	}
	if msg, _ := wire.DecodeOffer(e.svc.OfferMessage("d1")); msg.RolloutID != "" {
		t.Fatalf("offer message after cancel: %+v", msg)
	}
	// The offers survive a reload.
	svc2, err := New(e.db, e.cat, e.reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !svc2.knownRollout("d1", "r2") {
		t.Fatal("rollouts not reloaded")
	}
}

// An offer a device is known to refuse (from its last birth) is made, with
// a warning that says why; one it takes, or to a device that never sent a
// birth, has none.
func TestOfferWarnsOfRefusal(t *testing.T) {
	e := setup(t, 1000, Options{}) // release 1.0.0, sequence 1, secure version 0
	if res := e.offer("d1"); !res[0].OK || res[0].Warning != "" {
		t.Fatalf("no birth yet: %+v", res)
	}
	for _, c := range []struct {
		birth wire.Birth
		want  string // in the warning; "" none
	}{
		{wire.Birth{FirmwareVersion: "0.9.0", Hardware: "esp32-v2"}, ""},
		{wire.Birth{FirmwareVersion: "0.9.0", Hardware: "esp32-v2", ReplayGuard: 1}, ""},
		{wire.Birth{FirmwareVersion: "0.9.0", Hardware: "esp32-v2", ReplayGuard: 2}, "replay guard 2"},
		{wire.Birth{FirmwareVersion: "0.9.0", Hardware: "esp32-v2", SecureVersion: 3}, "secure version 0 is below the device's 3"},
		{wire.Birth{FirmwareVersion: "1.0.0", Hardware: "esp32-v2"}, "not newer than the 1.0.0"},
		{wire.Birth{FirmwareVersion: "1.2.0", Hardware: "esp32-v2"}, "not newer than the 1.2.0"},
	} {
		if err := e.reg.Birth("d2", c.birth); err != nil {
			t.Fatal(err)
		}
		res := e.offer("d2")
		if !res[0].OK || !strings.Contains(res[0].Warning, c.want) || (c.want == "") != (res[0].Warning == "") {
			t.Errorf("birth %+v: result %+v, want a warning with %q", c.birth, res[0], c.want)
		}
	}
}

// The test hook makes recording an event fail as a store failure would:
// nothing is written, the caller gets an error (the hooks answer PUBACK
// 0x80 so the device sends it again).
func TestEventFault(t *testing.T) {
	fail := true
	e := setup(t, 1000, Options{EventFault: func() error {
		if fail {
			return errors.New("disk on fire")
		}
		return nil
	}})
	e.offer("d1")
	ev := wire.Event{Code: wire.EvRebootCompleted, RolloutID: "r1", TargetVersion: "1.0.0"}
	if err := e.svc.Event(context.Background(), "d1", ev); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("Event with a failing store: %v", err)
	}
	tl, _ := e.svc.Timeline("d1", 0)
	for _, x := range tl {
		if x.Source == "device" {
			t.Fatalf("a failed event was recorded: %+v", x)
		}
	}
	fail = false
	if err := e.svc.Event(context.Background(), "d1", ev); err != nil {
		t.Fatal(err)
	}
	tl, _ = e.svc.Timeline("d1", 0)
	if tl[0].Source != "device" || tl[0].Type != wire.EvRebootCompleted.String() {
		t.Fatalf("timeline %+v", tl)
	}
}
