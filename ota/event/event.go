// Package event is the domain's feed of what happens to devices and the
// fleet, as typed values, to several subscribers.
//
// Two kinds of subscriber:
//
//   - A TxSubscriber gets the events that are recorded in a store
//     transaction (a device's update event, a registration) inside that
//     transaction, before it commits, so that it can commit a decision of
//     its own with the event (the rollout engine); an error it returns
//     aborts the transaction, and the event is not recorded (the device is
//     told to send it again). Nothing is lost: the event and the decision
//     are durable together, or neither is.
//   - A Subscriber gets every event after it happened: the transactional
//     ones after their commit, the in-memory ones (connects, disconnects,
//     births, Last Wills, health and OTA-state changes, which the registry
//     keeps in memory and flushes every few seconds) right after the
//     registry changed. OnEvent is called on the goroutine where the event
//     happened (often a client's read goroutine) and must not block; a
//     subscriber that does slow work queues it, and decides itself whether
//     it may drop (the dashboard stream does) or not.
//
// Events of one device reach a subscriber in the order they happened.
package event

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/otamq/otamq/ota/store"
	"github.com/otamq/otamq/ota/wire"
)

// Event is one thing that happened. The concrete types are below.
type Event interface {
	// DeviceID is the client the event is about.
	DeviceID() string
	// Time is when it happened, on the domain's clock.
	Time() time.Time
	event()
}

// Base is what every event has.
type Base struct {
	ID string
	At time.Time
}

// DeviceID implements Event.
func (b Base) DeviceID() string { return b.ID }

// Time implements Event.
func (b Base) Time() time.Time { return b.At }

func (Base) event() {}

// Registered: a client was registered (in the transaction).
type Registered struct {
	Base
	Role  string
	Actor string
}

// Updated: a registration changed (in the transaction).
type Updated struct {
	Base
	Role  string
	Actor string
}

// Revoked: a client's credentials were revoked (in the transaction).
type Revoked struct {
	Base
	Role   string
	Actor  string
	Reason string
}

// Connected: a session of a device or gateway began. Gen tells it from
// the other sessions of the same ID (a takeover).
//
// For a gateway's child, which has no connection of its own, Via names the
// gateway: the child became reachable through session Gen of it.
type Connected struct {
	Base
	Role     string
	Gen      uint64
	Remote   string
	Protocol uint8
	Via      string
}

// Disconnected: the current session of a device or gateway ended.
//
// For a gateway's child Via names the gateway: Reason "gateway_offline"
// means the gateway's session Gen ended and the child is unreachable (not
// known to be down); "gateway_changed" or "kicked" that the gateway may no
// longer act for it.
type Disconnected struct {
	Base
	Role   string
	Gen    uint64
	Reason string
	Via    string
}

// WillFired: the broker published the Last Will of the current session.
type WillFired struct {
	Base
	Gen uint64
}

// Birth: a device reported its birth: firmware, slot, boot reason, boots
// since its last commit, OTA state, secure version...
type Birth struct {
	Base
	Birth wire.Birth
}

// Health: a device's health flags went from all set to not, or back.
type Health struct {
	Base
	Flags   uint8
	Healthy bool
}

// OTAState: a device's heartbeat reported another OTA state than the one
// the registry had (the agent sends a heartbeat at once when it changes).
type OTAState struct {
	Base
	From, To wire.OTAState
	// Offset is the download offset, when the heartbeat carried one.
	Offset *uint64
}

// Update: a device reported an update event (download, install, reboot,
// health, rollback, rejection), recorded in its timeline in the
// transaction TxSubscribers see.
type Update struct {
	Base
	Event wire.Event
}

// Rollout: something happened to a rollout. DeviceID is the device for
// Kind "device" (a device's result), empty otherwise.
type Rollout struct {
	Base
	Rollout string
	// Kind: started, wave_started, wave_reached, wave_passed, warned,
	// paused, resumed, completed, aborted, ended, approved, device.
	Kind string
	Wave string
	// State is the device's state for Kind "device", else the rollout's.
	State  string
	Reason string
	Actor  string
}

// RolloutSummary is a rollout's whole state for live views (otactl rollout
// watch), published when it changed, at most about once a second. DeviceID
// is empty.
type RolloutSummary struct {
	Base
	Rollout string
	// JSON is the summary as the admin API's rollout/get returns it.
	JSON []byte
}

// Subscriber gets events after they happened. OnEvent must not block.
type Subscriber interface {
	OnEvent(Event)
}

// TxSubscriber gets transactional events inside their transaction. An
// error aborts it. OnEventTx must not keep tx beyond the call.
type TxSubscriber interface {
	OnEventTx(tx store.Tx, ev Event) error
}

// SubscriberFunc adapts a function to Subscriber.
type SubscriberFunc func(Event)

// OnEvent implements Subscriber.
func (f SubscriberFunc) OnEvent(ev Event) { f(ev) }

// Feed delivers events to its subscribers. Subscribe before events flow
// (publishing does not lock: the subscriber lists are swapped whole). A nil
// *Feed is a valid feed with no subscribers.
type Feed struct {
	mu     sync.Mutex // serialises Subscribe and SubscribeTx
	subs   atomic.Pointer[[]Subscriber]
	txSubs atomic.Pointer[[]TxSubscriber]
}

// Subscribe adds s to those that get every event.
func (f *Feed) Subscribe(s Subscriber) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var next []Subscriber
	if cur := f.subs.Load(); cur != nil {
		next = append(next, *cur...)
	}
	next = append(next, s)
	f.subs.Store(&next)
}

// SubscribeTx adds s to those that get transactional events inside their
// transaction.
func (f *Feed) SubscribeTx(s TxSubscriber) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var next []TxSubscriber
	if cur := f.txSubs.Load(); cur != nil {
		next = append(next, *cur...)
	}
	next = append(next, s)
	f.txSubs.Store(&next)
}

// Publish gives ev to every Subscriber, in the order they subscribed.
func (f *Feed) Publish(ev Event) {
	if f == nil {
		return
	}
	if subs := f.subs.Load(); subs != nil {
		for _, s := range *subs {
			s.OnEvent(ev)
		}
	}
}

// PublishTx gives ev to every TxSubscriber inside tx, and arranges for it
// to reach every Subscriber after tx commits. The first error aborts (tx's
// function should return it).
func (f *Feed) PublishTx(tx store.Tx, ev Event) error {
	if f == nil {
		return nil
	}
	if subs := f.txSubs.Load(); subs != nil {
		for _, s := range *subs {
			if err := s.OnEventTx(tx, ev); err != nil {
				return err
			}
		}
	}
	tx.OnCommit(func() { f.Publish(ev) })
	return nil
}
