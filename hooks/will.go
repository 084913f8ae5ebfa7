package hooks

import (
	"errors"
	"fmt"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/otamq/otamq/ota/access"
	"github.com/otamq/otamq/ota/wire"
)

// A Last Will on a device topic stands for the message it would be if the
// device had published it: a birth, a heartbeat or an event. mochi
// publishes a Will without OnPublish, so without care it would skip the
// device hook (the registry never sees it) and, with the retain flag,
// leave a retained message on a topic nobody may read. So:
//
//   - at CONNECT, a Will on a device topic must be one the client may
//     publish and a well-formed message of that topic (a block request is
//     no Will at all); otherwise the connection is refused;
//   - when it fires, the Will is applied as that message, and a Will under
//     the prefix is never retained.

var errWillKind = errors.New("a block request cannot be a Last Will")

// checkWill validates a Will's payload for the device topic it is on.
func checkWill(t access.Topics, topic string, payload []byte) error {
	_, kind, ok := t.ParseDevice(topic)
	if !ok {
		return nil
	}
	var err error
	switch kind {
	case access.KindBirth:
		_, err = wire.DecodeBirth(payload)
	case access.KindHB:
		_, err = wire.DecodeHeartbeat(payload)
	case access.KindEvent:
		_, err = wire.DecodeEvent(payload)
	case access.KindGet:
		err = errWillKind
	}
	if err != nil {
		return fmt.Errorf("last will on %s: %w", kind, err)
	}
	return nil
}

// OnWill implements mqtt.Hook.
func (d *Device) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	if !d.topics.InPrefix(will.TopicName) {
		return will, nil
	}
	will.Retain = false
	id, kind, ok := d.topics.ParseDevice(will.TopicName)
	if !ok {
		return will, nil
	}
	switch kind {
	case access.KindBirth, access.KindHB, access.KindEvent:
		if err := d.apply(id, kind, will.Payload); err != nil {
			d.log.Warn("last will not applied", "client", cl.ID, "device", id, "kind", kind, "err", err)
		}
	}
	return will, nil
}
