package hooks

import (
	"context"
	"encoding/json"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/otamq/otamq/ota/access"
	"github.com/otamq/otamq/ota/event"
	"github.com/otamq/otamq/ota/fleet/fleettest"
)

// Fleet events nobody subscribes to are not published, and a client that
// subscribes after that gets the next ones: the device hook tells the
// publisher of the subscription (Events.Subscribed) before its SUBACK.
func TestFleetEventsAfterNobodyListened(t *testing.T) {
	x := startEvents(t, true)
	x.e.OnEvent(x.connected("before"))
	waitFor(t, "the publisher to find no subscriber", x.quiet)

	got := x.watch()
	if x.quiet() {
		t.Fatal("the subscription was not seen")
	}
	x.e.OnEvent(x.connected("after"))
	select {
	case id := <-got:
		if id != "after" {
			t.Fatalf("got the event of %q, want that of \"after\"", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the subscriber got no fleet event")
	}
}

// A subscription the publisher is not told of (no hook calls Subscribed)
// is seen within listenersFresh: the subscriber then gets the events.
func TestFleetEventsUntoldSubscriber(t *testing.T) {
	x := startEvents(t, false)
	x.e.OnEvent(x.connected("before"))
	waitFor(t, "the publisher to find no subscriber", x.quiet)

	got := x.watch()
	deadline := time.After(10 * time.Second)
	for {
		x.e.OnEvent(x.connected("after"))
		select {
		case id := <-got:
			if id != "after" {
				t.Fatalf("got the event of %q, want that of \"after\"", id)
			}
			return
		case <-deadline:
			t.Fatalf("the subscriber got no fleet event in 10 s (what the publisher saw holds for %v)", listenersFresh)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

type eventsEnv struct {
	t  *testing.T
	e  *Events
	ln *listeners.TCP
	at time.Time
}

// startEvents runs a mochi server on loopback with a fleet events
// publisher; with told, the device hook (on a real registry) tells it of
// subscriptions.
func startEvents(t *testing.T, told bool) *eventsEnv {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{InlineClient: true})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	topics := access.Topics{Prefix: "dm"}
	e := NewEvents(srv, topics, nil, nil)
	t.Cleanup(e.Close)
	if told {
		_, reg := fleettest.Open(t, nil)
		d := NewDevice(DeviceOptions{Server: srv, Topics: topics, Fleet: reg, Events: e})
		t.Cleanup(func() { _ = d.Stop() })
		if err := srv.AddHook(d, nil); err != nil {
			t.Fatal(err)
		}
	}
	ln := listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0"})
	if err := srv.AddListener(ln); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return &eventsEnv{t: t, e: e, ln: ln, at: time.Now()}
}

// connected is a connect event of id, each a millisecond after the last.
func (x *eventsEnv) connected(id string) event.Event {
	x.at = x.at.Add(time.Millisecond)
	return event.Connected{Base: event.Base{ID: id, At: x.at}, Role: "device"}
}

// quiet reports whether the publisher holds that nobody listens.
func (x *eventsEnv) quiet() bool {
	heard, known := x.e.known()
	return known && !heard
}

// watch connects a client subscribed to the fleet events topic (it has
// its SUBACK when watch returns) and returns the IDs of the events it
// gets.
func (x *eventsEnv) watch() <-chan string {
	t := x.t
	t.Helper()
	got := make(chan string, 1024)
	conn, err := net.DialTimeout("tcp", x.ln.Address(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cli := paho.NewClient(paho.ClientConfig{ClientID: "watcher", Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			var fe FleetEvent
			if err := json.Unmarshal(pr.Packet.Payload, &fe); err != nil {
				t.Errorf("fleet event %q: %v", pr.Packet.Payload, err)
			}
			select {
			case got <- fe.ID:
			default:
			}
			return true, nil
		}}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Connect(ctx, &paho.Connect{ClientID: "watcher", CleanStart: true, KeepAlive: 30}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Disconnect(&paho.Disconnect{}) })
	if _, err := cli.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "dm/fleet/events"}}}); err != nil {
		t.Fatal(err)
	}
	return got
}

// waitFor polls cond until it holds, for up to 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
