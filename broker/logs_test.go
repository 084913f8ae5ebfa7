package broker

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otamq/otamq/hooks"
)

func testLogHandler(buf *bytes.Buffer, level slog.Level) (*slog.Logger, *time.Time) {
	h := newLogHandler(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: level}))
	now := time.Unix(1_700_000_000, 0)
	h.state.now = func() time.Time { return now }
	return slog.New(h), &now
}

func TestLogHandlerSummarisesPackets(t *testing.T) {
	var buf bytes.Buffer
	log, _ := testLogHandler(&buf, slog.LevelDebug)
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName: "dm/x/ev", Payload: bytes.Repeat([]byte("secret"), 1000)}
	log.Error("publish packet error", "packet", pk)
	log.With("pk", &pk).Warn("error processing packet")
	out := buf.String()
	if strings.Contains(out, "secret") {
		t.Fatalf("payload in the log: %.300s", out)
	}
	for _, want := range []string{"packet.type=Publish", "packet.topic=dm/x/ev", "packet.payload_bytes=6000", "pk.qos=1"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(out, "level=DEBUG msg=\"publish packet error\"") {
		t.Errorf("mochi's publish error (the hook logs the refusal) is not at debug:\n%s", out)
	}
}

func TestLogHandlerRateLimitsPerKind(t *testing.T) {
	var buf bytes.Buffer
	log, now := testLogHandler(&buf, slog.LevelInfo)
	for range 100 {
		log.Info("connection refused", "reason", "bad_credentials")
		log.Info("connection refused", "reason", "unknown_client")
	}
	count := func(s string) int { return strings.Count(buf.String(), s) }
	if n := count("reason=bad_credentials"); n != logBurst {
		t.Fatalf("%d bad_credentials lines, want the burst of %d", n, logBurst)
	}
	if n := count("reason=unknown_client"); n != logBurst {
		t.Fatalf("%d unknown_client lines: kinds must not share an allowance", n)
	}
	*now = now.Add(time.Second) // refills logRate tokens
	buf.Reset()
	for range 10 {
		log.Info("connection refused", "reason", "bad_credentials")
	}
	if n := count("reason=bad_credentials"); n != int(logRate) {
		t.Fatalf("%d lines after a second, want %d", n, int(logRate))
	}
	if !strings.Contains(buf.String(), fmt.Sprintf("suppressed=%d", 100-logBurst)) {
		t.Fatalf("the first line after the pause does not count the %d held back:\n%s", 100-logBurst, buf.String())
	}
	// Debug lines are not limited (an operator who turns debug on wants
	// everything).
	var dbg bytes.Buffer
	dlog, _ := testLogHandler(&dbg, slog.LevelDebug)
	for range 100 {
		dlog.Debug("acl denied")
	}
	if n := strings.Count(dbg.String(), "acl denied"); n != 100 {
		t.Fatalf("%d debug lines, want 100", n)
	}
}

func TestLogHandlerKindsAreBounded(t *testing.T) {
	var buf bytes.Buffer
	log, _ := testLogHandler(&buf, slog.LevelInfo)
	for i := range 3 * maxLogKeys {
		log.Info("refused", "reason", fmt.Sprint(i))
	}
	h := log.Handler().(*logHandler)
	if n := len(h.state.kinds); n > maxLogKeys {
		t.Fatalf("%d kinds tracked, bound %d", n, maxLogKeys)
	}
}

func TestLogHandlerConnectionEnds(t *testing.T) {
	var buf bytes.Buffer
	log, _ := testLogHandler(&buf, slog.LevelInfo)
	// mochi's listener lines, as it writes them.
	log.Warn("", "error", io.EOF)
	log.Warn("", "error", fmt.Errorf("read connection: %w", io.EOF))
	log.Warn("", "error", fmt.Errorf("%w: bad_credentials", hooks.ErrConnectionRefused))
	if buf.Len() != 0 {
		t.Fatalf("ordinary connection ends logged at info:\n%s", buf.String())
	}
	log.Warn("", "error", fmt.Errorf("tls: first record does not look like a TLS handshake"))
	if out := buf.String(); !strings.Contains(out, `level=INFO msg="connection ended"`) || !strings.Contains(out, "tls: first record") {
		t.Fatalf("an unusual connection end is not one informative info line:\n%s", out)
	}
}
