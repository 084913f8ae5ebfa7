package faultproxy

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"net"
	"sync"
	"testing"
	"time"
)

// server listens on loopback and runs handle for every connection; all
// stops at the test's end.
func server(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func echo(c net.Conn) { _, _ = io.Copy(c, c) }

func start(t *testing.T, target string, seed int64) *Proxy {
	t.Helper()
	p, err := Start(target, seed)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func dial(t *testing.T, p *Proxy) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// roundTrip writes n random bytes through an echo and checks they come
// back unchanged.
func roundTrip(t *testing.T, c net.Conn, n int) {
	t.Helper()
	out := make([]byte, n)
	rand.New(rand.NewSource(int64(n))).Read(out)
	errc := make(chan error, 1)
	go func() { _, err := c.Write(out); errc <- err }()
	in := make([]byte, n)
	if _, err := io.ReadFull(c, in); err != nil {
		t.Fatalf("read back: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(in, out) {
		t.Fatal("bytes changed on the way")
	}
}

func TestForwardsBothWays(t *testing.T) {
	p := start(t, server(t, echo), 1)
	roundTrip(t, dial(t, p), 200<<10)
	if s := p.Stats(); s.Conns != 1 || s.ToTarget != 200<<10 || s.ToClient != 200<<10 || s.Cuts != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// received reads a connection to its end and returns how much came.
func received(t *testing.T, c net.Conn) int {
	t.Helper()
	n, err := io.Copy(io.Discard, c)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		var op *net.OpError
		if !errors.As(err, &op) { // a reset is a cut too
			t.Fatal(err)
		}
	}
	return int(n)
}

// A cut lands within [3n/4, 5n/4) of the bytes to the client, and the same
// seed cuts at the same places.
func TestCutEveryIsSeeded(t *testing.T) {
	const every = 64 << 10
	flood := func(c net.Conn) { _, _ = c.Write(make([]byte, 1<<20)) }
	target := server(t, flood)
	cuts := func(seed int64) []int {
		p := start(t, target, seed)
		p.SetCutEvery(every)
		var got []int
		for i := 0; i < 4; i++ {
			n := received(t, dial(t, p))
			if n < every*3/4 || n >= every*5/4 {
				t.Fatalf("connection %d cut after %d bytes, want [%d, %d)", i, n, every*3/4, every*5/4)
			}
			got = append(got, n)
		}
		if s := p.Stats(); s.Cuts != 4 {
			t.Fatalf("stats %+v", s)
		}
		return got
	}
	a, b := cuts(42), cuts(42)
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("seed 42 cut at %v, then at %v", a, b)
		}
	}
}

// publish is an MQTT PUBLISH (QoS 0) of payload on topic.
func publish(topic string, payload []byte) []byte {
	body := append([]byte{byte(len(topic) >> 8), byte(len(topic))}, topic...)
	body = append(body, payload...)
	pkt := []byte{0x30}
	for n := len(body); ; {
		b := byte(n & 0x7f)
		n >>= 7
		if n > 0 {
			pkt = append(pkt, b|0x80)
			continue
		}
		pkt = append(pkt, b)
		break
	}
	return append(pkt, body...)
}

// Every second PUBLISH on .../ota/blk gets its last byte inverted, twice
// at most; other packets and other topics pass unchanged, also when the
// packets come in pieces.
func TestFlipLastByteOfSelectedPublishes(t *testing.T) {
	var want, sent []byte
	payload := bytes.Repeat([]byte{0x5a}, 300) // a two-byte remaining length
	blk := 0
	for i := 0; i < 12; i++ {
		topic := "dm/dev-1/hb"
		if i%2 == 0 {
			topic = "dm/dev-1/ota/blk"
		}
		pkt := publish(topic, payload)
		sent = append(sent, pkt...)
		w := append([]byte(nil), pkt...)
		if i%2 == 0 {
			blk++
			if blk == 2 || blk == 4 {
				w[len(w)-1] ^= 0xff
			}
		}
		want = append(want, w...)
	}
	sent = append(sent, 0xd0, 0x00) // PINGRESP: no body
	want = append(want, 0xd0, 0x00)
	target := server(t, func(c net.Conn) {
		for b := sent; len(b) > 0; { // pieces of 7 bytes, split anywhere
			n := min(7, len(b))
			if _, err := c.Write(b[:n]); err != nil {
				return
			}
			b = b[n:]
		}
	})
	p := start(t, target, 1)
	p.SetFlip(Flip{TopicSuffix: "/ota/blk", Every: 2, Limit: 2})
	got, err := io.ReadAll(dial(t, p))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, not what was expected (%d)", len(got), len(want))
	}
	if s := p.Stats(); s.Flips != 2 {
		t.Fatalf("stats %+v", s)
	}
}

func TestDownRefusesThenRecovers(t *testing.T) {
	p := start(t, server(t, echo), 1)
	open := dial(t, p)
	roundTrip(t, open, 10)
	p.SetDown(true)
	if n := received(t, open); n != 0 {
		t.Fatalf("%d bytes after down", n)
	}
	if n := received(t, dial(t, p)); n != 0 {
		t.Fatalf("%d bytes while down", n)
	}
	p.SetDown(false)
	roundTrip(t, dial(t, p), 1000)
}

func TestCutAllEndsOpenConnectionsOnly(t *testing.T) {
	p := start(t, server(t, echo), 1)
	c := dial(t, p)
	roundTrip(t, c, 10)
	p.CutAll()
	if n := received(t, c); n != 0 {
		t.Fatalf("%d bytes after the cut", n)
	}
	roundTrip(t, dial(t, p), 1000)
}

// Stalls, delays and throttling shape when bytes move; they lose and
// change none.
func TestTimingFaultsKeepTheBytes(t *testing.T) {
	p := start(t, server(t, echo), 1)
	p.SetDelay(time.Millisecond)
	p.SetThrottle(256 << 10)
	c := dial(t, p)
	p.Stall(100 * time.Millisecond)
	roundTrip(t, c, 64<<10)
	p.SetDelay(0)
	p.SetThrottle(0)
	roundTrip(t, c, 64<<10)
}

func TestCloseEndsEverything(t *testing.T) {
	p := start(t, server(t, echo), 1)
	c := dial(t, p)
	roundTrip(t, c, 10)
	p.Stall(time.Hour) // Close does not wait for it
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if n := received(t, c); n != 0 {
		t.Fatalf("%d bytes after close", n)
	}
	if c2, err := net.Dial("tcp", p.Addr()); err == nil {
		_ = c2.Close()
		t.Fatal("listener still open")
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}
