package hooks

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otamq/otamq/ota/access"
	"github.com/otamq/otamq/ota/event"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/wire"
)

// FleetEvent is a fleet event as dashboards and `mosquitto_sub -t
// dm/fleet/events` get it (JSON; docs/METRICS.md, "Fleet events").
type FleetEvent struct {
	Type     string    `json:"type"`
	ID       string    `json:"id"`
	Time     time.Time `json:"time"`
	Role     string    `json:"role,omitempty"`
	Firmware string    `json:"firmware,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	Actor    string    `json:"actor,omitempty"`
	// Gateway is set on device.online, device.offline and
	// device.unreachable of a gateway's child: the gateway it is (or was)
	// reached through.
	Gateway string `json:"gateway,omitempty"`
	// Rollout and Progress are set on update events: the rollout the
	// device reports on and, for download progress, the percentage.
	Rollout  string `json:"rollout,omitempty"`
	Progress *uint8 `json:"progress,omitempty"`
	// Wave and State are set on rollout events ("rollout.*"): the wave
	// concerned, and the device's state (rollout.device) or the
	// rollout's.
	Wave  string `json:"wave,omitempty"`
	State string `json:"state,omitempty"`

	// topic and raw, when set, make this no fleet event but a message of
	// its own (a rollout summary on its rollout's topic).
	topic string
	raw   []byte
}

// Fleet event types besides the update events, which are named by their
// code (update.download.completed, ...).
const (
	EventRegistered = "device.registered"
	EventUpdated    = "device.updated"
	EventRevoked    = "device.revoked"
	EventOnline     = "device.online"
	EventOffline    = "device.offline"
	// EventUnreachable: a gateway's child is cut off because its gateway's
	// session ended (reason gateway_offline); not known to be down.
	EventUnreachable = "device.unreachable"
	EventBirth       = "device.birth"
	EventWill        = "device.will"
	EventHealth      = "device.health"
	EventOTAState    = "device.ota_state"
)

// fleetEvent renders a domain event for the fleet events topic.
func fleetEvent(ev event.Event) FleetEvent {
	fe := FleetEvent{ID: ev.DeviceID(), Time: ev.Time()}
	switch x := ev.(type) {
	case event.Registered:
		fe.Type, fe.Role, fe.Actor = EventRegistered, x.Role, x.Actor
	case event.Updated:
		fe.Type, fe.Role, fe.Actor = EventUpdated, x.Role, x.Actor
	case event.Revoked:
		fe.Type, fe.Role, fe.Actor, fe.Reason = EventRevoked, x.Role, x.Actor, x.Reason
	case event.Connected:
		fe.Type, fe.Role, fe.Gateway = EventOnline, x.Role, x.Via
	case event.Disconnected:
		fe.Type, fe.Reason, fe.Gateway = EventOffline, x.Reason, x.Via
		if x.Reason == fleet.ReasonGatewayOffline {
			fe.Type = EventUnreachable
		}
	case event.WillFired:
		fe.Type = EventWill
	case event.Birth:
		fe.Type, fe.Firmware, fe.Reason = EventBirth, x.Birth.FirmwareVersion, x.Birth.BootReason.String()
	case event.Health:
		fe.Type, fe.Reason = EventHealth, "healthy"
		if !x.Healthy {
			fe.Reason = fmt.Sprintf("health flags %03b", x.Flags)
		}
	case event.OTAState:
		fe.Type, fe.Reason = EventOTAState, x.To.String()
	case event.Rollout:
		fe.Type, fe.Rollout, fe.Wave, fe.State, fe.Reason, fe.Actor = "rollout."+x.Kind, x.Rollout, x.Wave, x.State, x.Reason, x.Actor
		if fe.ID == "" {
			fe.ID = x.Rollout
		}
	case event.Update:
		e := x.Event
		fe.Type, fe.Firmware, fe.Rollout = e.Code.String(), e.TargetVersion, e.RolloutID
		if e.Error != 0 {
			fe.Reason = e.Error.String()
		}
		if e.Progress > 0 || e.Code == wire.EvDownloadProgress {
			p := e.Progress
			fe.Progress = &p
		}
	}
	return fe
}

// Events publishes fleet events as JSON on the fleet events topic, from its
// own goroutine: OnEvent is called on clients' read goroutines and only
// queues. When the queue is full the event is dropped and counted; fleet
// events are for dashboards, the registry keeps the state.
//
// Events also implements admin.Disconnector.
type Events struct {
	srv    *mqtt.Server
	topic  string
	topics access.Topics
	rec    Recorder
	log    *slog.Logger

	// orderMu guards last, the time of the last event queued, and makes
	// queueing and stamping one step.
	orderMu sync.Mutex
	last    time.Time

	// subGen counts subscriptions made (Subscribed); listeners is what the
	// fleet events topic had at one of them: (generation+1)<<1, and bit 0
	// set when some client subscribes to it; 0: not looked at yet.
	// lookedAt is when that was seen (Unix nanoseconds).
	subGen    atomic.Uint64
	listeners atomic.Uint64
	lookedAt  atomic.Int64

	ch       chan FleetEvent
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
	kicks    sync.WaitGroup // disconnects under way
}

// NewEvents starts the publisher. Close stops it. Call Subscribed from an
// OnSubscribed hook of srv.
func NewEvents(srv *mqtt.Server, t access.Topics, rec Recorder, log *slog.Logger) *Events {
	if rec == nil {
		rec = NopRecorder{}
	}
	if log == nil {
		log = slog.Default()
	}
	e := &Events{srv: srv, topic: t.FleetEvents(), topics: t, rec: rec, log: log,
		ch: make(chan FleetEvent, 4096), stop: make(chan struct{}), done: make(chan struct{})}
	go e.run()
	return e
}

// OnEvent implements event.Subscriber. It never blocks.
//
// Events are published in the order of their times: producers stamp an
// event before their own work (a durable write, say) and notify after, so
// two events can arrive out of order. OnEvent queues under a lock and moves
// an event's time up to the last one queued when it would go back, so the
// queue, and the topic, are in time order.
func (e *Events) OnEvent(dev event.Event) {
	select {
	case <-e.stop:
		return
	default:
	}
	var ev FleetEvent
	if sum, ok := dev.(event.RolloutSummary); ok {
		ev = FleetEvent{Time: sum.Time(), topic: e.topics.RolloutSummary(sum.Rollout), raw: sum.JSON}
	} else {
		if heard, known := e.known(); known && !heard {
			// nobody subscribes to the topic: mochi would route the
			// message to no one
			return
		}
		ev = fleetEvent(dev)
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

func (e *Events) publish(ev FleetEvent) {
	if ev.topic != "" {
		if err := e.srv.Publish(ev.topic, ev.raw, false, 0); err != nil {
			e.log.Debug("rollout summary not published", "err", err)
		}
		return
	}
	if !e.heard() {
		return
	}
	b, err := json.Marshal(ev)
	if err != nil {
		e.log.Error("fleet event encode", "err", err)
		return
	}
	if err := e.srv.Publish(e.topic, b, false, 0); err != nil {
		e.log.Debug("fleet event not published", "err", err)
	}
}

// heard reports whether a client subscribes to the fleet events topic. It
// walks mochi's topic index only when a subscription was made since it
// last did, or listenersFresh has passed: a burst of events (a rollout's
// thousands of offers) costs a few loads each, not an encoding and a
// publish to nobody.
//
// A subscription is in the index before mochi's OnSubscribed hooks run,
// where the device hook counts it (Subscribed), and both before the client
// has its SUBACK: when the count is the one seen before the walk, the walk
// saw every subscription a client can know it has. A subscription that
// comes into the index another way (a session mochi restores without
// OnSubscribed; an Events nobody calls Subscribed for) is seen within
// listenersFresh. Unsubscriptions are not counted: the topic then looks
// heard until the next look, and mochi routes to no one meanwhile.
func (e *Events) heard() bool {
	if heard, known := e.known(); known {
		return heard
	}
	g := e.subGen.Load()
	subs := e.srv.Topics.Subscribers(e.topic)
	heard := len(subs.Subscriptions) > 0 || len(subs.Shared) > 0 || len(subs.InlineSubscriptions) > 0
	l := (g + 1) << 1
	if heard {
		l |= 1
	}
	e.lookedAt.Store(time.Now().UnixNano())
	e.listeners.Store(l)
	return heard
}

// listenersFresh is how long what heard saw holds when no subscription
// was made meanwhile.
const listenersFresh = time.Second

// known returns what heard last saw, and whether it still holds: no
// subscription since, and seen within listenersFresh.
func (e *Events) known() (heard, ok bool) {
	l := e.listeners.Load()
	if l>>1 != e.subGen.Load()+1 || time.Now().UnixNano()-e.lookedAt.Load() >= int64(listenersFresh) {
		return false, false
	}
	return l&1 == 1, true
}

// Subscribed tells e that a client subscribed to something (heard). Call
// it from a hook's OnSubscribed (the device hook does, so that mochi has
// no hook more to go through for every packet); without it, a new
// subscriber of the fleet events topic may miss up to listenersFresh of
// events.
func (e *Events) Subscribed() { e.subGen.Add(1) }

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

// FleetEventOf renders a domain event as the fleet events topic carries it
// (the HTTP API's event stream sends the same JSON).
func FleetEventOf(ev event.Event) FleetEvent { return fleetEvent(ev) }
