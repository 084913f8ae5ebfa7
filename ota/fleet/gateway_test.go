package fleet

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/event"
	"github.com/otamq/otamq/ota/store"
	"github.com/otamq/otamq/ota/wire"
)

// TestChildPresence: a child is online through the session of its gateway
// that relays for it; the session's end makes it unreachable (not a
// disconnect of its own), a takeover of the gateway's session too; the
// gateway's return is not the child's reconnect; a child not heard from
// for the child timeout is offline; moving or revoking a child cuts it off
// its old gateway at once. The children index follows every change.
func TestChildPresence(t *testing.T) {
	db, r, evs, clk := setup(t)
	tok := TokenSecret("x")
	register(t, db, r, Registration{ID: "gw", Role: RoleGateway}, tok)
	register(t, db, r, Registration{ID: "gw2", Role: RoleGateway}, tok)
	for _, c := range []string{"c1", "c2", "c3"} {
		register(t, db, r, Registration{ID: c, Attributes: Attributes{Parent: "gw"}}, tok)
	}
	kids := func(gw string) []string { return slices.Sorted(slices.Values(r.Children(gw))) }
	if got := kids("gw"); !slices.Equal(got, []string{"c1", "c2", "c3"}) {
		t.Fatalf("children of gw: %v", got)
	}
	status := func(id string) Status { v, _ := r.Get(id); return v.Status }

	// Nothing is relayed while the gateway is offline.
	r.Relayed("c1", "gw")
	if st := status("c1"); st.Online || st.Connects != 0 {
		t.Fatalf("relayed by an offline gateway: %+v", st)
	}
	g1 := r.Connected("gw", Conn{Remote: "10.0.0.1:1"})
	r.Relayed("c1", "gw")
	r.Relayed("c1", "gw")
	r.Relayed("c2", "gw")
	if st := status("c1"); !st.Online || st.Gateway != "gw" || st.Connects != 1 || st.Unreachable {
		t.Fatalf("c1 through gw: %+v", st)
	}
	if c := r.Counts(); c.Online != 1 || c.GatewaysOnline != 1 || c.Children[ChildReachable] != 2 || c.Children[ChildOffline] != 1 {
		t.Fatalf("counts %+v", c)
	}

	// The gateway's session is taken over by a new one: its children are
	// cut off until it relays for them again, which is no reconnect.
	g2 := r.Connected("gw", Conn{Remote: "10.0.0.1:2"})
	if st := status("c1"); st.Online || !st.Unreachable || st.DisconnectReason != ReasonGatewayOffline {
		t.Fatalf("c1 after its gateway's takeover: %+v", st)
	}
	if r.Disconnected("gw", g1, ReasonTakeover) {
		t.Fatal("the old session's disconnect counted")
	}
	r.Relayed("c1", "gw")
	if st := status("c1"); !st.Online || st.Connects != 1 {
		t.Fatalf("c1 after its gateway relayed again: %+v", st)
	}

	// The gateway goes: both children it reached are unreachable, with
	// an event naming it.
	r.Relayed("c2", "gw")
	n := len(evs.types())
	r.Disconnected("gw", g2, ReasonLost)
	for _, c := range []string{"c1", "c2"} {
		if st := status(c); st.Online || !st.Unreachable || st.Gateway != "gw" || st.DisconnectReason != ReasonGatewayOffline {
			t.Fatalf("%s after its gateway left: %+v", c, st)
		}
	}
	var cut []string
	evs.mu.Lock()
	for _, ev := range evs.evs[n:] {
		if d, ok := ev.(event.Disconnected); ok && d.Via == "gw" && d.Reason == ReasonGatewayOffline {
			cut = append(cut, d.ID)
		}
	}
	evs.mu.Unlock()
	if slices.Sort(cut); !slices.Equal(cut, []string{"c1", "c2"}) {
		t.Fatalf("unreachable events for %v", cut)
	}
	if c := r.Counts(); c.Children[ChildUnreachable] != 2 || c.GatewaysOnline != 0 {
		t.Fatalf("counts %+v", c)
	}

	// Back; c1 relayed, then silent past the child timeout.
	r.Connected("gw", Conn{})
	r.Relayed("c1", "gw")
	clk.Advance(DefaultChildTimeout + time.Second)
	if st := status("c1"); st.Online || st.DisconnectReason != ReasonChildSilent || st.Gateway != "gw" {
		t.Fatalf("c1 silent through its online gateway: %+v", st)
	}
	r.Relayed("c1", "gw")
	if st := status("c1"); !st.Online || st.Connects != 1 {
		t.Fatalf("c1 heard again: %+v", st)
	}

	// c1 moves to gw2, c3 is revoked: cut off at once, and out of gw's
	// children.
	ch := "gw2"
	if err := db.Update(context.Background(), func(tx store.Tx) error {
		if _, err := r.Update(tx, "c1", Change{Parent: &ch}, Secret{}, "t"); err != nil {
			return err
		}
		_, err := r.Revoke(tx, "c3", "lost", "t")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if st := status("c1"); st.Online || st.DisconnectReason != ReasonGatewayChanged {
		t.Fatalf("c1 after its move: %+v", st)
	}
	if got := kids("gw"); !slices.Equal(got, []string{"c2"}) {
		t.Fatalf("children of gw after the move and the revocation: %v", got)
	}
	if got := kids("gw2"); !slices.Equal(got, []string{"c1"}) {
		t.Fatalf("children of gw2: %v", got)
	}
	if c := r.Counts(); !slices.Equal(slices.Sorted(slices.Values(c.ChildrenPerGateway)), []int{1, 1}) {
		t.Fatalf("children per gateway %v", c.ChildrenPerGateway)
	}

	// The index and the statuses survive a restart (nobody is online then).
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	r2, err := Open(db, &Options{Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	if got := r2.Children("gw2"); !slices.Equal(got, []string{"c1"}) {
		t.Fatalf("children of gw2 after a restart: %v", got)
	}
	if v, _ := r2.Get("c2"); v.Status.Online || v.Status.Unreachable || v.Status.Gateway != "gw" {
		t.Fatalf("c2 after a restart: %+v", v.Status)
	}
}

// BenchmarkRelayedHeartbeat is what a gateway's relay of a child's
// heartbeat costs the registry (Relayed, then Heartbeat) against a
// device's own heartbeat.
func BenchmarkRelayedHeartbeat(b *testing.B) {
	for _, relayed := range []bool{false, true} {
		name := "own"
		if relayed {
			name = "relayed"
		}
		b.Run(name, func(b *testing.B) {
			path := b.TempDir() + "/otamq.db"
			db, err := store.Open(path, &store.Options{NoSync: true})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			r, err := Open(db, nil)
			if err != nil {
				b.Fatal(err)
			}
			if err := db.Update(context.Background(), func(tx store.Tx) error {
				if _, err := r.Register(tx, Registration{ID: "gw", Role: RoleGateway}, TokenSecret("x"), "t"); err != nil {
					return err
				}
				_, err := r.Register(tx, Registration{ID: "c", Attributes: Attributes{Parent: "gw"}}, TokenSecret("x"), "t")
				return err
			}); err != nil {
				b.Fatal(err)
			}
			r.Connected("gw", Conn{})
			if !relayed {
				r.Connected("c", Conn{})
			}
			hb := wire.Heartbeat{UptimeSeconds: 1, HealthFlags: wire.HealthAllOK}
			b.ReportAllocs()
			for b.Loop() {
				if relayed {
					r.Relayed("c", "gw")
				}
				if err := r.Heartbeat("c", hb); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
