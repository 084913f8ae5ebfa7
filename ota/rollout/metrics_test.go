package rollout

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/wire"
)

// Each device counts once in the Recorder's results, rollbacks and health
// failures, even when one result follows another: a device that fails its
// health check and then rolls back is one failed result, one rollback and
// one health failure.
func TestRecorderCountsEachDeviceOnce(t *testing.T) {
	e := newEnv(t)
	e.release("1.1.0", 0, "esp32-v2")
	e.fleetOf(map[string]int{"rest": 4})
	e.create("id: r1\nrelease: 1.1.0\nwaves: [{percent: [100]}]\nprobation: 1m\nthresholds: {min_sample: 100}\n")
	e.start("r1")
	v := e.runToEnd("r1", 30*time.Minute, map[string]behaviour{"rest-000": failsHealth, "rest-001": rollsBack})
	if v.State != StateCompleted && v.State != StatePaused || v.Counts["succeeded"] != 2 || v.Counts["rolled_back"] != 2 {
		t.Fatalf("%s: %v", v.State, v.Counts)
	}
	results := map[string]int{}
	for k, n := range e.rec.results {
		if !strings.HasPrefix(k, "alarm/") {
			results[k] = n
		}
	}
	if got, want := fmt.Sprint(results), "map[failed/esp32-v2:1 rolled_back/esp32-v2:1 succeeded/esp32-v2:2]"; got != want {
		t.Errorf("results %s, want %s", got, want)
	}
	if e.rec.rollbacks != 2 || e.rec.health != 1 {
		t.Errorf("%d rollbacks, %d health failures; want 2 and 1", e.rec.rollbacks, e.rec.health)
	}
}

// A device that rolls back in probation while offline (no broker) comes
// back with a birth on the old firmware, and only then sends its queued
// reports: health failed, rollback completed with error health_check. The
// broker judges the rollback from the birth first; the report still makes
// it a health failure, counted once (found by test/e2e's scenario 3, where
// the order of the two decided whether the rollout paused by its rollback
// or its health threshold).
func TestRollbackSeenInBirthThenReportedAsHealth(t *testing.T) {
	e := newEnv(t)
	e.release("1.1.0", 0, "esp32-v2")
	e.fleetOf(map[string]int{"rest": 1})
	e.create("id: r1\nrelease: 1.1.0\nwaves: [{percent: [100]}]\nprobation: 30m\n")
	e.start("r1")
	e.pass()
	id := "rest-000"
	e.walk(id, healthy, true)
	e.pass()
	if d := e.device("r1", id); d.State != "trial" {
		t.Fatalf("before the rollback: %+v", d)
	}
	e.disconnect(id)
	e.connect(id)
	e.birth(id, "1.0.0", wire.BootRollback, wire.StateRolledBack, 0, 0)
	e.pass()
	if d := e.device("r1", id); d.State != "rolled_back" || !d.Broker || d.Health {
		t.Fatalf("after the birth: %+v", d)
	}
	e.event(id, wire.EvHealthFailed, wire.ErrCodeHealthCheck)
	e.event(id, wire.EvRollbackTriggered, wire.ErrCodeHealthCheck)
	e.event(id, wire.EvRollbackCompleted, wire.ErrCodeHealthCheck)
	e.event(id, wire.EvRollbackCompleted, wire.ErrCodeHealthCheck) // delivered twice
	e.pass()
	d := e.device("r1", id)
	if d.State != "rolled_back" || !d.Health || !strings.Contains(d.Reason, "health_check") {
		t.Errorf("after the report: %+v", d)
	}
	if w := e.get("r1").Waves[0]; w.HealthFailures != 1 || w.Rollbacks != 1 {
		t.Errorf("wave %+v", w)
	}
	if e.rec.rollbacks != 1 || e.rec.health != 1 || e.rec.results["rolled_back/esp32-v2"] != 1 {
		t.Errorf("%d rollbacks, %d health failures, results %v; want 1, 1, one rolled_back", e.rec.rollbacks, e.rec.health, e.rec.results)
	}
}

// A device whose update ends without success has the release withdrawn
// (the empty offer, and no current offer to send when it subscribes
// again), so it cannot take the release again behind the rollout's back;
// the devices that succeeded keep theirs.
func TestFailedDevicesHaveTheReleaseWithdrawn(t *testing.T) {
	e := newEnv(t)
	e.release("1.1.0", 0, "esp32-v2")
	e.fleetOf(map[string]int{"rest": 4})
	e.create("id: r1\nrelease: 1.1.0\nwaves: [{percent: [100]}]\nprobation: 1m\nthresholds: {min_sample: 100}\n")
	e.start("r1")
	e.runToEnd("r1", 30*time.Minute, map[string]behaviour{"rest-000": failsHealth, "rest-001": rollsBack})
	for id, want := range map[string]string{"rest-000": "rolled_back", "rest-001": "rolled_back", "rest-002": "succeeded", "rest-003": "succeeded"} {
		d := e.device("r1", id)
		_, current := e.dlv.Current(id)
		last, _ := e.snd.lastOffer(id)
		switch {
		case d.State != want:
			t.Errorf("%s: %s, want %s", id, d.State, want)
		case want == "succeeded" && (!current || last.RolloutID != "r1"):
			t.Errorf("%s succeeded but its offer is gone (current %v, last sent %q)", id, current, last.RolloutID)
		case want != "succeeded" && (current || last.RolloutID != ""):
			t.Errorf("%s %s but still offered (current %v, last sent %q)", id, want, current, last.RolloutID)
		}
	}
}
