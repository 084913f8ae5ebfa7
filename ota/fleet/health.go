package fleet

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/otamq/otamq/ota/event"
	"github.com/otamq/otamq/ota/store"
	"github.com/otamq/otamq/ota/wire"
)

// Conn describes a new connection.
type Conn struct {
	Remote   string
	Protocol uint8
}

// Disconnect reasons recorded in Status.DisconnectReason and counted by the
// broker.
const (
	ReasonNormal    = "normal"            // the client sent DISCONNECT
	ReasonKeepalive = "keepalive_timeout" // nothing heard for 1.5 × keepalive
	ReasonLost      = "connection_lost"   // the network connection failed
	ReasonTakeover  = "taken_over"        // a new connection with the same ID
	ReasonProtocol  = "protocol_error"    // the client broke the protocol
	ReasonKicked    = "kicked"            // the broker disconnected it (revoked)
	ReasonShutdown  = "server_shutdown"
	ReasonRestart   = "broker_restart" // was online when the broker stopped
)

// DisconnectReasons lists the reasons a live session can end with (every
// Reason* but ReasonRestart, which is recorded only at start-up).
var DisconnectReasons = []string{ReasonNormal, ReasonKeepalive, ReasonLost, ReasonTakeover, ReasonProtocol, ReasonKicked, ReasonShutdown}

// markDirty queues e for the next flush. Callers hold e.mu.
func (r *Registry) markDirty(e *entry) {
	if e.dirty {
		return
	}
	e.dirty = true
	r.dirtyMu.Lock()
	r.dirty = append(r.dirty, e)
	r.dirtyMu.Unlock()
}

// Connected records a new session of id and returns its generation, to be
// passed to Disconnected and WillFired. It returns 0 if id is not
// registered.
func (r *Registry) Connected(id string, c Conn) uint64 {
	e := r.lookup(id)
	if e == nil {
		return 0
	}
	gen := r.gen.Add(1)
	now := r.now()
	e.mu.Lock()
	old, reached := e.conn, e.reached
	e.conn, e.reached = gen, nil
	st := &e.status
	st.online = true
	st.via, st.viaGen, st.unreachable = "", 0, false // its own connection, not a gateway's
	st.connectedAt, st.lastSeen = now.UnixNano(), now.UnixNano()
	st.connects++
	st.remote, st.protocol = c.Remote, c.Protocol
	st.reason = 0
	r.markDirty(e)
	e.mu.Unlock()
	if old != 0 && len(reached) > 0 {
		// A gateway's new session took over the old one, whose children
		// are cut off until it relays for them again.
		r.gatewayGone(id, old, reached, now)
	}
	if role := e.rec.Load().Role; role.IsDevice() {
		// Operators' comings and goings (every otactl command) are not
		// fleet events.
		r.feed.Publish(event.Connected{Base: event.Base{ID: id, At: now}, Role: string(role), Gen: gen, Remote: c.Remote, Protocol: c.Protocol})
	}
	return gen
}

// Disconnected records the end of session gen of id. It reports false, and
// changes nothing, when gen is not the current session (the old connection
// of a takeover, or an unknown ID).
func (r *Registry) Disconnected(id string, gen uint64, reason string) bool {
	e := r.lookup(id)
	if e == nil {
		return false
	}
	now := r.now()
	e.mu.Lock()
	if gen == 0 || e.conn != gen {
		e.mu.Unlock()
		return false
	}
	e.conn = 0
	reached := e.reached
	e.reached = nil
	st := &e.status
	st.online = false
	st.disconnectedAt, st.lastSeen = now.UnixNano(), now.UnixNano()
	st.reason = reasonCode(reason)
	r.markDirty(e)
	e.mu.Unlock()
	if role := e.rec.Load().Role; role.IsDevice() {
		r.feed.Publish(event.Disconnected{Base: event.Base{ID: id, At: now}, Role: string(role), Gen: gen, Reason: reason})
	}
	r.gatewayGone(id, gen, reached, now) // its children's events after its own
	return true
}

// WillFired records that the broker published the Last Will of session gen
// of id. Like Disconnected it ignores older sessions.
func (r *Registry) WillFired(id string, gen uint64) bool {
	e := r.lookup(id)
	if e == nil {
		return false
	}
	now := r.now()
	e.mu.Lock()
	if gen == 0 || e.conn != gen && e.conn != 0 {
		// A newer session exists: this will belongs to a taken-over one.
		e.mu.Unlock()
		return false
	}
	e.status.willAt = now.UnixNano()
	e.status.wills++
	r.markDirty(e)
	e.mu.Unlock()
	r.feed.Publish(event.WillFired{Base: event.Base{ID: id, At: now}, Gen: gen})
	return true
}

