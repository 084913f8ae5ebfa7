package e2e

import (
	"crypto/sha256"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otamq/otamq/ota/wire"
)

// hostile is an MQTT server that speaks the device contract on the
// devices' topics (docs/PROTOCOL.md) the way a compromised broker could: it
// lets every client in, sends each device whatever offer the test gives it
// (when the device subscribes to its manifest topic, as otamq does, and at
// once when it is already subscribed), and answers block requests with the
// bytes the test put under the requested digest, whatever they are. It
// checks nothing. What the devices publish (births, heartbeats, events,
// block requests) is decoded with ota/wire and kept for the test.
//
// It is mochi-mqtt embedded in the test: a plain MQTT server, not otamq,
// so that nothing of otamq's own checks stands between the payloads and
// the agent.
type hostile struct {
	t    testing.TB
	srv  *mqtt.Server
	addr string
	jobs chan func()   // publishes, done by the worker off the clients' read goroutines
	done chan struct{} // closed at the end: the worker returns
	wg   sync.WaitGroup

	mu         sync.Mutex // guards everything below
	images     map[[32]byte][]byte
	offers     map[string][]byte // device ID -> its current offer, encoded
	subscribed map[string]bool   // device ID -> subscribed to its manifest topic
	births     map[string][]wire.Birth
	events     map[string][]wire.Event
	gets       map[string][]wire.BlockRequest
	hbs        map[string]int
}

// startHostile starts the server on a free loopback port; it stops when
// the test ends.
func startHostile(t testing.TB) *hostile {
	t.Helper()
	h := &hostile{t: t, jobs: make(chan func(), 1024), done: make(chan struct{}),
		images: map[[32]byte][]byte{}, offers: map[string][]byte{}, subscribed: map[string]bool{},
		births: map[string][]wire.Birth{}, events: map[string][]wire.Event{},
		gets: map[string][]wire.BlockRequest{}, hbs: map[string]int{}}
	logs := &syncBuffer{}
	opts := &mqtt.Options{InlineClient: true, Capabilities: mqtt.NewDefaultServerCapabilities(),
		Logger: slog.New(slog.NewTextHandler(logs, nil))}
	h.srv = mqtt.New(opts)
	if err := h.srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	if err := h.srv.AddHook(&hostileHook{h: h}, nil); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = ln.Addr().String()
	if err := h.srv.AddListener(listeners.NewNet("hostile", ln)); err != nil {
		t.Fatal(err)
	}
	if err := h.srv.Serve(); err != nil {
		t.Fatal(err)
	}
	h.wg.Add(1)
	go h.work()
	t.Cleanup(func() {
		close(h.done)
		h.wg.Wait()
		_ = h.srv.Close()
		if t.Failed() {
			h.mu.Lock()
			for id, es := range h.events {
				t.Logf("hostile server: %s sent %d births, %d heartbeats, %d block requests, events %+v", id, len(h.births[id]), h.hbs[id], len(h.gets[id]), es)
			}
			h.mu.Unlock()
			t.Logf("hostile server log:\n%s", logs.String())
		}
	})
	return h
}

// url is the server's MQTT URL for the agent's --broker.
func (h *hostile) url() string { return "mqtt://" + h.addr }

func (h *hostile) work() {
	defer h.wg.Done()
	for {
		select {
		case <-h.done:
			return
		case job := <-h.jobs:
			job()
		}
	}
}

// later queues a publish for the worker.
func (h *hostile) later(job func()) {
	select {
	case h.jobs <- job:
	case <-h.done:
	}
}

// serve makes the server answer requests for digest with image.
func (h *hostile) serve(digest [32]byte, image []byte) {
	h.mu.Lock()
	h.images[digest] = image
	h.mu.Unlock()
}

// offer makes o device id's current offer and sends it if the device is
// subscribed to its manifest topic.
func (h *hostile) offer(id string, o wire.Offer) {
	b := o.Encode()
	h.mu.Lock()
	h.offers[id] = b
	send := h.subscribed[id]
	h.mu.Unlock()
	if send {
		h.later(func() { h.publish("dm/"+id+"/ota/manifest", b, 1) })
	}
}

