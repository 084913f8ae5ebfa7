package test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"log/slog"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/ota/wire"
)

// logSink is a log destination that counts what is written to it.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *logSink) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Len()
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// withLog sends the broker's log, at debug level and up to level, to sink.
func withLog(sink *logSink, level slog.Level) func(*broker.Options) {
	return func(o *broker.Options) {
		o.Logger = slog.New(slog.NewTextHandler(sink, &slog.HandlerOptions{Level: level}))
	}
}

// TestLogAmplification: 50 malformed 100 KB QoS 1 messages from a v5
// device must not copy their payloads into the log (mochi logs a refused
// packet whole), and repeated refusals are rate limited.
func TestLogAmplification(t *testing.T) {
	sink := &logSink{}
	b := startBroker(t, withLog(sink, slog.LevelInfo))
	tok := b.register("amp-1", "device", "")
	dev := b.device("amp-1", tok)

	junk := bytes.Repeat([]byte{0xff}, 100*1024) // not CBOR
	before := sink.Len()
	for _, kind := range []string{"ev", "birth"} {
		for range 25 {
			if rc := dev.publish("dm/amp-1/"+kind, junk); rc != 0x99 {
				t.Fatalf("malformed %s: PUBACK %#x, want 0x99 payload format invalid", kind, rc)
			}
		}
	}
	// Also at QoS 0 to a topic the device may not use (mochi's own path).
	for range 50 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, _ = dev.cli.Publish(ctx, &paho.Publish{Topic: "dm/other/hb", QoS: 0, Payload: junk})
		cancel()
	}
	// A round trip, so that everything before it has been handled.
	dev.publish("dm/amp-1/hb", mustHex(t, "a601190e1002070300041a0001d4c005383c0600"))
	grown := sink.Len() - before
	t.Logf("log grew by %d bytes for 100 refused 100 KB messages", grown)
	if grown >= 64*1024 {
		t.Fatalf("log grew by %d bytes (limit 64 KiB); start of the log:\n%.2000s", grown, sink.String()[before:])
	}
	if strings.Contains(sink.String(), strings.Repeat("255 ", 16)) || strings.Contains(sink.String(), strings.Repeat("ff", 64)) {
		t.Fatal("a payload reached the log")
	}
	if !strings.Contains(sink.String(), "device message refused") {
		t.Fatal("refusals are not logged at all")
	}
	if !strings.Contains(sink.String(), "suppressed=") {
		// 50 identical refusals exceed the burst: the next line that gets
		// through says how many were held back. Force one after a refill.
		eventually(t, 5*time.Second, func() error {
			dev.publish("dm/amp-1/ev", junk)
			if !strings.Contains(sink.String(), "suppressed=") {
				return errors.New("no line reports suppressed refusals")
			}
			return nil
		})
	}
}

// TestEventRetryOnStoreFailure: an event the store cannot take is not
// acknowledged as done. MQTT v5 gets PUBACK 0x80 (keep it, send it later);
// MQTT 3.1.1 gets no PUBACK and the connection closes, so that the client
// resends the event after reconnecting. Once the store works again the same
// event is recorded.
func TestEventRetryOnStoreFailure(t *testing.T) {
	var failing atomic.Bool
	b := startBroker(t, func(o *broker.Options) {
		o.EventStoreFault = func() error {
			if failing.Load() {
				return errors.New("injected store failure")
			}
			return nil
		}
	})
	tok := b.register("evf-1", "device", "")
	dev := b.device("evf-1", tok)
	ev := wire.Event{Code: wire.EvCheckStarted, Detail: "store test"}.Encode()

	failing.Store(true)
	if rc := dev.publish("dm/evf-1/ev", ev); rc != 0x80 {
		t.Fatalf("event during a store failure: PUBACK %#x, want 0x80 (retry later)", rc)
	}
	if n := timelineLen(t, b, "evf-1"); n != 0 {
		t.Fatalf("timeline has %d entries after a failed write", n)
	}
	// The v5 connection stays up: the device keeps downloading.
	if rc := dev.publish("dm/evf-1/hb", mustHex(t, "a601190e1002070300041a0001d4c005383c0600")); rc != 0 {
		t.Fatalf("heartbeat after the refused event: %#x", rc)
	}

	// MQTT 3.1.1 (this takes over the v5 session): no PUBACK, the
	// connection is closed, so mosquitto_pub fails.
	h, p := b.hostPort()
	pub := func() (string, error) {
		return mosqStdin(t, ev, "mosquitto_pub", "-h", h, "-p", p, "-V", "mqttv311", "-i", "evf-1", "-u", "evf-1", "-P", tok,
			"-t", "dm/evf-1/ev", "-q", "1", "-s")
	}
	if out, err := pub(); err == nil {
		t.Fatalf("v3 publish during a store failure succeeded (it must not be acknowledged): %s", out)
	}
	if n := timelineLen(t, b, "evf-1"); n != 0 {
		t.Fatalf("timeline has %d entries after failed writes", n)
	}

	failing.Store(false)
	if out, err := pub(); err != nil {
		t.Fatalf("v3 publish after recovery: %v: %s", err, out)
	}
	dev = b.device("evf-1", tok)
	if rc := dev.publish("dm/evf-1/ev", ev); rc != 0 {
		t.Fatalf("v5 event after the store recovered: PUBACK %#x", rc)
	}
	if n := timelineLen(t, b, "evf-1"); n != 2 {
		t.Fatalf("timeline has %d entries, want the 2 resent events", n)
	}
	if v, err := b.metric(`otamq_rejected_total{reason="event_not_recorded"}`); err != nil || atoi(v) < 2 {
		t.Fatalf("event_not_recorded counter = %q, %v; want ≥ 2", v, err)
	}
}

func timelineLen(t *testing.T, b *tb, id string) int {
	t.Helper()
	es, err := b.Delivery().Timeline(id, 100)
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// mosqStdin runs a mosquitto client tool with stdin and returns its
// combined output.
func mosqStdin(t testing.TB, stdin []byte, tool string, args ...string) (string, error) {
	t.Helper()
	needCommand(t, tool)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool, args...)
	var out bytes.Buffer
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
