package fleet

import (
	"slices"
	"sync"
	"time"

	"github.com/otamq/otamq/ota/event"
)

// Children of gateways (docs/OPERATORS.md, "Gateways").
//
// A child has no connection of its own: its gateway publishes on the
// child's topics. The registry sees the child as online while its gateway
// relays for it: the first message the gateway publishes on one of the
// child's topics in a session of the gateway makes the child reachable
// through that session ("via" the gateway). When that session ends, every
// child reached through it becomes unreachable, with the reason
// ReasonGatewayOffline and the gateway named: the child is not known to be
// down, only cut off. A child its gateway stops relaying for (the child
// died, or left the local link) is no longer online once it has not been
// heard from for Options.ChildTimeout. A child revoked or moved to another
// gateway is offline at once (ReasonGatewayChanged, ReasonKicked).

// Reasons of a child's disconnect.
const (
	// ReasonGatewayOffline: the session of the gateway through which the
	// child was reached ended; the child is unreachable, not known down.
	ReasonGatewayOffline = "gateway_offline"
	// ReasonGatewayChanged: the child was moved to another gateway (or
	// given none); the old one no longer acts for it.
	ReasonGatewayChanged = "gateway_changed"
	// ReasonChildSilent: the gateway is online but has relayed nothing of
	// the child for Options.ChildTimeout (a view, never stored).
	ReasonChildSilent = "child_silent"
)

// DefaultChildTimeout is how long a child whose gateway is online may stay
// unheard before it no longer counts as online: three heartbeats of the
// agent's default period (60 s).
const DefaultChildTimeout = 3 * time.Minute

// kidIndex lists the registered, unrevoked children of each gateway. The
// slices are never changed once stored (an update stores a new one), so a
// reader may walk the one it got without the lock.
type kidIndex struct {
	mu sync.RWMutex // guards m
	m  map[string][]string
}

func (k *kidIndex) get(gw string) []string {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.m[gw]
}

// move takes child out of from's list and into to's ("" for none).
func (k *kidIndex) move(child, from, to string) {
	if from == to {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if from != "" {
		if l := k.m[from]; len(l) > 0 {
			if i := slices.Index(l, child); i >= 0 {
				n := slices.Delete(slices.Clone(l), i, i+1)
				if len(n) == 0 {
					delete(k.m, from)
				} else {
					k.m[from] = n
				}
			}
		}
	}
	if to != "" {
		if k.m == nil {
			k.m = map[string][]string{}
		}
		l := k.m[to]
		n := make([]string, len(l), len(l)+1)
		copy(n, l)
		k.m[to] = append(n, child)
	}
}

// perGateway returns the number of children of each gateway in the index.
func (k *kidIndex) perGateway() map[string]int {
	k.mu.RLock()
	defer k.mu.RUnlock()
	out := make(map[string]int, len(k.m))
	for gw, l := range k.m {
		out[gw] = len(l)
	}
	return out
}

// indexedParent is the parent under which rec belongs in the children
// index: its gateway, unless it is revoked or no device.
func indexedParent(rec *record) string {
	if rec == nil || rec.Revoked || rec.Role != RoleDevice {
		return ""
	}
	return rec.Parent
}

// Children returns the registered, unrevoked children of gateway gw, in no
// order. The slice is shared: never modify it.
func (r *Registry) Children(gw string) []string { return r.kids.get(gw) }

// Relayed records that gateway gw published a message on one of child's
// topics (the ACL has checked it may). While gw's current session lasts the
// child is online through it; the first such message of a session makes
// the child reachable (a Connected event with Via set), and counts as a
// connection of the child unless the child was only unreachable because
// of its gateway (the gateway's return is not the child's reconnect).
func (r *Registry) Relayed(child, gw string) {
	ge, ce := r.lookup(gw), r.lookup(child)
	if ge == nil || ce == nil || ge == ce {
		return
	}
	now := r.now()
	via := r.intern.get(gw)
	// The gateway's lock is held while the child's is taken, so that the
	// gateway's disconnect, which clears its reached children under the
	// same lock, cannot pass between the check of its session and the
	// child's note of it. A child is never a gateway: no cycle.
	ge.mu.Lock()
	gen := ge.conn
	if gen == 0 {
		ge.mu.Unlock()
		return
	}
	ce.mu.Lock()
	st := &ce.status
	if ce.conn != 0 || st.online && st.viaGen == gen && st.via == gw {
		// Connected itself, or already reached through this session.
		st.lastSeen = now.UnixNano()
		ce.mu.Unlock()
		ge.mu.Unlock()
		return
	}
	back := st.unreachable && st.via == gw
	st.online, st.unreachable, st.via, st.viaGen = true, false, via, gen
	st.lastSeen = now.UnixNano()
	if !back {
		st.connects++
		st.connectedAt = now.UnixNano()
	}
	st.reason = 0
	st.remote, st.protocol = "", 0
	r.markDirty(ce)
	ce.mu.Unlock()
	if ge.reached == nil {
		ge.reached = map[*entry]struct{}{}
	}
	ge.reached[ce] = struct{}{}
	ge.mu.Unlock()
	r.feed.Publish(event.Connected{Base: event.Base{ID: child, At: now}, Role: string(RoleDevice), Gen: gen, Via: gw})
}

// gatewayGone makes the children reached through session gen of gateway gw
// unreachable. reached is what the gateway's entry held.
func (r *Registry) gatewayGone(gw string, gen uint64, reached map[*entry]struct{}, now time.Time) {
	for ce := range reached {
		ce.mu.Lock()
		st := &ce.status
		if !st.online || st.via != gw || st.viaGen != gen {
			ce.mu.Unlock()
			continue
		}
		st.online, st.unreachable, st.viaGen = false, true, 0
		st.disconnectedAt = now.UnixNano()
		st.reason = reasonCode(ReasonGatewayOffline)
		r.markDirty(ce)
		ce.mu.Unlock()
		id := ce.rec.Load().ID
		r.feed.Publish(event.Disconnected{Base: event.Base{ID: id, At: now}, Role: string(RoleDevice), Gen: gen,
			Reason: ReasonGatewayOffline, Via: gw})
	}
}

// cutChild ends child's presence through gateway gw, when its registration
// no longer lets gw act for it (moved, revoked).
func (r *Registry) cutChild(ce *entry, gw, reason string) {
	if gw == "" {
		return
	}
	ge := r.lookup(gw)
	now := r.now()
	var gen uint64
	if ge != nil {
		ge.mu.Lock()
		delete(ge.reached, ce)
		ge.mu.Unlock()
	}
	ce.mu.Lock()
	st := &ce.status
	if st.via != gw || !st.online && !st.unreachable {
		ce.mu.Unlock()
		return
	}
	gen = st.viaGen
	wasOnline := st.online
	st.online, st.unreachable, st.viaGen = false, false, 0
	if wasOnline {
		st.disconnectedAt = now.UnixNano()
	}
	st.reason = reasonCode(reason)
	r.markDirty(ce)
	ce.mu.Unlock()
	if wasOnline {
		r.feed.Publish(event.Disconnected{Base: event.Base{ID: ce.rec.Load().ID, At: now}, Role: string(RoleDevice), Gen: gen,
			Reason: reason, Via: gw})
	}
}
