package test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/wire"
)

// Device-to-broker messages are consumed: recorded and acknowledged, but
// neither routed (an inline subscription to every device topic, which no
// ACL stands in front of, gets none of them) nor retained, also when the
// device asks for retain.
func TestDeviceMessagesConsumed(t *testing.T) {
	b := startBroker(t)
	tok := b.register("d-c", "device", "")
	var mu sync.Mutex
	var routed []string
	if err := b.Server().Subscribe("dm/#", 77, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		if strings.HasPrefix(pk.TopicName, "dm/d-c/") { // not the fleet events
			mu.Lock()
			routed = append(routed, pk.TopicName)
			mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	c := b.device("d-c", tok)
	msgs := []struct {
		topic   string
		payload []byte
	}{
		{"dm/d-c/birth", wire.Birth{FirmwareVersion: "1.0.0", Hardware: "esp32-v2", OTAState: wire.StateIdle}.Encode()},
		{"dm/d-c/hb", wire.Heartbeat{UptimeSeconds: 5, HealthFlags: wire.HealthAllOK, RSSI: -60}.Encode()},
	}
	for _, m := range msgs {
		for _, qos := range []byte{0, 1} {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			pr, err := c.cli.Publish(ctx, &paho.Publish{Topic: m.topic, QoS: qos, Retain: true, Payload: m.payload})
			cancel()
			if err != nil || qos == 1 && (pr == nil || pr.ReasonCode != 0) {
				t.Fatalf("publish %s at QoS %d: %v, %+v", m.topic, qos, err, pr)
			}
		}
	}
	b.waitStatus("d-c", "the births and both heartbeats recorded", func(s fleet.Status) bool {
		return s.Heartbeats == 2 && !s.BirthAt.IsZero() && s.Firmware == "1.0.0"
	})
	b.serverPublish("dm/d-c/cmd", []byte("barrier")) // routed: the inline subscriber gets it at once
	mu.Lock()
	got := slices.Clone(routed)
	mu.Unlock()
	if !slices.Equal(got, []string{"dm/d-c/cmd"}) {
		t.Fatalf("routed %v, want only the barrier dm/d-c/cmd", got)
	}
	for topic := range b.Server().Topics.Retained.GetAll() {
		if strings.HasPrefix(topic, "dm/d-c/") {
			t.Fatalf("a device message was retained on %s", topic)
		}
	}
}
