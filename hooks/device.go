package hooks

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otamq/otamq/ota/access"
	"github.com/otamq/otamq/ota/delivery"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/wire"
)

// Device turns connection lifecycle and device messages into fleet status:
// connect, disconnect, Last Will, birth and heartbeat.
type Device struct {
	mqtt.HookBase
	srv    *mqtt.Server
	topics access.Topics
	fleet  *fleet.Registry
	dlv    *delivery.Service // nil: no OTA (events and block requests are only checked)
	sender *Sender
	blocks *Blocks
	events *Events
	rec    Recorder
	log    *slog.Logger

	// mu guards sessions: the fleet generation of each live connection,
	// needed to tell a taken-over connection's disconnect from the
	// current one's.
	mu       sync.Mutex
	sessions map[*mqtt.Client]uint64

	stop chan struct{}
	done chan struct{}
}

// DeviceOptions configure NewDevice.
type DeviceOptions struct {
	// Server is the server the hook is added to.
	Server   *mqtt.Server
	Topics   access.Topics
	Fleet    *fleet.Registry
	Recorder Recorder
	Logger   *slog.Logger
	// Delivery serves block requests, records events and provides the
	// offers sent on subscribe; Sender publishes them, Blocks serves the
	// block requests. All or none.
	Delivery *delivery.Service
	Sender   *Sender
	Blocks   *Blocks
	// SweepInterval is how often sessions whose connection died without a
	// disconnect event are looked for. Default 5s.
	SweepInterval time.Duration
	// Events, if set, is told of every subscription (Events.Subscribed).
	Events *Events
}

// NewDevice returns the device hook and starts its sweeper; Stop ends it.
func NewDevice(o DeviceOptions) *Device {
	if o.Recorder == nil {
		o.Recorder = NopRecorder{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.SweepInterval <= 0 {
		o.SweepInterval = 5 * time.Second
	}
	d := &Device{
		srv: o.Server, topics: o.Topics, fleet: o.Fleet, dlv: o.Delivery, sender: o.Sender, blocks: o.Blocks, events: o.Events, rec: o.Recorder,
		log: o.Logger, sessions: make(map[*mqtt.Client]uint64),
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	go d.sweep(o.SweepInterval)
	return d
}

// ID implements mqtt.Hook.
func (d *Device) ID() string { return "otamq-device" }

// Provides implements mqtt.Hook. Publishes reach the hook through the
// Publishes hook (publish).
func (d *Device) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablish, mqtt.OnDisconnect, mqtt.OnWill, mqtt.OnWillSent, mqtt.OnSubscribed:
		return true
	}
	return false
}

// Stop implements mqtt.Hook: it ends the sweeper.
func (d *Device) Stop() error {
	select {
	case <-d.stop:
	default:
		close(d.stop)
	}
	<-d.done
	return nil
}

// OnSessionEstablish implements mqtt.Hook. It runs after authentication and
// before mochi takes over an existing session with the same ID, so the new
// connection is the current one before the old one's disconnect arrives.
func (d *Device) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	gen := d.fleet.Connected(cl.ID, fleet.Conn{Remote: cl.Net.Remote, Protocol: cl.Properties.ProtocolVersion})
	if gen == 0 {
		return
	}
	d.mu.Lock()
	d.sessions[cl] = gen
	d.mu.Unlock()
	d.rec.Connected()
	d.endOlderConnection(cl)
}

// endOlderConnection ends, before mochi takes the session over, an older
// connection of cl's client ID.
//
// mochi ends it itself (inheritClientSession), but with a DISCONNECT written
// under the old connection's write lock: behind a client that stopped
// reading, the new connection would wait for it until its own CONNECT
// deadline. EndConnection is bounded.
//
// When the old session ends with its connection it is also waited for:
// mochi v2.7.9 stops the old connection first and marks it taken over only
// afterwards, so the old connection's goroutine can find itself "not taken
// over" and delete the client ID from the client map after the new
// connection was added; the new connection then gets no message at all
// (seen under load: admin replies lost). Ended here, and waited for, the old
// one is gone from the map before mochi looks. A persistent session stays
// in the map (mochi moves its subscriptions and inflight messages to the
// new connection), so there is nothing to wait for.
func (d *Device) endOlderConnection(cl *mqtt.Client) {
	if d.srv == nil {
		return
	}
	old, ok := d.srv.Clients.Get(cl.ID)
	if !ok || old == cl || old.Net.Inline {
		return
	}
	EndConnection(d.srv, old, packets.ErrSessionTakenOver)
	if !expiring(old) {
		return
	}
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if cur, ok := d.srv.Clients.Get(cl.ID); !ok || cur != old {
			return
		}
	}
	d.log.Warn("older connection not gone after its session was taken over", "client", cl.ID)
}

