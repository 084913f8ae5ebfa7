package test

import (
	"bufio"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/hooks"
	"github.com/otamq/otamq/ota/wire"
)

// TestBlockWindowsPendingLimit: a client that asks for more windows than
// it reads has at most hooks.MaxPendingWindows accepted and waiting; the
// requests beyond are answered "rate limited" with a retry-after, and
// nothing else piles up for it.
func TestBlockWindowsPendingLimit(t *testing.T) {
	b := startBroker(t, func(o *broker.Options) { o.DeviceRate = -1 })
	key, pub := newKey(t)
	b.trustKey(pub)
	fw := makeFirmware(t, key, "2.0.0", []string{"esp32-v2"}, 1<<20)
	rel := b.release(fw)
	tok := b.register("greedy", "device", "", map[string]any{"hardware": "esp32-v2"})
	b.offer(rel.ID, "greedy")
	c, err := rawConnect(b.Addr(), "greedy", tok)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rawWrite(t, c, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1, ProtocolVersion: 4,
		Filters: packets.Subscriptions{{Filter: "dm/greedy/ota/blk"}}}, (*packets.Packet).SubscribeEncode)
	eventually(t, 5*time.Second, func() error {
		if cl, ok := b.Server().Clients.Get("greedy"); !ok || cl.State.Subscriptions.Len() == 0 {
			return fmt.Errorf("not subscribed yet")
		}
		return nil
	})
	// 64 windows of 512 KiB (32 MiB) while reading nothing: the socket
	// fills within the first few, and the sender waits on it.
	const n = 64
	for rid := range uint32(n) {
		req := wire.BlockRequest{Digest: fw.m.ImageDigest[:], Offset: 0, Size: 32 * 1024, Count: 16, RequestID: rid + 1}.Encode()
		rawWrite(t, c, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "dm/greedy/ota/get",
			Payload: req, ProtocolVersion: 4}, (*packets.Packet).PublishEncode)
	}
	eventually(t, 10*time.Second, func() error {
		v, err := b.metric(`otamq_block_requests_total{result="rate_limited"}`)
		if err != nil {
			return err
		}
		if atoi(v) == 0 {
			return fmt.Errorf("no request refused yet")
		}
		return nil
	})
	// Now read everything: every request was answered, by blocks or by a
	// "busy" refusal with its retry-after.
	r := bufio.NewReaderSize(c, 1<<16)
	answered := map[uint32]bool{}
	busy := 0
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for len(answered) < n {
		typ, body, err := readRaw(r)
		if err != nil {
			t.Fatalf("after %d answers (%d busy): %v", len(answered), busy, err)
		}
		if typ != packets.Publish {
			continue
		}
		tl := int(body[0])<<8 | int(body[1])
		blk, be, err := wire.DecodeBlock(body[2+tl:], 1<<20)
		switch {
		case err != nil:
			t.Fatal(err)
		case be != nil:
			if be.Code != wire.BlockRateLimited || be.RetryAfterMS == 0 {
				t.Fatalf("refusal %+v", be)
			}
			busy++
			answered[be.RequestID] = true
		default:
			answered[blk.RequestID] = true
		}
	}
	served := n - busy
	t.Logf("%d windows served, %d refused as busy", served, busy)
	if busy == 0 || served < hooks.MaxPendingWindows {
		t.Fatalf("%d served, %d busy: want at least %d served and some refused", served, busy, hooks.MaxPendingWindows)
	}
}

// readRaw reads one MQTT packet: its type and its body.
func readRaw(r *bufio.Reader) (byte, []byte, error) {
	h, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mul := 0, 1
	for i := 0; i < 4; i++ {
		b, err := r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(b&0x7f) * mul
		if b&0x80 == 0 {
			break
		}
		mul *= 128
	}
	body := make([]byte, n)
	_, err = io.ReadFull(r, body)
	return h >> 4, body, err
}

// TestStuckDownloadNeverHoldsTheStore: a device that stops reading in the
// middle of a window leaves its sender waiting on the socket, and that
// sender must not hold a read transaction of the store meanwhile: bbolt
// cannot grow its file while one is open, so every write would stall. The
// 8 MiB upload below makes the file grow.
func TestStuckDownloadNeverHoldsTheStore(t *testing.T) {
	b, _, _, _ := stuckFleet(t, 2)
	key, pub := newKey(t)
	b.trustKey(pub)
	// Fails (no reply within the admin client's timeout) if a stuck sender
	// holds a read transaction.
	b.release(makeFirmware(t, key, "3.0.0", []string{"esp32-v2"}, 8<<20))
}
