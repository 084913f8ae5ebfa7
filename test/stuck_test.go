package test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/ota/wire"
)

// dropWatch records the clients whose outbound queue overflowed: their
// write loop is stuck on a socket the client does not read.
type dropWatch struct {
	mqtt.HookBase
	mu  sync.Mutex
	ids map[string]bool
}

func (w *dropWatch) ID() string           { return "test-drop-watch" }
func (w *dropWatch) Provides(b byte) bool { return b == mqtt.OnPublishDropped }
func (w *dropWatch) stuck(id string) bool { w.mu.Lock(); defer w.mu.Unlock(); return w.ids[id] }
func (w *dropWatch) OnPublishDropped(cl *mqtt.Client, _ packets.Packet) {
	w.mu.Lock()
	w.ids[cl.ID] = true
	w.mu.Unlock()
}

func watchDrops(t *testing.T, b *tb) *dropWatch {
	t.Helper()
	w := &dropWatch{ids: map[string]bool{}}
	if err := b.Server().AddHook(w, nil); err != nil {
		t.Fatal(err)
	}
	return w
}

// rawWrite encodes pk with enc and writes it to c.
func rawWrite(t *testing.T, c net.Conn, pk packets.Packet, enc func(*packets.Packet, *bytes.Buffer) error) {
	t.Helper()
	var buf bytes.Buffer
	if err := enc(&pk, &buf); err != nil {
		t.Fatal(err)
	}
	_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
}

// stuckDevice connects id (MQTT 3.1.1, raw socket), subscribes to its
// block topic, asks for blocks and never reads. Block serving is paced to
// the socket, so mochi's queue for it never overflows by itself: to be sure
// its socket is full and mochi's write loop for it stuck, the broker then
// publishes 32 KiB messages on its block topic until its queue overflows.
func stuckDevice(t *testing.T, b *tb, w *dropWatch, id, token string, digest []byte) net.Conn {
	t.Helper()
	c, err := rawConnect(b.Addr(), id, token)
	if err != nil {
		t.Fatalf("%s: %v", id, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	rawWrite(t, c, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1, ProtocolVersion: 4,
		Filters: packets.Subscriptions{{Filter: "dm/" + id + "/ota/blk"}}}, (*packets.Packet).SubscribeEncode)
	for rid := range uint32(32) {
		req := wire.BlockRequest{Digest: digest, Offset: 0, Size: 32 * 1024, Count: 16, RequestID: rid + 1}.Encode()
		rawWrite(t, c, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "dm/" + id + "/ota/get",
			Payload: req, ProtocolVersion: 4}, (*packets.Packet).PublishEncode)
	}
	junk := make([]byte, 32*1024)
	eventually(t, 30*time.Second, func() error {
		if w.stuck(id) {
			return nil
		}
		if cl, ok := b.Server().Clients.Get(id); !ok || cl.State.Subscriptions.Len() == 0 {
			return fmt.Errorf("%s: not subscribed yet", id)
		}
		for range 64 {
			if err := b.Server().Publish("dm/"+id+"/ota/blk", junk, false, 0); err != nil {
				return err
			}
		}
		return fmt.Errorf("%s: the broker's queue for it has not overflowed yet", id)
	})
	return c
}

// closedByBroker drains c and reports whether the broker closed it
// (EOF or reset) before the read deadline.
func closedByBroker(c net.Conn, within time.Duration) error {
	_ = c.SetReadDeadline(time.Now().Add(within))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("socket still open after %v", within)
	}
	return nil
}

// stuckFleet registers n devices, offers them a 1 MiB release and makes
// each a client that stopped reading with a full socket.
func stuckFleet(t *testing.T, n int) (b *tb, ids, tokens []string, conns []net.Conn) {
	t.Helper()
	b = startBroker(t, func(o *broker.Options) { o.DeviceRate = -1 })
	w := watchDrops(t, b)
	key, pub := newKey(t)
	b.trustKey(pub)
	fw := makeFirmware(t, key, "2.0.0", []string{"esp32-v2"}, 1<<20)
	rel := b.release(fw)
	ids = make([]string, n)
	toks := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("stuck-%02d", i)
		toks[i] = b.register(ids[i], "device", "", map[string]any{"hardware": "esp32-v2"})
	}
	b.offer(rel.ID, ids...)
	conns = make([]net.Conn, n)
	for i, id := range ids {
		conns[i] = stuckDevice(t, b, w, id, toks[i], fw.m.ImageDigest[:])
	}
	return b, ids, toks, conns
}

// TestRevokeStuckClients: revoking, or rotating the token of, devices
// whose sockets are full (they subscribe, ask for blocks and never read) is
// answered at once, the admin API keeps working, and their connections are
// closed. mochi's DisconnectClient alone blocks an admin worker per such
// device forever.
func TestRevokeStuckClients(t *testing.T) {
	b, ids, _, conns := stuckFleet(t, 20)
	for i, id := range ids {
		verb, body := "device/revoke", map[string]any{"id": id}
		if i%2 == 1 {
			verb, body = "device/update", map[string]any{"id": id, "rotate_token": true}
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := b.admin().Call(ctx, verb, body, nil)
		cancel()
		took := time.Since(start)
		if err != nil {
			t.Fatalf("%s %s: %v (after %v)", verb, id, err, took)
		}
		if took > time.Second {
			t.Fatalf("%s %s answered after %v, want within 1 s", verb, id, took)
		}
	}
	var list struct{ Devices []map[string]any }
	if err := b.admin().Call(context.Background(), "device/list", map[string]any{}, &list); err != nil {
		t.Fatalf("device list after the revokes: %v", err)
	}
	for i, c := range conns {
		if err := closedByBroker(c, 10*time.Second); err != nil {
			t.Fatalf("%s: %v", ids[i], err)
		}
		eventually(t, 5*time.Second, func() error {
			if cl, ok := b.Server().Clients.Get(ids[i]); ok && !cl.Closed() {
				return fmt.Errorf("%s still connected in the broker", ids[i])
			}
			return nil
		})
	}
}

// TestTakeoverBehindStuckClient: a device whose old connection stopped
// reading with a full socket connects again at once (mochi's takeover
// alone waits for the old socket to drain, up to its keepalive deadline,
// longer than the new connection's CONNECT timeout), and the old socket is
// closed.
func TestTakeoverBehindStuckClient(t *testing.T) {
	b, ids, toks, conns := stuckFleet(t, 1)
	c, err := dialClient(t, b.Addr(), ids[0], clientOpts{username: ids[0], password: toks[0]})
	if err != nil {
		t.Fatalf("reconnect behind a stuck connection: %v", err)
	}
	if err := closedByBroker(conns[0], 10*time.Second); err != nil {
		t.Fatalf("old connection: %v", err)
	}
	if rc := c.publish("dm/"+ids[0]+"/hb", mustHex(t, "a601190e1002070300041a0001d4c005383c0600")); rc != 0 {
		t.Fatalf("heartbeat on the new connection: %#x", rc)
	}
}
