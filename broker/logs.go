package broker

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otamq/otamq/hooks"
)

// Log limits: each kind of line (its message, plus its "reason" attribute
// when it has one) may burst to logBurst lines and then logs logRate lines
// per second; what is held back is counted and reported, as "suppressed",
// on the next line of that kind that gets through.
const (
	logBurst   = 20
	logRate    = 2.0
	maxLogKeys = 1024 // kinds tracked; beyond, they share one allowance
)

// logHandler is the handler every log line of the broker goes through,
// mochi's included. It keeps a client from flooding the log:
//
//   - no line carries a packet: a packets.Packet attribute (mochi logs
//     refused packets whole, payload included) becomes its type, topic,
//     QoS and size;
//   - lines at Info and above are rate limited per kind, so a client that
//     repeats a refused request costs a few lines, not one per request;
//   - mochi's message-less listener lines (one per connection that ends,
//     refused or not) become "connection ended", at Debug when the end is
//     an ordinary one that otamq logs or counts elsewhere, and its start-up
//     chatter goes to Debug.
type logHandler struct {
	next  slog.Handler
	state *logState
}

// logState is shared by a handler and every handler derived from it with
// WithAttrs or WithGroup.
type logState struct {
	now func() time.Time
	// mu guards kinds.
	mu    sync.Mutex
	kinds map[string]*logBucket
}

type logBucket struct {
	tokens     float64
	last       time.Time
	suppressed int
}

func newLogHandler(next slog.Handler) *logHandler {
	if h, ok := next.(*logHandler); ok {
		return h // already limited
	}
	return &logHandler{next: next, state: &logState{now: time.Now, kinds: make(map[string]*logBucket)}}
}

// Enabled implements slog.Handler.
func (h *logHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

// WithAttrs implements slog.Handler.
func (h *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	for i := range as {
		as[i] = cleanAttr(as[i])
	}
	return &logHandler{next: h.next.WithAttrs(as), state: h.state}
}

// WithGroup implements slog.Handler.
func (h *logHandler) WithGroup(name string) slog.Handler {
	return &logHandler{next: h.next.WithGroup(name), state: h.state}
}

// mochiDebug are mochi's start-up and routine lines that otamq's own
// "otamq started" line and metrics already cover.
var mochiDebug = map[string]bool{
	"added hook":                      true,
	"stopping hook":                   true,
	"attached listener":               true,
	"mochi mqtt starting":             true,
	"mochi mqtt server started":       true,
	"gracefully stopping server":      true,
	"mochi mqtt server stopped":       true,
	"publish packet error":            true, // the hook that refused it logs why
	"publish packet rejected":         true,
	"system event loop started":       true,
	"system event loop halted":        true,
	"client disconnected":             true,
	"session taken over":              true,
	"failed publishing packet":        true,
	"loaded clients from store":       true,
	"loaded subscriptions from store": true,
}

// Handle implements slog.Handler.
func (h *logHandler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	reason := ""
	var connErr error
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "reason":
			reason = a.Value.String()
		case "error", "err":
			if e, ok := a.Value.Any().(error); ok {
				connErr = e
			}
		}
		out.AddAttrs(cleanAttr(a))
		return true
	})
	switch {
	case r.Message == "":
		// mochi's listeners log every connection that ends with an error
		// this way.
		out.Message = "connection ended"
		if ordinaryEnd(connErr) {
			out.Level = slog.LevelDebug
		} else if out.Level > slog.LevelInfo {
			out.Level = slog.LevelInfo
		}
	case mochiDebug[r.Message]:
		out.Level = slog.LevelDebug
	}
	if out.Level != r.Level && !h.next.Enabled(ctx, out.Level) {
		return nil
	}
	if out.Level >= slog.LevelInfo {
		ok, suppressed := h.state.allow(out.Message + "\x00" + reason)
		if !ok {
			return nil
		}
		if suppressed > 0 {
			out.AddAttrs(slog.Int("suppressed", suppressed))
		}
	}
	return h.next.Handle(ctx, out)
}

// allow takes a token of kind and returns how many lines of that kind were
// held back since the last one let through.
func (s *logState) allow(kind string) (bool, int) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.kinds[kind]
	if b == nil {
		if len(s.kinds) >= maxLogKeys-1 { // one is kept for "other"
			kind = "\x00other"
			b = s.kinds[kind]
		}
		if b == nil {
			b = &logBucket{tokens: logBurst, last: now}
			s.kinds[kind] = b
		}
	}
	b.tokens = min(logBurst, b.tokens+now.Sub(b.last).Seconds()*logRate)
	b.last = now
	if b.tokens < 1 {
		b.suppressed++
		return false, 0
	}
	b.tokens--
	n := b.suppressed
	b.suppressed = 0
	return true, n
}

// ordinaryEnd reports whether a connection's end is one otamq logs or
// counts on its own (refused login, client went away, shutdown, takeover).
func ordinaryEnd(err error) bool {
	var code packets.Code
	switch {
	case err == nil,
		errors.Is(err, hooks.ErrConnectionRefused),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, net.ErrClosed), errors.Is(err, os.ErrDeadlineExceeded):
		return true
	case errors.As(err, &code):
		return true // a protocol decision mochi made and the client was told
	}
	return false
}

// cleanAttr replaces a packet with a summary of it.
func cleanAttr(a slog.Attr) slog.Attr {
	if a.Value.Kind() != slog.KindAny {
		return a
	}
	var pk *packets.Packet
	switch v := a.Value.Any().(type) {
	case packets.Packet:
		pk = &v
	case *packets.Packet:
		pk = v
	default:
		return a
	}
	if pk == nil {
		return a
	}
	return slog.Group(a.Key,
		slog.String("type", packets.PacketNames[pk.FixedHeader.Type]),
		slog.String("topic", boundedTopic(pk.TopicName)),
		slog.Int("qos", int(pk.FixedHeader.Qos)),
		slog.Int("payload_bytes", len(pk.Payload)))
}

// boundedTopic shortens a topic name for a log line.
func boundedTopic(t string) string {
	const max = 128
	if len(t) <= max {
		return t
	}
	return t[:max] + "…"
}