func (h *hostile) publish(topic string, payload []byte, qos byte) {
	if err := h.srv.Publish(topic, payload, false, qos); err != nil {
		h.t.Logf("hostile server: publish %s: %v", topic, err)
	}
}

// answer sends the blocks of a request from the image stored under its
// digest, as many as asked of the size asked: no window or size limit of
// its own, no check of who asks.
func (h *hostile) answer(id string, r wire.BlockRequest) {
	var d [32]byte
	copy(d[:], r.Digest)
	h.mu.Lock()
	img, ok := h.images[d]
	h.mu.Unlock()
	topic := "dm/" + id + "/ota/blk"
	if !ok {
		h.publish(topic, wire.BlockError{RequestID: r.RequestID, Offset: r.Offset, Code: wire.BlockUnknownImage, Message: "unknown image"}.Encode(), 0)
		return
	}
	off := r.Offset
	for range r.Count {
		if off >= uint64(len(img)) {
			return
		}
		end := min(off+uint64(r.Size), uint64(len(img)))
		h.publish(topic, wire.AppendBlock(nil, r.RequestID, off, uint64(len(img)), img[off:end]), 0)
		off = end
	}
}

// eventsOf is what device id published on its event topic so far.
func (h *hostile) eventsOf(id string) []wire.Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]wire.Event(nil), h.events[id]...)
}

// birthsOf is what device id published on its birth topic so far.
func (h *hostile) birthsOf(id string) []wire.Birth {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]wire.Birth(nil), h.births[id]...)
}

// getsOf is the block requests device id sent so far.
func (h *hostile) getsOf(id string) []wire.BlockRequest {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]wire.BlockRequest(nil), h.gets[id]...)
}

// heartbeats is how many heartbeats device id sent so far.
func (h *hostile) heartbeats(id string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.hbs[id]
}

// hostileHook records the devices' messages and hands the answers to the
// worker: mochi runs hooks on the client's read goroutine, and an inline
// publish from there would re-enter them.
type hostileHook struct {
	mqtt.HookBase
	h *hostile
}

func (k *hostileHook) ID() string { return "hostile" }

func (k *hostileHook) Provides(b byte) bool { return b == mqtt.OnPublish || b == mqtt.OnSubscribed }

// OnPublish implements mqtt.Hook.
func (k *hostileHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	id, kind, ok := strings.Cut(strings.TrimPrefix(pk.TopicName, "dm/"), "/")
	if !ok || id != cl.ID {
		return pk, nil
	}
	h := k.h
	payload := append([]byte(nil), pk.Payload...)
	var err error
	h.mu.Lock()
	switch kind {
	case "birth":
		var b wire.Birth
		if b, err = wire.DecodeBirth(payload); err == nil {
			h.births[id] = append(h.births[id], b)
		}
	case "hb":
		if _, err = wire.DecodeHeartbeat(payload); err == nil {
			h.hbs[id]++
		}
	case "ev":
		var e wire.Event
		if e, err = wire.DecodeEvent(payload); err == nil {
			h.events[id] = append(h.events[id], e)
		}
	case "ota/get":
		var r wire.BlockRequest
		if r, err = wire.DecodeBlockRequest(payload); err == nil {
			h.gets[id] = append(h.gets[id], r)
			defer h.later(func() { h.answer(id, r) }) // after the unlock
		}
	}
	h.mu.Unlock()
	if err != nil {
		h.t.Errorf("hostile server: %s sent a %s the contract's decoder refuses: %v", id, kind, err)
	}
	return pk, nil
}

// OnSubscribed implements mqtt.Hook: a device subscribing to its manifest
// topic is sent its current offer, as otamq does.
func (k *hostileHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	h := k.h
	for i, f := range pk.Filters {
		if i >= len(codes) || codes[i] >= 0x80 || f.Filter != "dm/"+cl.ID+"/ota/manifest" {
			continue
		}
		h.mu.Lock()
		h.subscribed[cl.ID] = true
		offer := h.offers[cl.ID]
		h.mu.Unlock()
		if offer != nil {
			topic := f.Filter
			h.later(func() { h.publish(topic, offer, 1) })
		}
	}
}

// digestOf is the SHA-256 of b.
func digestOf(b []byte) [32]byte { return sha256.Sum256(b) }