// Birth records a birth message of id.
func (r *Registry) Birth(id string, b wire.Birth) error {
	e := r.lookup(id)
	if e == nil {
		return fmt.Errorf("birth of %s: %w", id, ErrNotFound)
	}
	now := r.now()
	fw, hw := r.intern.get(b.FirmwareVersion), r.intern.get(b.Hardware)
	bl, av := r.intern.get(b.Bootloader), r.intern.get(b.AgentVersion)
	e.mu.Lock()
	st := &e.status
	if !st.born || st.firmware != fw {
		st.firmwareSince = now.UnixNano()
	}
	st.born = true
	st.birthAt, st.lastSeen = now.UnixNano(), now.UnixNano()
	st.firmware, st.reportedHardware, st.bootloader, st.agentVersion = fw, hw, bl, av
	st.slot, st.bootReason, st.bootsSinceCommit = b.Slot, b.BootReason, b.BootsSinceCommit
	st.otaState, st.hasOTAState = b.OTAState, true
	st.link, st.utcOffset, st.secureVersion = b.Connectivity, b.UTCOffsetMinutes, b.SecureVersion
	st.replayGuard = b.ReplayGuard
	r.markDirty(e)
	e.mu.Unlock()
	r.feed.Publish(event.Birth{Base: event.Base{ID: id, At: now}, Birth: b})
	return nil
}

// healthy reports whether flags has every health bit set.
func healthy(flags uint8) bool { return flags&wire.HealthAllOK == wire.HealthAllOK }

// Heartbeat records a heartbeat of id.
func (r *Registry) Heartbeat(id string, h wire.Heartbeat) error {
	e := r.lookup(id)
	if e == nil {
		return fmt.Errorf("heartbeat of %s: %w", id, ErrNotFound)
	}
	now := r.now()
	e.mu.Lock()
	st := &e.status
	wasHealthy := st.heartbeats == 0 || healthy(st.health)
	wasState, hadState := st.otaState, st.hasOTAState
	st.heartbeatAt, st.lastSeen = now.UnixNano(), now.UnixNano()
	st.heartbeats++
	st.heartbeatsRun++
	st.uptime, st.health, st.watchdogResets = h.UptimeSeconds, h.HealthFlags, h.WatchdogResets
	st.freeHeap, st.rssi = h.FreeHeap, h.RSSI
	st.otaState, st.hasOTAState = h.OTAState, true
	st.hasOffset = h.DownloadOffset != nil
	if st.hasOffset {
		st.downloadOffset = *h.DownloadOffset
	}
	isHealthy := healthy(h.HealthFlags)
	r.markDirty(e)
	e.mu.Unlock()
	if isHealthy != wasHealthy {
		r.feed.Publish(event.Health{Base: event.Base{ID: id, At: now}, Flags: h.HealthFlags, Healthy: isHealthy})
	}
	if hadState && h.OTAState != wasState {
		r.feed.Publish(event.OTAState{Base: event.Base{ID: id, At: now}, From: wasState, To: h.OTAState, Offset: h.DownloadOffset})
	}
	return nil
}

// Flush writes every status changed since the last flush in one
// transaction. If the write fails the entries stay queued for the next try.
func (r *Registry) Flush(ctx context.Context) error {
	r.dirtyMu.Lock()
	batch := r.dirty
	r.dirty = nil
	r.dirtyMu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	ids := make([][]byte, len(batch))
	vals := make([][]byte, len(batch))
	for i, e := range batch {
		e.mu.Lock()
		e.dirty = false
		st := e.status.export()
		v, err := json.Marshal(&st)
		e.mu.Unlock()
		if err != nil {
			return fmt.Errorf("encode status: %w", err)
		}
		ids[i] = []byte(e.rec.Load().ID)
		vals[i] = v
	}
	err := r.db.Update(ctx, func(tx store.Tx) error {
		for i := range ids {
			if err := tx.Put(bucketStatus, ids[i], vals[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		for _, e := range batch {
			e.mu.Lock()
			r.markDirty(e)
			e.mu.Unlock()
		}
		return fmt.Errorf("flush %d statuses: %w", len(batch), err)
	}
	return nil
}
