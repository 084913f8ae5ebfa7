package event

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/store"
	"github.com/otamq/otamq/ota/wire"
)

type seen struct {
	mu  sync.Mutex
	evs []Event
}

func (s *seen) OnEvent(ev Event) { s.mu.Lock(); s.evs = append(s.evs, ev); s.mu.Unlock() }
func (s *seen) n() int           { s.mu.Lock(); defer s.mu.Unlock(); return len(s.evs) }

// txRecorder writes a record of every event it sees in the event's
// transaction, and fails for device "bad".
type txRecorder struct{}

func (txRecorder) OnEventTx(tx store.Tx, ev Event) error {
	if ev.DeviceID() == "bad" {
		return errors.New("engine refuses")
	}
	return tx.Put("engine", []byte(ev.DeviceID()), []byte("decided"))
}

func openStore(t *testing.T) store.Store {
	t.Helper()
	db, err := store.Open(filepath.Join(t.TempDir(), "x.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// TestPublishTx: a transactional event reaches the TxSubscriber inside the
// transaction (its write commits with the event's), the Subscribers after
// the commit; a TxSubscriber's error aborts the transaction, so neither
// the event's write nor the decision is stored, and no Subscriber hears of
// it.
func TestPublishTx(t *testing.T) {
	db := openStore(t)
	f := &Feed{}
	after := &seen{}
	f.Subscribe(after)
	f.SubscribeTx(txRecorder{})
	ev := Update{Base: Base{ID: "dev-1", At: time.Now()}, Event: wire.Event{Code: wire.EvHealthOK}}
	err := db.Update(context.Background(), func(tx store.Tx) error {
		if err := tx.Put("timeline", []byte("dev-1"), []byte("health ok")); err != nil {
			return err
		}
		if err := f.PublishTx(tx, ev); err != nil {
			return err
		}
		if after.n() != 0 {
			t.Error("a Subscriber heard of the event before the commit")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if after.n() != 1 {
		t.Fatalf("%d events after the commit, want 1", after.n())
	}
	_ = db.View(context.Background(), func(tx store.Tx) error {
		if tx.Get("engine", []byte("dev-1")) == nil || tx.Get("timeline", []byte("dev-1")) == nil {
			t.Error("the event and the decision were not committed together")
		}
		return nil
	})

	bad := Update{Base: Base{ID: "bad", At: time.Now()}}
	err = db.Update(context.Background(), func(tx store.Tx) error {
		if err := tx.Put("timeline", []byte("bad"), []byte("x")); err != nil {
			return err
		}
		return f.PublishTx(tx, bad)
	})
	if err == nil {
		t.Fatal("the TxSubscriber's error did not fail the transaction")
	}
	_ = db.View(context.Background(), func(tx store.Tx) error {
		if tx.Get("timeline", []byte("bad")) != nil {
			t.Error("an aborted event's write was committed")
		}
		return nil
	})
	if after.n() != 1 {
		t.Fatalf("a Subscriber heard of an aborted event")
	}
}

func TestPublishOrderAndNil(t *testing.T) {
	var order []string
	f := &Feed{}
	f.Subscribe(SubscriberFunc(func(Event) { order = append(order, "first") }))
	f.Subscribe(SubscriberFunc(func(Event) { order = append(order, "second") }))
	f.Publish(Connected{Base: Base{ID: "d"}})
	if len(order) != 2 || order[0] != "first" || order[1] != "second" {
		t.Fatalf("order %v", order)
	}
	var none *Feed
	none.Publish(Connected{})
	db := openStore(t)
	if err := db.Update(context.Background(), func(tx store.Tx) error { return none.PublishTx(tx, Connected{}) }); err != nil {
		t.Fatal(err)
	}
}
