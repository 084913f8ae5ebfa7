package fleet

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/clock"
	"github.com/otamq/otamq/ota/event"
	"github.com/otamq/otamq/ota/store"
	"github.com/otamq/otamq/ota/wire"
)

// events records what the registry publishes.
type events struct {
	mu  sync.Mutex
	evs []event.Event
}

func (e *events) OnEvent(ev event.Event) {
	e.mu.Lock()
	e.evs = append(e.evs, ev)
	e.mu.Unlock()
}

// types returns the events' type names ("Registered", ...).
func (e *events) types() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, ev := range e.evs {
		out = append(out, strings.TrimPrefix(fmt.Sprintf("%T", ev), "event."))
	}
	return out
}

func setup(t *testing.T) (store.Store, *Registry, *events, *clock.Fake) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "otamq.db")
	db, err := store.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	ev := &events{}
	feed := &event.Feed{}
	feed.Subscribe(ev)
	clk := clock.NewFake(time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC))
	r, err := Open(db, &Options{Feed: feed, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	return db, r, ev, clk
}

func register(t *testing.T, db store.Store, r *Registry, reg Registration, secret Secret) {
	t.Helper()
	if err := db.Update(context.Background(), func(tx store.Tx) error {
		_, err := r.Register(tx, reg, secret, "test")
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

func TestAuthenticate(t *testing.T) {
	db, r, _, _ := setup(t)
	token := NewToken()
	register(t, db, r, Registration{ID: "dev-1"}, TokenSecret(token))
	register(t, db, r, Registration{ID: "dev-cert", Auth: AuthCert}, Secret{})
	pw, err := PasswordSecret("a long operator password")
	if err != nil {
		t.Fatal(err)
	}
	register(t, db, r, Registration{ID: "ops", Role: RoleOperator}, pw)
	register(t, db, r, Registration{ID: "dev-rev"}, TokenSecret(token))
	if err := db.Update(context.Background(), func(tx store.Tx) error {
		_, err := r.Revoke(tx, "dev-rev", "test", "test")
		return err
	}); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name string
		c    Credentials
		want error
	}{
		{"token ok", Credentials{ClientID: "dev-1", Username: "dev-1", Password: []byte(token)}, nil},
		{"wrong token", Credentials{ClientID: "dev-1", Username: "dev-1", Password: []byte(token + "x")}, ErrBadCredentials},
		{"empty password", Credentials{ClientID: "dev-1", Username: "dev-1"}, ErrBadCredentials},
		{"no username", Credentials{ClientID: "dev-1", Password: []byte(token)}, ErrBadCredentials},
		{"username differs", Credentials{ClientID: "dev-1", Username: "dev-2", Password: []byte(token)}, ErrIdentityMismatch},
		{"unknown", Credentials{ClientID: "ghost", Username: "ghost", Password: []byte(token)}, ErrNotFound},
		{"revoked", Credentials{ClientID: "dev-rev", Username: "dev-rev", Password: []byte(token)}, ErrRevoked},
		{"revoked, wrong token", Credentials{ClientID: "dev-rev", Username: "dev-rev", Password: []byte("x")}, ErrBadCredentials},
		{"cert ok", Credentials{ClientID: "dev-cert", HasCert: true, CertCN: "dev-cert"}, nil},
		{"cert CN differs", Credentials{ClientID: "dev-cert", HasCert: true, CertCN: "dev-1"}, ErrIdentityMismatch},
		{"cert-only without cert", Credentials{ClientID: "dev-cert", Username: "dev-cert", Password: []byte("x")}, ErrBadCredentials},
		{"token device with cert", Credentials{ClientID: "dev-1", HasCert: true, CertCN: "dev-1"}, nil},
		{"cert with other username", Credentials{ClientID: "dev-1", Username: "x", HasCert: true, CertCN: "dev-1"}, ErrIdentityMismatch},
		{"operator ok", Credentials{ClientID: "ops", Username: "ops", Password: []byte("a long operator password")}, nil},
		{"operator wrong", Credentials{ClientID: "ops", Username: "ops", Password: []byte("a long operator passwort")}, ErrBadCredentials},
	}
	for _, c := range cases {
		_, err := r.Authenticate(c.c)
		if c.want == nil && err != nil || c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
	}
}

func TestTakeoverNeverMarksOffline(t *testing.T) {
	db, r, ev, _ := setup(t)
	register(t, db, r, Registration{ID: "dev-1"}, TokenSecret(NewToken()))
	g1 := r.Connected("dev-1", Conn{Remote: "a"})
	g2 := r.Connected("dev-1", Conn{Remote: "b"}) // takeover: new session first
	if r.WillFired("dev-1", g1) {
		t.Error("will of the taken-over session counted")
	}
	if r.Disconnected("dev-1", g1, ReasonLost) {
		t.Error("disconnect of the taken-over session counted")
	}
	v, _ := r.Get("dev-1")
	if !v.Status.Online || v.Status.Remote != "b" || v.Status.Reconnects != 1 || v.Status.Wills != 0 {
		t.Fatalf("after takeover: %+v", v.Status)
	}
	if !r.WillFired("dev-1", g2) || !r.Disconnected("dev-1", g2, ReasonKeepalive) {
		t.Fatal("current session's will/disconnect ignored")
	}
	v, _ = r.Get("dev-1")
	if v.Status.Online || v.Status.DisconnectReason != ReasonKeepalive || v.Status.Wills != 1 {
		t.Fatalf("after disconnect: %+v", v.Status)
	}
	want := []string{"Registered", "Connected", "Connected", "WillFired", "Disconnected"}
	if got := ev.types(); !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
}

func TestBirthHeartbeatFlushReload(t *testing.T) {
	db, r, ev, clk := setup(t)
	register(t, db, r, Registration{ID: "dev-1", Attributes: Attributes{Hardware: "esp32-v2"}}, TokenSecret(NewToken()))
	r.Connected("dev-1", Conn{Protocol: 5})
	clk.Advance(time.Second)
	if err := r.Birth("dev-1", wire.Birth{FirmwareVersion: "1.2.3", Hardware: "esp32-v2", Slot: 1, BootReason: wire.BootRollback, OTAState: wire.StateRolledBack, ReplayGuard: 17}); err != nil {
		t.Fatal(err)
	}
	off := uint64(4096)
	clk.Advance(time.Second)
	if err := r.Heartbeat("dev-1", wire.Heartbeat{UptimeSeconds: 60, HealthFlags: wire.HealthAllOK, OTAState: wire.StateDownloading, DownloadOffset: &off}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second)
	if err := r.Heartbeat("dev-1", wire.Heartbeat{UptimeSeconds: 70, HealthFlags: wire.HealthAppOK}); err != nil {
		t.Fatal(err)
	}
	if err := r.Heartbeat("ghost", wire.Heartbeat{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("heartbeat of unknown: %v", err)
	}
	// The health flags dropped, and the OTA state went from rolled back
	// to downloading to idle: typed events for both.
	if got := ev.types(); !slices.Equal(got[len(got)-4:], []string{"Birth", "OTAState", "Health", "OTAState"}) {
		t.Fatalf("events %v", got)
	}
	ev.mu.Lock()
	h, _ := ev.evs[len(ev.evs)-2].(event.Health)
	os, _ := ev.evs[len(ev.evs)-3].(event.OTAState)
	b, _ := ev.evs[len(ev.evs)-4].(event.Birth)
	ev.mu.Unlock()
	if h.Healthy || h.Flags != wire.HealthAppOK || os.From != wire.StateRolledBack || os.To != wire.StateDownloading ||
		os.Offset == nil || *os.Offset != 4096 || b.Birth.ReplayGuard != 17 || b.Birth.Slot != 1 {
		t.Fatalf("event values: %+v %+v %+v", h, os, b)
	}
	c := r.Counts()
	if c.Online != 1 || c.Registered["esp32-v2"] != 1 || c.ByVersion[[2]string{"1.2.3", "esp32-v2"}] != 1 {
		t.Fatalf("counts %+v", c)
	}
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	// A new registry over the same file sees the flushed status, offline
	// because the broker it belonged to is gone.
	r2, err := Open(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	v, ok := r2.Get("dev-1")
	if !ok {
		t.Fatal("lost after reload")
	}
	st := v.Status
	if st.Online || st.DisconnectReason != ReasonRestart || st.Firmware != "1.2.3" || st.Slot != 1 ||
		st.BootReason != "rollback" || st.Heartbeats != 2 || st.Uptime != 70 || st.HealthFlags != wire.HealthAppOK ||
		st.DownloadOffset != nil || !st.LastSeen.Equal(clk.Now()) || st.ReplayGuard != 17 {
		t.Fatalf("reloaded status %+v", st)
	}
}

func TestFlushCoalesces(t *testing.T) {
	db, r, _, _ := setup(t)
	register(t, db, r, Registration{ID: "dev-1"}, TokenSecret(NewToken()))
	register(t, db, r, Registration{ID: "dev-2"}, TokenSecret(NewToken()))
	for range 100 {
		_ = r.Heartbeat("dev-1", wire.Heartbeat{})
		_ = r.Heartbeat("dev-2", wire.Heartbeat{})
	}
	r.dirtyMu.Lock()
	n := len(r.dirty)
	r.dirtyMu.Unlock()
	if n != 2 {
		t.Fatalf("%d dirty entries after 200 heartbeats of 2 devices, want 2", n)
	}
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.dirtyMu.Lock()
	n = len(r.dirty)
	r.dirtyMu.Unlock()
	if n != 0 {
		t.Fatalf("%d dirty after flush", n)
	}
}

func TestAttributeValidationReportsAll(t *testing.T) {
	err := Attributes{Hardware: "a b", Region: "x/y", Connectivity: "5g"}.validate()
	if !errors.Is(err, ErrInvalid) {
		t.Fatal(err)
	}
	for _, want := range []string{"hardware", "region", "connectivity"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

// FirmwareSince is the time of the first birth on the version a device
// runs: another birth on it keeps it, one on another version moves it; it
// survives a reload.
func TestFirmwareSince(t *testing.T) {
	db, r, _, clk := setup(t)
	register(t, db, r, Registration{ID: "dev-1", Attributes: Attributes{Hardware: "esp32-v2"}}, TokenSecret(NewToken()))
	birth := func(v string) time.Time {
		t.Helper()
		clk.Advance(time.Minute)
		if err := r.Birth("dev-1", wire.Birth{FirmwareVersion: v, Hardware: "esp32-v2"}); err != nil {
			t.Fatal(err)
		}
		return clk.Now()
	}
	since := func(rr *Registry) time.Time {
		v, _ := rr.Get("dev-1")
		return v.Status.FirmwareSince
	}
	first := birth("1.0.0")
	birth("1.0.0")
	if got := since(r); !got.Equal(first) {
		t.Fatalf("after a second birth on 1.0.0: since %v, want %v", got, first)
	}
	moved := birth("1.1.0")
	if got := since(r); !got.Equal(moved) {
		t.Fatalf("after the birth on 1.1.0: since %v, want %v", got, moved)
	}
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	r2, err := Open(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := since(r2); !got.Equal(moved) {
		t.Fatalf("reloaded: since %v, want %v", got, moved)
	}
}
