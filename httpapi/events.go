package httpapi

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/otamq/otamq/hooks"
	"github.com/otamq/otamq/ota/admin"
	"github.com/otamq/otamq/ota/event"
)

// The event stream. The hub is one subscriber of the domain's event feed:
// OnEvent (on the goroutine where the event happened) only queues, and
// costs nothing while no stream is open; the hub's goroutine renders each
// event once and offers it to every stream without waiting. A stream whose
// queue is full is dropped (its client fell behind; it may reconnect), so
// a client that stops reading stalls nothing but itself, and its writes
// end at their deadline.
//
// Operators and observers see the same events, as on MQTT, where both
// read dm/fleet/events and dm/fleet/rollouts/+: the registrations,
// connections, births, health and OTA states, update events, rollout
// events ("event: fleet", the JSON of dm/fleet/events) and each rollout's
// summary ("event: rollout", the JSON of rollout/get). Devices have no
// sessions.

// hubQueue bounds the events waiting for the hub's goroutine.
const hubQueue = 4096

// MaxStreamsPerOperator bounds the event streams of one operator or
// observer (all its sessions), so that one cannot take every place.
const MaxStreamsPerOperator = 8

type hub struct {
	log   *slog.Logger
	max   int
	queue int
	in    chan event.Event
	open  atomic.Int32 // streams open, read by OnEvent without the lock
	// dropped counts events the hub could not queue; slow counts the
	// streams dropped for falling behind.
	dropped atomic.Uint64
	slow    atomic.Uint64

	// mu guards streams, per (open streams by operator) and closed.
	mu      sync.Mutex
	streams map[*stream]struct{}
	per     map[string]int
	closed  bool

	stop chan struct{}
	done chan struct{}
}

// stream is one client's queue of rendered events.
type stream struct {
	operator string
	ch       chan []byte
	dropped  chan struct{} // closed when the hub drops the stream
}

func newHub(max, queue int, log *slog.Logger) *hub {
	h := &hub{log: log, max: max, queue: queue, in: make(chan event.Event, hubQueue), streams: map[*stream]struct{}{},
		per: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	go h.run()
	return h
}

// OnEvent implements event.Subscriber. It never blocks.
func (a *API) OnEvent(ev event.Event) { a.hub.onEvent(ev) }

var _ event.Subscriber = (*API)(nil)

func (h *hub) onEvent(ev event.Event) {
	if h.open.Load() == 0 {
		return
	}
	select {
	case h.in <- ev:
	default:
		h.dropped.Add(1)
	}
}

func (h *hub) run() {
	defer close(h.done)
	for {
		select {
		case ev := <-h.in:
			msg := render(ev)
			if msg == nil {
				continue
			}
			h.mu.Lock()
			for s := range h.streams {
				select {
				case s.ch <- msg:
				default:
					h.remove(s)
					h.slow.Add(1)
					close(s.dropped)
				}
			}
			h.mu.Unlock()
		case <-h.stop:
			return
		}
	}
}

// render returns ev as a Server-Sent Event.
func render(ev event.Event) []byte {
	var kind string
	var data []byte
	if sum, ok := ev.(event.RolloutSummary); ok {
		kind, data = "rollout", sum.JSON
	} else {
		b, err := json.Marshal(hooks.FleetEventOf(ev))
		if err != nil {
			return nil
		}
		kind, data = "fleet", b
	}
	// JSON has no raw newline, so the data is one line.
	out := make([]byte, 0, len(data)+32)
	out = append(out, "event: "...)
	out = append(out, kind...)
	out = append(out, "\ndata: "...)
	out = append(out, data...)
	return append(out, "\n\n"...)
}

// add opens a stream of operator, or reports false when MaxStreams are
// open, or MaxStreamsPerOperator of operator's.
func (h *hub) add(operator string) (*stream, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed || len(h.streams) >= h.max || h.per[operator] >= MaxStreamsPerOperator {
		return nil, false
	}
	s := &stream{operator: operator, ch: make(chan []byte, h.queue), dropped: make(chan struct{})}
	h.streams[s] = struct{}{}
	h.per[operator]++
	h.open.Add(1)
	return s, true
}

// remove forgets s. h.mu is held.
func (h *hub) remove(s *stream) {
	if _, ok := h.streams[s]; ok {
		delete(h.streams, s)
		if h.per[s.operator]--; h.per[s.operator] <= 0 {
			delete(h.per, s.operator)
		}
		h.open.Add(-1)
	}
}

// Streams returns the event streams open now.
func (a *API) Streams() int { return int(a.hub.open.Load()) }

// StreamsDropped returns how many streams were ended for falling behind.
func (a *API) StreamsDropped() uint64 { return a.hub.slow.Load() }

// EventsDropped returns how many events no stream got because the hub's
// queue was full.
func (a *API) EventsDropped() uint64 { return a.hub.dropped.Load() }

func (h *hub) release(s *stream) {
	h.mu.Lock()
	h.remove(s)
	h.mu.Unlock()
}

func (h *hub) close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	h.mu.Unlock()
	close(h.stop)
	<-h.done
}

// events serves GET /api/v1/events.
func (a *API) events(w http.ResponseWriter, r *http.Request, c *caller) {
	s, ok := a.hub.add(c.ID)
	if !ok {
		writeError(w, &admin.Error{Code: admin.CodeUnavailable, Message: fmt.Sprintf(
			"too many event streams open (at most %d, %d of one operator); try again later", a.hub.max, MaxStreamsPerOperator)})
		return
	}
	defer a.hub.release(s)
	rc := http.NewResponseController(w)
	write := func(b []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(a.o.RequestTimeout))
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	// A write blocked on a client that stopped reading ends at once when
	// the stream is dropped or the broker stops (a connection's deadline
	// may be set from any goroutine), not at its deadline.
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-s.dropped:
		case <-a.stop:
		case <-done:
			return
		}
		_ = rc.SetWriteDeadline(time.Now())
	}()
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if !write([]byte(": otamq events of " + c.ID + "\nretry: 3000\n\n")) {
		return
	}
	tick := time.NewTicker(a.o.Heartbeat)
	defer tick.Stop()
	for {
		select {
		case msg := <-s.ch:
			if !write(msg) {
				return
			}
		case <-tick.C:
			// The session may have expired or lost its operator.
			if _, _, _, aerr := a.svc.SessionCaller(c.token, r.RemoteAddr); aerr != nil {
				_ = write([]byte("event: end\ndata: {\"reason\":\"session ended\"}\n\n"))
				return
			}
			if !write([]byte(": heartbeat\n\n")) {
				return
			}
		case <-s.dropped:
			a.log.Info("event stream dropped: the client fell behind", "operator", c.ID, "remote", r.RemoteAddr)
			return
		case <-c.ended:
			_ = write([]byte("event: end\ndata: {\"reason\":\"session ended\"}\n\n"))
			return
		case <-a.stop:
			_ = write([]byte("event: end\ndata: {\"reason\":\"broker stopping\"}\n\n"))
			return
		case <-r.Context().Done():
			return
		}
	}
}
