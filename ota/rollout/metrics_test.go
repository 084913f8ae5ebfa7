package rollout

import (
	"fmt"
	"strings"
	"testing"
	"time"
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
