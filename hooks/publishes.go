package hooks

import (
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Publishes is the one hook that sees inbound publishes: it hands each to
// the device hook (births, heartbeats, events, block requests), then to the
// admin hook (requests). mochi passes the packet, 800 bytes, by value into
// and out of every hook that provides OnPublish; one hook instead of two
// saves a heartbeat three of those copies (docs/BENCHMARKS.md).
type Publishes struct {
	mqtt.HookBase
	device *Device
	admin  *Admin
}

// NewPublishes returns the hook routing publishes to device and admin.
func NewPublishes(device *Device, admin *Admin) *Publishes {
	return &Publishes{device: device, admin: admin}
}

// ID implements mqtt.Hook.
func (p *Publishes) ID() string { return "otamq-publishes" }

// Provides implements mqtt.Hook.
func (p *Publishes) Provides(b byte) bool { return b == mqtt.OnPublish }

// OnPublish implements mqtt.Hook, as the device hook and then the admin
// hook would one after the other: the first error ends it.
//
// A message the device hook consumed comes back marked Ignore with no
// error, which mochi treats as it treats CodeSuccessIgnore (acknowledged,
// neither retained nor routed), without the four errors.Is comparisons
// of a Code that an error costs it at every heartbeat. No hook after this
// one provides OnPublish, so none is skipped that the error would have
// ended before.
func (p *Publishes) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	switch consumed, err := p.device.publish(cl, &pk); {
	case err != nil:
		return pk, err
	case consumed:
		pk.Ignore = true
		return pk, nil
	}
	return pk, p.admin.publishRequest(cl, &pk)
}
