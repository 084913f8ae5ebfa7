package sim

import (
	"errors"
	"slices"
	"time"

	"github.com/otamq/otamq/ota/wire"
)

// The device's MQTT connection: attempts, the agent's ota_agent_on_connect
// and on_disconnect, and what the link's goroutines deliver.

// offline is the device's daily offline window.
func (d *device) offline() Window {
	if d.spec.Offline != nil {
		return *d.spec.Offline
	}
	return d.f.cfg.Offline
}

// checkWindow drops the connection when an OfflineWindow device's window
// begins and lets it connect again when it ends.
func (d *device) checkWindow(now time.Time) {
	if d.spec.Profile != OfflineWindow {
		return
	}
	in := d.offline().contains(now, d.spec.UTCOffsetMinutes)
	switch {
	case in && !d.inWindow:
		d.inWindow = true
		d.dropLink(now)
	case !in && d.inWindow:
		d.inWindow = false
		d.connectAt, d.backoff = now, 0
	}
}

// maybeConnect starts a connection attempt when one is due.
func (d *device) maybeConnect(now time.Time) {
	if d.connected || d.connecting || d.inWindow || d.connectAt.IsZero() || now.Before(d.connectAt) {
		return
	}
	if !d.reserved {
		if w := d.f.reserve(now); w > 0 {
			d.reserved, d.connectAt = true, now.Add(w)
			return
		}
	}
	d.reserved, d.connectAt, d.connecting = false, time.Time{}, true
	d.gen++
	g := d.gen
	d.f.spawn(func() { d.connect(g) })
}

// connect is one connection attempt, in its own goroutine: the CONNECT,
// then the agent's ota_agent_on_connect (birth, subscriptions, the events
// waiting, heartbeat, the download or install under way).
func (d *device) connect(g uint64) {
	f := d.f
	l, err := f.dial(f.ctx, dialConfig{addr: f.addr, id: d.spec.ID, token: d.spec.Token,
		keepAlive: uint16(f.t.KeepAlive / time.Second), maxPacket: f.t.BlockSize + blockOverhead, timeout: f.t.ConnectTimeout},
		linkHandler{
			message: func(topic string, p []byte) { d.onMessage(g, topic, p) },
			puback:  func(id uint16, code byte) { d.onLinkPuback(g, id, code) },
			lost:    func(err error) { d.onLost(g, err) },
		})
	d.mu.Lock()
	if g != d.gen || d.stopped {
		d.mu.Unlock()
		if l != nil {
			l.abort()
			<-l.done()
		}
		return
	}
	now := f.now()
	d.connecting = false
	if err != nil {
		d.connectFailures++
		f.c.connectFailures.Add(1)
		if errors.Is(err, ErrRefused) {
			f.c.refused.Add(1)
		}
		d.lastError = err.Error()
		d.scheduleReconnect(now, true)
		d.rearm(now)
		d.mu.Unlock()
		return
	}
	d.link, d.connected, d.backoff = l, true, 0
	if d.evInflight {
		// In flight when the last connection ended: the agent's MQTT
		// client sends it again after the reconnect (with the same packet
		// ID; here a new one, so a PUBACK of this connection is not taken
		// for it).
		d.evInflight, d.evAt = false, now
	}
	d.connects++
	f.c.connects.Add(1)
	d.brokerSeen = true
	if d.mute {
		d.mu.Unlock()
		return
	}
	d.settling = true
	d.sendBirth()
	d.mu.Unlock()

	if !f.cfg.Load {
		for _, s := range [...]struct {
			topic string
			qos   byte
		}{{"ota/blk", 0}, {"ota/manifest", 1}, {"cmd", 1}} {
			if err := l.subscribe(f.ctx, d.base+s.topic, s.qos); err != nil {
				if errors.Is(err, errSubRefused) {
					// the agent does not look at its SUBACKs either
					f.log.Warn("subscription refused", "device", d.spec.ID, "topic", d.base+s.topic, "err", err)
					continue
				}
				d.onLost(g, err)
				return
			}
		}
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if g != d.gen || d.stopped {
		return
	}
	now = f.now()
	d.settling = false
	d.flushEvents(now)
	d.sendHeartbeat(now)
	if !f.cfg.Load {
		switch {
		case d.ps.state == wire.StateDownloading && d.dl != nil:
			d.dl.retries = 0
			d.sendRequest(now)
		case d.ps.state == wire.StateVerified && d.ps.installMode == wire.InstallImmediately:
			d.install(now)
		}
	}
	msgs := d.pending
	d.pending = nil
	for _, m := range msgs {
		if g != d.gen {
			break
		}
		d.handle(now, m.topic, m.payload)
	}
	d.tick(now)
	d.rearm(now)
}

// dropLink ends the connection without a DISCONNECT (on_disconnect).
func (d *device) dropLink(now time.Time) {
	if l := d.link; l != nil {
		l.abort()
		d.keepOld(l)
	}
	d.gen++ // late callbacks of the link, or of an attempt under way, do not count
	d.link, d.connected, d.connecting, d.settling, d.pending = nil, false, false, false, nil
	d.stopRequests()
	d.offlineSince = now
}

// keepOld remembers a closed link until its goroutines are done, so that
// Stop can wait for them.
func (d *device) keepOld(l link) {
	d.old = slices.DeleteFunc(d.old, func(o link) bool {
		select {
		case <-o.done():
			return true
		default:
			return false
		}
	})
	d.old = append(d.old, l)
}

// scheduleReconnect sets the next connection attempt: at once after a lost
// connection, after a growing backoff after a failed attempt.
func (d *device) scheduleReconnect(now time.Time, failed bool) {
	if !d.up || d.stopped || d.dead {
		return
	}
	if !failed {
		d.connectAt = now
		return
	}
	t := d.f.t
	if d.backoff == 0 {
		d.backoff = t.ConnectBackoffMin
	} else {
		d.backoff = min(2*d.backoff, t.ConnectBackoffMax)
	}
	jitter := time.Duration(float64(d.backoff) * (0.75 + 0.5*d.rng.Float64()))
	d.connectAt = now.Add(jitter)
}

func (d *device) onLost(g uint64, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if g != d.gen || d.stopped || d.link == nil {
		return
	}
	now := d.f.now()
	if err != nil {
		d.lastError = "connection lost: " + err.Error()
	}
	d.dropLink(now)
	d.scheduleReconnect(now, false)
	d.rearm(now)
}

func (d *device) onMessage(g uint64, topic string, payload []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if g != d.gen || !d.connected || d.stopped {
		return
	}
	if d.settling {
		if len(d.pending) < maxPending {
			d.pending = append(d.pending, inbound{topic, payload})
		}
		return
	}
	now := d.f.now()
	d.handle(now, topic, payload)
	d.tick(now)
	d.rearm(now)
}

func (d *device) onLinkPuback(g uint64, id uint16, code byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if g != d.gen || d.stopped || !d.up {
		return
	}
	now := d.f.now()
	d.onPuback(now, id, code)
	d.rearm(now)
}
