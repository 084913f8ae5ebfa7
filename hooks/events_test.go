package hooks

import (
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/otamq/otamq/ota/access"
	"github.com/otamq/otamq/ota/event"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/store"
)

// Fleet events nobody subscribes to are not published, and a client that
// subscribes after that gets the next ones: the device hook tells the
// publisher of the subscription (Events.Subscribed) before its SUBACK.
func TestFleetEventsAfterNobodyListened(t *testing.T) {
	srv := mqtt.New(&mqtt.Options{InlineClient: true})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	topics := access.Topics{Prefix: "dm"}
	e := NewEvents(srv, topics, nil, nil)
	t.Cleanup(e.Close)
	db, err := store.Open(filepath.Join(t.TempDir(), "otamq.db"), &store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	reg, err := fleet.Open(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	// the device hook, which counts subscriptions for e
	d := NewDevice(DeviceOptions{Server: srv, Topics: topics, Fleet: reg, Events: e})
	t.Cleanup(func() { _ = d.Stop() })
	if err := srv.AddHook(d, nil); err != nil {
		t.Fatal(err)
	}
	ln := listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0"})
	if err := srv.AddListener(ln); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })

	at := time.Now()
	connected := func(id string) event.Event {
		at = at.Add(time.Millisecond)
		return event.Connected{Base: event.Base{ID: id, At: at}, Role: "device"}
	}
	quiet := func() bool {
		l := e.listeners.Load()
		return l&1 == 0 && l>>1 == e.subGen.Load()+1
	}
	e.OnEvent(connected("before"))
	waitFor(t, "the publisher to find no subscriber", quiet)

	got := make(chan string, 16)
	conn, err := net.DialTimeout("tcp", ln.Address(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cli := paho.NewClient(paho.ClientConfig{ClientID: "watcher", Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			var fe FleetEvent
			if err := json.Unmarshal(pr.Packet.Payload, &fe); err != nil {
				t.Errorf("fleet event %q: %v", pr.Packet.Payload, err)
			}
			got <- fe.ID
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
	if quiet() {
		t.Fatal("the subscription was not seen")
	}
	e.OnEvent(connected("after"))
	select {
	case id := <-got:
		if id != "after" {
			t.Fatalf("got the event of %q, want that of \"after\"", id)
		}
	case <-ctx.Done():
		t.Fatal("the subscriber got no fleet event")
	}
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