// expiring reports whether cl's session ends with its connection (how
// mochi decides to drop it).
func expiring(cl *mqtt.Client) bool {
	p := &cl.Properties
	return p.ProtocolVersion == 5 && p.Props.SessionExpiryInterval == 0 || p.ProtocolVersion < 5 && p.Clean
}

// Sessions returns how many established sessions have not yet ended.
func (d *Device) Sessions() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.sessions)
}

func (d *Device) generation(cl *mqtt.Client, remove bool) uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	gen := d.sessions[cl]
	if remove {
		delete(d.sessions, cl)
	}
	return gen
}

// OnDisconnect implements mqtt.Hook.
func (d *Device) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	gen := d.generation(cl, true)
	if gen == 0 {
		return // never established (refused), or swept already
	}
	reason := disconnectReason(cl, err)
	if !d.fleet.Disconnected(cl.ID, gen, reason) {
		reason = fleet.ReasonTakeover
	}
	d.rec.Disconnected(reason)
}

// disconnectReason classifies why a connection ended.
func disconnectReason(cl *mqtt.Client, err error) string {
	cause := cl.StopCause()
	var code packets.Code
	switch {
	case cl.IsTakenOver() || errors.Is(cause, packets.ErrSessionTakenOver):
		return fleet.ReasonTakeover
	case errors.Is(cause, packets.ErrServerShuttingDown):
		return fleet.ReasonShutdown
	case errors.Is(cause, packets.ErrNotAuthorized), errors.Is(cause, packets.ErrAdministrativeAction):
		return fleet.ReasonKicked
	case err == nil:
		return fleet.ReasonNormal
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fleet.ReasonKeepalive
	case errors.As(err, &code):
		return fleet.ReasonProtocol
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), errors.As(err, new(net.Error)):
		return fleet.ReasonLost
	}
	return fleet.ReasonLost
}

// OnWillSent implements mqtt.Hook.
func (d *Device) OnWillSent(cl *mqtt.Client, _ packets.Packet) {
	if d.fleet.WillFired(cl.ID, d.generation(cl, false)) {
		d.rec.Will()
	}
}

// publish takes an inbound publish (Publishes hands it over): births and
// heartbeats become status. Malformed payloads are refused (the error
// for mochi): a v5 client gets PUBACK "payload format invalid" with the
// reason, others are acknowledged and dropped; either way the message goes
// nowhere and is counted. consumed false and no error: mochi routes the
// message as usual.
//
// Messages a device sends to the broker (birth, heartbeat, event, block
// request) are consumed here and not routed: the ACL lets nobody subscribe
// to them, and skipping mochi's subscriber lookup (a walk of the shared
// topic tree under its locks) is most of what a heartbeat would otherwise
// cost beyond decoding.
func (d *Device) publish(cl *mqtt.Client, pk *packets.Packet) (consumed bool, err error) {
	if cl.Net.Inline {
		return false, nil
	}
	id, kind, ok := d.topics.ParseDevice(pk.TopicName)
	if !ok {
		return false, nil
	}
	if id != cl.ID {
		switch kind {
		case access.KindBirth, access.KindHB, access.KindEvent, access.KindGet:
			// A gateway relaying for its child (the ACL let only the
			// child's gateway publish here): the child is reachable
			// through this session of it.
			d.fleet.Relayed(id, cl.ID)
		}
	}
	switch kind {
	case access.KindGet:
		d.serveBlocks(cl, id, pk.Payload)
		return true, nil
	case access.KindBirth, access.KindHB, access.KindEvent:
	default:
		return false, nil // a topic towards devices: routed as usual
	}
	switch err := d.apply(id, kind, pk.Payload); {
	case err == nil:
		return true, nil
	case errors.Is(err, delivery.ErrUnknownRun):
		// Acknowledged (the device must not resend it) and dropped.
		d.log.Warn("event dropped", "client", cl.ID, "device", id, "err", err)
		return true, nil
	case errors.As(err, new(*notRecorded)):
		return false, d.retryLater(cl, *pk, id, err)
	default:
		return false, d.refuse(cl, *pk, err)
	}
}

// notRecorded is an event the store could not take.
type notRecorded struct{ err error }

func (e *notRecorded) Error() string { return e.err.Error() }
func (e *notRecorded) Unwrap() error { return e.err }

// apply decodes a birth, heartbeat or event of device id and records it.
// Errors: the decoder's or the registry's (the message is refused),
// delivery.ErrUnknownRun (an event of a rollout the device never had), or
// a *notRecorded.
func (d *Device) apply(id, kind string, payload []byte) error {
	switch kind {
	case access.KindBirth:
		b, err := wire.DecodeBirth(payload)
		if err == nil {
			if err = d.fleet.Birth(id, b); err == nil {
				d.rec.Birth()
			}
		}
		return err
	case access.KindHB:
		h, err := wire.DecodeHeartbeat(payload)
		if err == nil {
			err = d.fleet.Heartbeat(id, h) // counted by the registry
		}
		return err
	case access.KindEvent:
		ev, err := wire.DecodeEvent(payload)
		if err != nil || d.dlv == nil {
			return err
		}
		if err = d.dlv.Event(context.Background(), id, ev); err != nil && !errors.Is(err, delivery.ErrUnknownRun) {
			return &notRecorded{err}
		}
		return err
	}
	return nil
}

