package hooks

import (
	"encoding/json"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otamq/otamq/ota/fleet"
)

// Events publishes fleet events as JSON on the fleet events topic, from its
// own goroutine: Notify is called on clients' read goroutines and only
// queues. When the queue is full the event is dropped and counted; fleet
// events are for dashboards, the registry keeps the state.
//
// Events also implements admin.Disconnector.
type Events struct {
	srv   *mqtt.Server
	topic string
	rec   Recorder
	log   *slog.Logger

	// orderMu guards last, the time of the last event queued, and makes
	// queueing and stamping one step.
	orderMu sync.Mutex
	last    time.Time

	ch       chan fleet.Event
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
	kicks    sync.WaitGroup // disconnects under way
}

// NewEvents starts the publisher. Close stops it.
func NewEvents(srv *mqtt.Server, t Topics, rec Recorder, log *slog.Logger) *Events {
	if rec == nil {
		rec = NopRecorder{}
	}
	if log == nil {
		log = slog.Default()
	}
	e := &Events{srv: srv, topic: t.FleetEvents(), rec: rec, log: log,
		ch: make(chan fleet.Event, 4096), stop: make(chan struct{}), done: make(chan struct{})}
	go e.run()
	return e
}

// Notify implements fleet.Notifier. It never blocks.
//
// Events are published in the order of their times: producers stamp an
// event before their own work (a durable write, say) and notify after, so
// two events can arrive out of order. Notify queues under a lock and moves
// an event's time up to the last one queued when it would go back, so the
// queue, and the topic, are in time order.
func (e *Events) Notify(ev fleet.Event) {
	select {
	case <-e.stop:
		return
	default:
	}
	e.orderMu.Lock()
	defer e.orderMu.Unlock()
	if ev.Time.Before(e.last) {
		ev.Time = e.last
	}
	select {
	case e.ch <- ev:
		e.last = ev.Time
	default:
		e.rec.FleetEventDropped()
	}
}

func (e *Events) run() {
	defer close(e.done)
	for {
		select {
		case ev := <-e.ch:
			e.publish(ev)
		case <-e.stop:
			for {
				select {
				case ev := <-e.ch:
					e.publish(ev)
				default:
					return
				}
			}
		}
	}
}

func (e *Events) publish(ev fleet.Event) {
	b, err := json.Marshal(ev)
	if err != nil {
		e.log.Error("fleet event encode", "err", err)
		return
	}
	if err := e.srv.Publish(e.topic, b, false, 0); err != nil {
		e.log.Debug("fleet event not published", "err", err)
	}
}

// Close publishes what is queued, waits for disconnects under way, and
// stops.
func (e *Events) Close() {
	e.stopOnce.Do(func() { close(e.stop) })
	<-e.done
	e.kicks.Wait()
}

// Disconnect implements admin.Disconnector: it ends the session of id, if
// any, with "administrative action". It returns at once; the connection
// ends within DisconnectGrace in a goroutine that Close waits for.
func (e *Events) Disconnect(id string) {
	cl, ok := e.srv.Clients.Get(id)
	if !ok || cl.Closed() || cl.Net.Inline {
		return
	}
	e.kicks.Add(1)
	go func() {
		defer e.kicks.Done()
		EndConnection(e.srv, cl, packets.ErrAdministrativeAction)
		e.log.Info("client disconnected by operator action", "client", id)
	}()
}
