package test

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/wire"
)

// TestFleetEventsCarryRolloutAndAreOrdered: update events on the fleet
// events topic carry the rollout ID and the download progress, and the
// stream is in time order even when many devices report at once.
func TestFleetEventsCarryRolloutAndAreOrdered(t *testing.T) {
	b := startBroker(t)
	key, pub := newKey(t)
	b.trustKey(pub)
	rel := b.release(makeFirmware(t, key, "2.0.0", []string{"esp32-v2"}, 4096))
	const n = 8
	var ids, toks []string
	for i := range n {
		id := fmt.Sprintf("ev-%d", i)
		ids = append(ids, id)
		toks = append(toks, b.register(id, "device", "", map[string]any{"hardware": "esp32-v2"}))
	}
	rollout := b.offer(rel.ID, ids...)
	b.addOperator("watch", "observer", "observer password 1")
	ob := b.operator("watch", "observer password 1")
	if rc := ob.subscribe("dm/fleet/events"); rc >= 0x80 {
		t.Fatalf("subscribe: 0x%02x", rc)
	}
	var wg sync.WaitGroup
	for i, id := range ids {
		dev := b.device(id, toks[i])
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := uint8(10); p <= 100; p += 10 {
				code := wire.EvDownloadProgress
				if p == 100 {
					code = wire.EvDownloadCompleted
				}
				if rc := dev.publish("dm/"+id+"/ev", wire.Event{Code: code, RolloutID: rollout, TargetVersion: "2.0.0", Progress: p}.Encode()); rc != 0 {
					t.Errorf("%s event: 0x%02x", id, rc)
					return
				}
			}
		}()
	}
	wg.Wait()
	type fev struct {
		Type     string    `json:"type"`
		ID       string    `json:"id"`
		Time     time.Time `json:"time"`
		Rollout  string    `json:"rollout"`
		Progress *uint8    `json:"progress"`
	}
	var evs []fev
	eventually(t, 10*time.Second, func() error {
		ob.mu.Lock()
		defer ob.mu.Unlock()
		evs = evs[:0]
		for _, m := range ob.msgs {
			var e fev
			if err := json.Unmarshal(m.Payload, &e); err != nil {
				return err
			}
			evs = append(evs, e)
		}
		updates := 0
		for _, e := range evs {
			if e.Type == "update.download.progress" || e.Type == "update.download.completed" {
				updates++
			}
		}
		if updates < n*10 {
			return fmt.Errorf("%d update events of %d", updates, n*10)
		}
		return nil
	})
	for i, e := range evs {
		if i > 0 && e.Time.Before(evs[i-1].Time) {
			t.Fatalf("event %d (%s %s at %v) is before event %d (at %v)", i, e.Type, e.ID, e.Time, i-1, evs[i-1].Time)
		}
		if e.Type == "update.download.progress" || e.Type == "update.download.completed" {
			if e.Rollout != rollout || e.Progress == nil || *e.Progress == 0 {
				t.Fatalf("update event without rollout or progress: %+v", e)
			}
		}
	}
}