// serveBlocks answers a block request on the block topic of device id. It
// runs on the requester's read goroutine: the work is reading the range
// from the store's memory map and queueing the messages, and a device that
// asks too much is answered "rate limited" rather than waited for.
func (d *Device) serveBlocks(cl *mqtt.Client, id string, payload []byte) {
	if d.dlv == nil {
		return
	}
	topic := d.topics.Device(id, access.KindBlock)
	req, err := wire.DecodeBlockRequest(payload)
	if err != nil {
		d.rec.Rejected(RejectMalformed)
		d.log.Warn("block request refused", "client", cl.ID, "device", id, "err", err)
		d.dlv.BadRequest(err.Error(), func(m []byte) { d.sender.PublishBlock(id, m) })
		return
	}
	maxData := 0
	if max := int(cl.Properties.Props.MaximumPacketSize); max > 0 {
		maxData = max - packetSize(topic, wire.MaxBlockMessageOverhead)
		if maxData <= 0 {
			maxData = -1 // not even one byte fits: "bad request"
		}
	}
	d.blocks.Request(cl, id, req, maxData)
}

// OnSubscribed implements mqtt.Hook: a device (or its gateway) that
// subscribes to a manifest topic gets that device's current offer at once.
//
// It also tells the fleet events publisher that a subscription was made.
func (d *Device) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	if d.events != nil {
		d.events.Subscribed()
	}
	if d.dlv == nil || cl.Net.Inline {
		return
	}
	for i, sub := range pk.Filters {
		if i >= len(codes) || codes[i] >= 0x80 {
			continue
		}
		id, kind, ok := d.topics.ParseDevice(sub.Filter)
		if !ok || kind != access.KindManifest {
			continue
		}
		d.dlv.ManifestSubscribed(id)
	}
}

// errRetryLater is the PUBACK of an event the broker could not record:
// 0x80 tells a v5 device to keep the event and send it again later
// (docs/PROTOCOL.md, "Events the broker could not record").
var errRetryLater = packets.Code{Code: packets.ErrUnspecifiedError.Code, Reason: "event not recorded; send it again later"}

// retryLater answers an event that could not be recorded so that the
// device keeps it: a v5 client gets PUBACK 0x80; a v3 client, which has no
// reason codes, gets no PUBACK and its connection is closed, so that it
// sends the unacknowledged event again when it reconnects.
func (d *Device) retryLater(cl *mqtt.Client, pk packets.Packet, id string, err error) error {
	d.rec.Rejected(RejectEventNotRecorded)
	d.log.Error("event not recorded; the device is told to send it again", "device", id, "err", err)
	if pk.FixedHeader.Qos == 0 {
		return packets.CodeSuccessIgnore // nothing to answer; a QoS 0 event is the device's risk
	}
	if cl.Properties.ProtocolVersion == 5 {
		return errRetryLater
	}
	// The connection ends because of the broker, not the device: no Will.
	atomic.StoreUint32(&cl.Properties.Will.Flag, 0)
	cl.Stop(errRetryLater)
	return packets.ErrRejectPacket
}

// refuse counts and logs a malformed device message and returns the error
// that makes mochi drop it with the right acknowledgement.
func (d *Device) refuse(cl *mqtt.Client, pk packets.Packet, err error) error {
	d.rec.Rejected(RejectMalformed)
	d.log.Warn("device message refused", "client", cl.ID, "topic", pk.TopicName, "bytes", len(pk.Payload), "err", err)
	if cl.Properties.ProtocolVersion == 5 && pk.FixedHeader.Qos > 0 {
		reason := err.Error()
		if len(reason) > 200 {
			reason = reason[:200]
		}
		return packets.Code{Code: packets.ErrPayloadFormatInvalid.Code, Reason: reason}
	}
	return packets.CodeSuccessIgnore
}

// sweep ends sessions whose connection closed without OnDisconnect (mochi
// skips it when the CONNACK or the resend of inflight messages fails).
func (d *Device) sweep(every time.Duration) {
	defer close(d.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
		}
		var dead []*mqtt.Client
		d.mu.Lock()
		for cl := range d.sessions {
			if cl.Closed() && cl.StopTime() > 0 && time.Since(time.Unix(cl.StopTime(), 0)) > every {
				dead = append(dead, cl)
			}
		}
		d.mu.Unlock()
		for _, cl := range dead {
			d.OnDisconnect(cl, net.ErrClosed, false)
		}
	}
}
