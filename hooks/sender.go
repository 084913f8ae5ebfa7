package hooks

import (
	"fmt"
	"log/slog"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otamq/otamq/ota/access"
	"github.com/otamq/otamq/ota/delivery"
)

// Sender publishes what the delivery service sends to devices (offers,
// commands) through the server's inline path. It implements
// delivery.Sender.
//
// mochi writes a QoS 1 message larger than a client's Maximum Packet Size
// into the session's inflight store and then fails to send it; the session
// is wedged from then on (every reconnect is dropped after CONNACK). So
// before publishing, Sender checks every subscriber of the topic that would
// receive it and sends nothing if one of them could not take the message
// (for an offer, only when the device or its gateway has a Maximum Packet
// Size the offer exceeds: see SendOffer).
// Only subscribers the ACL allows now count, as only they receive (mochi
// checks the ACL per subscriber on delivery): a leftover subscription of a
// former gateway, say, neither blocks an offer nor counts as its delivery.
type Sender struct {
	srv    *mqtt.Server
	topics access.Topics
	acl    *ACL
	rec    Recorder
	log    *slog.Logger
}

// NewSender returns a Sender publishing through srv; acl decides which
// subscribers receive.
func NewSender(srv *mqtt.Server, t access.Topics, acl *ACL, rec Recorder, log *slog.Logger) *Sender {
	if rec == nil {
		rec = NopRecorder{}
	}
	if log == nil {
		log = slog.Default()
	}
	return &Sender{srv: srv, topics: t, acl: acl, rec: rec, log: log}
}

// packetSize is an upper bound of the size of a PUBLISH of payload on
// topic: fixed header, topic, packet ID, and room for the properties mochi
// may add on the way out (topic alias, subscription identifiers).
func packetSize(topic string, payload int) int {
	return 5 + 2 + len(topic) + 2 + 24 + payload
}

// receivers checks the subscribers of topic that would receive a message
// of payload bytes: it returns how many there are and an error if one of
// them could not take it. A disconnected subscriber counts when mochi keeps
// its session (it gets the message when it reconnects).
//
// A device's topic can reach only the device and its gateway, through a
// subscription to the topic itself (access.Policy.Readers), so only those
// two clients are looked at: one map lookup each, where the topic index
// would be walked again by the Publish that follows. Any other topic is
// looked up in the index.
func (s *Sender) receivers(topic string, payload int) (int, error) {
	size := uint32(packetSize(topic, payload))
	n := 0
	var tooLarge error
	// check counts client id if it receives; reader: id is one of the
	// topic's Readers, who receives only if it holds the topic itself.
	check := func(id string, reader bool) {
		cl, ok := s.srv.Clients.Get(id)
		if !ok || cl.Closed() && expiring(cl) {
			return
		}
		if _, sub := cl.State.Subscriptions.Get(topic); reader && !sub || !s.acl.Allowed(id, topic, false) {
			return
		}
		n++
		if max := cl.Properties.Props.MaximumPacketSize; max > 0 && size > max {
			s.log.Warn("message larger than the client accepts; not sent", "client", id, "topic", topic, "bytes", size, "client_max", max)
			tooLarge = fmt.Errorf("%w: %d bytes, %s accepts %d", delivery.ErrTooLarge, size, id, max)
		}
	}
	if dev, _, ok := s.topics.ParseDevice(topic); ok {
		d, gw := s.acl.Readers(dev)
		check(d, true)
		if gw != "" {
			check(gw, true)
		}
		return n, tooLarge
	}
	for id := range s.srv.Topics.Subscribers(topic).Subscriptions {
		check(id, false)
	}
	return n, tooLarge
}

func (s *Sender) publish(topic string, payload []byte, qos byte) error {
	n, err := s.receivers(topic, len(payload))
	switch {
	case err != nil:
		s.rec.Rejected(RejectTooLarge)
		return err
	case n == 0:
		return delivery.ErrNoReceiver
	}
	return s.send(topic, payload, qos)
}

// send publishes payload on topic through mochi, unchecked.
func (s *Sender) send(topic string, payload []byte, qos byte) error {
	if err := s.srv.Publish(topic, payload, false, qos); err != nil {
		s.log.Warn("publish failed", "topic", topic, "err", err)
		return err
	}
	return nil
}

// SendOffer implements delivery.Sender.
//
// A rollout sends thousands of offers at once, so the check is made in
// full (receivers) only when it can refuse: when the device or its
// gateway, the only clients that can receive a device's topic, has a
// Maximum Packet Size the offer exceeds. Otherwise no receiver can be too
// small, and mochi finds the subscribers and checks the ACL itself.
func (s *Sender) SendOffer(id string, payload []byte) {
	topic := s.topics.Device(id, access.KindManifest)
	if s.mayExceed(id, packetSize(topic, len(payload))) {
		_ = s.publish(topic, payload, 1)
		return
	}
	_ = s.send(topic, payload, 1)
}

// mayExceed reports whether a message of size bytes on a topic of device
// id is larger than the device or its gateway accepts, whether or not
// they subscribe.
func (s *Sender) mayExceed(id string, size int) bool {
	d, gw := s.acl.Readers(id)
	for _, c := range [...]string{d, gw} {
		if c == "" {
			continue
		}
		if cl, ok := s.srv.Clients.Get(c); ok {
			if max := cl.Properties.Props.MaximumPacketSize; max > 0 && uint32(size) > max {
				return true
			}
		}
	}
	return false
}

// PublishBlock publishes a block message (or block error) of device id on
// its block topic through mochi, to whoever is subscribed.
func (s *Sender) PublishBlock(id string, msg []byte) {
	// Publish copies the payload for each subscriber, so the caller may
	// reuse msg.
	if err := s.srv.Publish(s.topics.Device(id, access.KindBlock), msg, false, 0); err != nil {
		s.log.Warn("block message not published", "device", id, "err", err)
	}
}

// WriteBlock writes a block message of device id to client cl, the
// requester, at once (mochi's WritePacket: one encoding copy, nothing
// queued). It blocks while cl's socket is full; it never writes to a
// closed connection.
func (s *Sender) WriteBlock(cl *mqtt.Client, id string, msg []byte) {
	if cl.Closed() {
		return
	}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: s.topics.Device(id, access.KindBlock), Payload: msg}
	if err := cl.WritePacket(pk); err != nil {
		s.log.Debug("block not written", "client", cl.ID, "device", id, "err", err)
	}
}

// SendCommand implements delivery.Sender.
func (s *Sender) SendCommand(id string, payload []byte) error {
	return s.publish(s.topics.Device(id, access.KindCmd), payload, 1)
}
