package hooks

import (
	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/otamq/otamq/ota/fleet"
)

// Kicker ends the connections of a client whose credentials were revoked or
// replaced: the one under its own ID and, for an operator or observer,
// every session "ID~SUFFIX" (fleet.SplitSession). It implements
// admin.Disconnector.
type Kicker struct {
	srv   *mqtt.Server
	fleet *fleet.Registry
	end   func(clientID string)
}

// NewKicker returns a Kicker that ends each connection with end (the
// broker's Events.Disconnect).
func NewKicker(srv *mqtt.Server, reg *fleet.Registry, end func(clientID string)) *Kicker {
	return &Kicker{srv: srv, fleet: reg, end: end}
}

// Disconnect implements admin.Disconnector.
func (k *Kicker) Disconnect(id, keep string) {
	if id != keep {
		k.end(id)
	}
	if d, ok := k.fleet.Lookup(id); ok && d.Role.IsDevice() {
		return // devices and gateways have no sessions
	}
	for _, cl := range k.srv.Clients.GetAll() {
		if p, ok := fleet.SplitSession(cl.ID); ok && p == id && cl.ID != keep {
			k.end(cl.ID)
		}
	}
}
