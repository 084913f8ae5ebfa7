package hooks

import (
	"net"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// Anonymous connections whose session never began (mochi skips
// OnDisconnect when the CONNACK cannot be written) leave the set at the
// next sweep instead of staying for good; live ones stay.
func TestAnonymousSetSweepsClosedClients(t *testing.T) {
	srv := mqtt.New(nil)
	a := NewACL(ACLOptions{})
	newClient := func() *mqtt.Client {
		c1, c2 := net.Pipe()
		t.Cleanup(func() { _ = c1.Close(); _ = c2.Close() })
		return srv.NewClient(c1, "tcp", "", false)
	}
	live := newClient()
	a.markAnonymous(live)
	for range 4 * anonSweepEvery {
		cl := newClient()
		a.markAnonymous(cl)
		cl.Stop(nil) // its CONNACK failed: no OnDisconnect
	}
	if n := a.anonymousCount(); n > anonSweepEvery+1 {
		t.Fatalf("%d connections in the anonymous set after %d closed ones, want at most %d", n, 4*anonSweepEvery, anonSweepEvery+1)
	}
	if !a.anonymous(live) {
		t.Fatal("a live anonymous connection left the set")
	}
}
