package sim

import "testing"

// TestOtadata follows ESP-IDF's otadata through an update, a rollback
// before the confirmation, and one after it (agent-c/port/posix/sim.c).
func TestOtadata(t *testing.T) {
	var o otadata
	one := [2]bool{true, false}
	both := [2]bool{true, true}
	if s := o.boot(one, false); s != 0 || o[0] != (odEntry{1, odValid}) {
		t.Fatalf("fresh: slot %d, %+v", s, o)
	}
	// an update to slot 1: new, then pending-verify at its boot
	o.setBoot(1)
	if o[1] != (odEntry{2, odNew}) {
		t.Fatalf("set boot: %+v", o)
	}
	if s := o.boot(both, false); s != 1 || o[1].state != odPending {
		t.Fatalf("first boot of the update: slot %d, %+v", s, o)
	}
	// reset before the confirmation: aborted, slot 0 again
	if s := o.boot(both, false); s != 0 || o[1].state != odAborted {
		t.Fatalf("unconfirmed reset: slot %d, %+v", s, o)
	}
	// with a boot counter the unconfirmed image boots again
	o.setBoot(1)
	o.boot(both, false)
	if s := o.boot(both, true); s != 1 || o[1].state != odPending {
		t.Fatalf("retry: slot %d, %+v", s, o)
	}
	// the agent's rollback before the confirmation
	if !o.markInvalid(both) {
		t.Fatal("rollback not possible")
	}
	if s := o.boot(both, false); s != 0 || o.markInvalid(both) {
		t.Fatalf("after the rollback: slot %d, %+v", s, o)
	}
	if !o.invalidateInactive(0) || o[1] != (odEntry{}) || o.invalidateInactive(0) {
		t.Fatalf("invalidate: %+v", o)
	}
	// confirmed, then rolled back: the old image becomes new again and
	// boots pending-verify, like an update
	o.setBoot(1)
	o.boot(both, false)
	if !o.markValid() {
		t.Fatal("confirm")
	}
	if st, _ := o.stateOf(1); st != odValid {
		t.Fatalf("state of slot 1: %d", st)
	}
	o.setBoot(0)
	if s := o.boot(both, false); s != 0 || o.active() < 0 {
		t.Fatalf("rollback after the confirmation: slot %d, %+v", s, o)
	}
	if st, _ := o.stateOf(0); st != odPending {
		t.Fatalf("the old image boots in state %d", st)
	}
	// no image in the chosen slot: the other one
	var p otadata
	p.setBoot(1)
	if s := p.boot([2]bool{true, false}, false); s != 0 {
		t.Fatalf("slot %d without an image", s)
	}
	if s := (&otadata{}).boot([2]bool{}, false); s != -1 {
		t.Fatalf("no image at all: slot %d", s)
	}
}

// TestCfgStore: a configuration in use now or at the next start, the one
// not confirmed before a start rolled back then.
func TestCfgStore(t *testing.T) {
	c := newCfgStore()
	if s, _ := c.bootState(); s != 1 || c.inUse() != nil {
		t.Fatalf("empty: slot %d", s)
	}
	a, b := &blob{version: "1"}, &blob{version: "2"}
	c.activate(0, a, false)
	if c.state != odPending || c.inUse() != a {
		t.Fatalf("%+v", c)
	}
	c.state = odValid // confirmed
	c.activate(1, b, true)
	if c.state != odNew || c.previous != 0 {
		t.Fatalf("%+v", c)
	}
	c.boot()
	if c.state != odPending || c.inUse() != b {
		t.Fatalf("started: %+v", c)
	}
	c.boot() // a second start without a confirmation
	if c.inUse() != a || c.state != odValid || c.blobs[1] != nil {
		t.Fatalf("reverted: %+v", c)
	}
	c.rollback()
	if c.inUse() != nil {
		t.Fatalf("rolled back to nothing: %+v", c)
	}
}
