package hooks

import (
	"log/slog"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// Sender publishes what the delivery service sends to devices (offers,
// commands) through the server's inline path. It implements
// delivery.Sender.
//
// mochi writes a QoS 1 message larger than a client's Maximum Packet Size
// into the session's inflight store and then fails to send it; the session
// is wedged from then on (every reconnect is dropped after CONNACK). So
// before publishing, Sender checks every subscriber of the topic and sends
// nothing if one of them could not take the message.
type Sender struct {
	srv    *mqtt.Server
	topics Topics
	rec    Recorder
	log    *slog.Logger
}

// NewSender returns a Sender publishing through srv.
func NewSender(srv *mqtt.Server, t Topics, rec Recorder, log *slog.Logger) *Sender {
	if rec == nil {
		rec = NopRecorder{}
	}
	if log == nil {
		log = slog.Default()
	}
	return &Sender{srv: srv, topics: t, rec: rec, log: log}
}

// packetSize is an upper bound of the size of a PUBLISH of payload on
// topic: fixed header, topic, packet ID, and room for the properties mochi
// may add on the way out (topic alias, subscription identifiers).
func packetSize(topic string, payload int) int {
	return 5 + 2 + len(topic) + 2 + 24 + payload
}

// fits reports whether every subscriber of topic accepts a message of
// payload bytes, and whether there is any subscriber at all.
func (s *Sender) fits(topic string, payload int) (fits, any bool) {
	subs := s.srv.Topics.Subscribers(topic)
	size := uint32(packetSize(topic, payload))
	fits = true
	for id := range subs.Subscriptions {
		cl, ok := s.srv.Clients.Get(id)
		if !ok || cl.Closed() {
			continue
		}
		any = true
		if max := cl.Properties.Props.MaximumPacketSize; max > 0 && size > max {
			s.log.Warn("message larger than the client accepts; not sent", "client", id, "topic", topic, "bytes", size, "client_max", max)
			fits = false
		}
	}
	return fits, any
}

func (s *Sender) publish(topic string, payload []byte, qos byte) bool {
	fits, any := s.fits(topic, len(payload))
	if !any {
		return false
	}
	if !fits {
		s.rec.Rejected(RejectTooLarge)
		return false
	}
	if err := s.srv.Publish(topic, payload, false, qos); err != nil {
		s.log.Warn("publish failed", "topic", topic, "err", err)
		return false
	}
	return true
}

// SendOffer implements delivery.Sender.
func (s *Sender) SendOffer(id string, payload []byte) {
	s.publish(s.topics.Device(id, KindManifest), payload, 1)
}

// SendCommand implements delivery.Sender.
func (s *Sender) SendCommand(id string, payload []byte) bool {
	return s.publish(s.topics.Device(id, KindCmd), payload, 1)
}
