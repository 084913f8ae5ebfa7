package rollout

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/wire"
)

const cascade = `
id: r1
release: 1.1.0
waves:
  - {name: canary, groups: [canary]}
  - {name: pilot, groups: [pilot]}
  - {percent: [10, 50, 100]}
bake: 10m
success: 100%
probation: 5m
`

// walkAll takes every device offered in rollout id (and not yet walked)
// through its update with behaviour b (bad for the IDs it names).
func (e *env) walkAll(id string, walked map[string]bool, bad map[string]behaviour) {
	for _, d := range e.snd.offered() {
		if walked[d] {
			continue
		}
		walked[d] = true
		b := bad[d]
		e.walk(d, b, true)
	}
}

// runToEnd walks devices and advances time until rollout id finishes or
// the clock moved limit.
func (e *env) runToEnd(id string, limit time.Duration, bad map[string]behaviour) *View {
	walked := map[string]bool{}
	for spent := time.Duration(0); spent < limit; spent += time.Minute {
		e.pass()
		e.walkAll(id, walked, bad)
		e.clk.Advance(time.Minute)
		e.pass()
		if v := e.get(id); finished(v.State) || v.State == StatePaused {
			return v
		}
	}
	return e.get(id)
}

func TestCascadeCompletes(t *testing.T) {
	e := newEnv(t)
	e.release("1.1.0", 0, "esp32-v2")
	ids := e.fleetOf(map[string]int{"canary": 3, "pilot": 5, "rest": 40})
	v := e.create(cascade)
	if v.State != StateDraft || v.Devices != 48 || len(v.Waves) != 5 || v.Waves[0].Devices != 3 || v.Waves[1].Devices != 5 {
		t.Fatalf("created %+v", v)
	}
	if n := v.Waves[2].Devices + v.Waves[3].Devices + v.Waves[4].Devices; n != 40 {
		t.Fatalf("percentage waves hold %d of the 40 others", n)
	}
	e.pass()
	if got := e.snd.offered(); len(got) != 0 {
		t.Fatalf("a draft offered %v", got)
	}
	e.start("r1")
	e.pass()
	// Only the canary is offered first.
	if got := e.snd.offered(); !slices.Equal(got, []string{"canary-000", "canary-001", "canary-002"}) {
		t.Fatalf("offered first %v", got)
	}
	walked := map[string]bool{}
	e.walkAll("r1", walked, nil)
	e.pass()
	if w := e.get("r1").Waves[0]; w.Counts["trial"] != 3 || w.State != WaveRunning {
		t.Fatalf("canary %+v", w)
	}
	// Probation (5m), then the bake (10m), and only then the pilot.
	e.advance(5*time.Minute, time.Minute)
	w := e.get("r1").Waves[0]
	if w.Counts["succeeded"] != 3 || w.State != WaveBaking {
		t.Fatalf("after probation %+v", w)
	}
	e.advance(9*time.Minute, time.Minute)
	if n := len(e.snd.offered()); n != 3 {
		t.Fatalf("%d offered during the bake", n)
	}
	v = e.runToEnd("r1", 3*time.Hour, nil)
	if v.State != StateCompleted || v.Counts["succeeded"] != 48 {
		t.Fatalf("ended %+v", v)
	}
	for _, id := range ids {
		if st, _ := e.reg.Get(id); st.Status.Firmware != "1.1.0" {
			t.Errorf("%s runs %s", id, st.Status.Firmware)
		}
	}
	kinds := e.evs.kinds()
	want := []string{"created", "started", "wave_started:canary", "wave_reached:canary", "wave_passed:canary", "wave_started:pilot"}
	if len(kinds) < len(want) || !slices.Equal(kinds[:len(want)], want) || kinds[len(kinds)-1] != "completed" {
		t.Fatalf("events %v", kinds)
	}
	if e.rec.results["succeeded/esp32-v2"] != 48 {
		t.Fatalf("recorded %v", e.rec.results)
	}
	// Each device was offered exactly once.
	for _, id := range ids {
		if n := len(e.snd.offers[id]); n != 1 {
			t.Errorf("%s offered %d times", id, n)
		}
	}
}

// Cohorts come from the rollout and device IDs: the same in every plan.
func TestCohortsAreStable(t *testing.T) {
	e := newEnv(t)
	e.release("1.1.0", 0, "esp32-v2")
	e.fleetOf(map[string]int{"canary": 1, "rest": 300})
	spec := strings.Replace(cascade, "  - {name: pilot, groups: [pilot]}\n", "", 1)
	p1, err := e.eng.PlanSpec([]byte(spec))
	if err != nil {
		t.Fatal(err)
	}
	e.fleetOf(map[string]int{"more": 50}) // the fleet grows; the old devices keep their cohorts
	p2, err := e.eng.PlanSpec([]byte(spec))
	if err != nil {
		t.Fatal(err)
	}
	if p1.Provisional || p1.Waves[1].Devices == 0 {
		t.Fatalf("plan %+v", p1)
	}
	v := e.create(spec)
	for i := 1; i < 4; i++ {
		if p1.Waves[i].Devices > p2.Waves[i].Devices || v.Waves[i].Devices != p2.Waves[i].Devices {
			t.Fatalf("wave %d: %d, then %d, created %d", i, p1.Waves[i].Devices, p2.Waves[i].Devices, v.Waves[i].Devices)
		}
	}
	// 10 % of 350, roughly.
	if n := p2.Waves[1].Devices; n < 15 || n > 60 {
		t.Fatalf("10%% cohort holds %d of 350", n)
	}
	for _, m := range e.eng.runs["r1"].members {
		c := cohort("r1", m.id)
		want := 1
		switch {
		case strings.HasPrefix(m.id, "canary"):
			want = 0
		case c >= 5000:
			want = 3
		case c >= 1000:
			want = 2
		}
		if int(m.wave) != want {
			t.Fatalf("%s (cohort %d) in wave %d", m.id, c, m.wave)
		}
	}
}

const badCanary = `
id: r1
release: 1.1.0
waves:
  - {name: canary, groups: [canary]}
  - {percent: [100]}
bake: 1m
probation: 1m
thresholds: {min_sample: 10}
`

// A release whose canary fails health pauses at the canary with the
// reason; nobody else is offered; resume after a fix proceeds.
func TestBadCanaryPausesAndResumes(t *testing.T) {
	e := newEnv(t)
	e.release("1.1.0", 0, "esp32-v2")
	e.fleetOf(map[string]int{"canary": 5, "rest": 20})
	e.create(badCanary)
	e.start("r1")
	e.pass()
	bad := map[string]behaviour{"canary-000": failsHealth, "canary-001": failsHealth}
	v := e.runToEnd("r1", time.Hour, bad)
	if v.State != StatePaused || v.PausedBy != PauseThreshold || !strings.Contains(v.Reason, "wave canary: ") || !strings.Contains(v.Reason, " 40% (2 of 5) passed the pause threshold") {
		t.Fatalf("state %s (%s): %s", v.State, v.PausedBy, v.Reason)
	}
	for _, id := range e.snd.offered() {
		if !strings.HasPrefix(id, "canary") {
			t.Fatalf("%s was offered outside the canary", id)
		}
	}
	if len(v.Alarms) == 0 || v.Alarms[len(v.Alarms)-1].Level != "pause" {
		t.Fatalf("alarms %+v", v.Alarms)
	}
	// Paused: time passes, nothing new is offered.
	e.advance(time.Hour, 10*time.Minute)
	if n := len(e.snd.offered()); n != 5 {
		t.Fatalf("%d offered while paused", n)
	}
	// The operator resumes (the failing devices were dealt with): the
	// results so far are acknowledged, the rollout goes on.
	if _, err := e.eng.Resume("bob", "r1", e.commit); err != nil {
		t.Fatal(err)
	}
	v = e.runToEnd("r1", 3*time.Hour, nil)
	if v.State != StateCompleted || v.Counts["succeeded"] != 23 || v.Counts["failed"]+v.Counts["rolled_back"] != 2 {
		t.Fatalf("after resume %+v", v.Counts)
	}
}

// A breach in one hardware variant of a wave names that slice.
func TestSliceBreach(t *testing.T) {
	e := newEnv(t)
	e.release("1.1.0", 0, "esp32-v2", "esp32-v3")
	var ds []dev
	for i := 0; i < 40; i++ {
		hw := "esp32-v2"
		if i%4 == 0 {
			hw = "esp32-v3"
		}
		ds = append(ds, dev{id: fmt.Sprintf("d%02d", i), hw: hw, region: "eu", firmware: "1.0.0"})
	}
	e.devices(ds...)
	e.create(`
id: r1
release: 1.1.0
waves: [{percent: [100]}]
thresholds: {min_sample: 10, rollback: {warn: 10%, pause: 30%}}
`)
	e.start("r1")
	bad := map[string]behaviour{}
	for i := 0; i < 40; i += 4 {
		if i < 24 {
			bad[fmt.Sprintf("d%02d", i)] = rollsBack // 6 of the 10 v3 devices: 15 % of the wave, 60 % of the slice
		}
	}
	v := e.runToEnd("r1", time.Hour, bad)
	if v.State != StatePaused || !strings.Contains(v.Reason, "hardware esp32-v3: rollbacks 60% (6 of 10)") {
		t.Fatalf("%s: %s; alarms %+v", v.State, v.Reason, v.Alarms)
	}
	warned := false
	for _, a := range v.Alarms {
		if a.Level == "warn" && a.Slice == "" && a.Kind == "rollback" {
			warned = true
		}
	}
	if !warned {
		t.Fatalf("the whole wave's 15%% did not warn: %+v", v.Alarms)
	}
	if e.rec.rollbacks != 6 {
		t.Fatalf("%d rollbacks recorded", e.rec.rollbacks)
	}
}

// Devices that never say they fail: a reconnect loop, silence after the
// reboot, a Last Will during the trial.
func TestBrokerObservedFailures(t *testing.T) {
	e := newEnv(t)
	e.release("1.1.0", 0, "esp32-v2")
	e.fleetOf(map[string]int{"rest": 4})
	e.create("id: r1\nrelease: 1.1.0\nwaves: [{percent: [100]}]\nsilence: 10m\nprobation: 30m\nthresholds: {min_sample: 100}\n")
	e.start("r1")
	e.pass()
	e.walk("rest-000", bootLoop, true)
	e.walk("rest-001", staysAway, true)
	e.walk("rest-002", healthy, true)
	e.walk("rest-003", healthy, true)
	e.pass()
	// rest-002's connection drops and its Will fires during the trial.
	e.reg.WillFired("rest-002", e.gens["rest-002"])
	e.disconnect("rest-002")
	e.advance(11*time.Minute, time.Minute)
	for id, want := range map[string]string{"rest-000": "reconnect loop", "rest-001": "silent for 10m0s", "rest-002": "Last Will"} {
		d := e.device("r1", id)
		if d.State != "failed" || !d.Health || !d.Broker || !strings.Contains(d.Reason, want) {
			t.Errorf("%s: %+v", id, d)
		}
	}
	if d := e.device("r1", "rest-003"); d.State != "trial" {
		t.Errorf("rest-003: %+v", d)
	}
	e.advance(20*time.Minute, time.Minute)
	if d := e.device("r1", "rest-003"); d.State != "succeeded" {
		t.Errorf("rest-003 after probation: %+v", d)
	}
	if w := e.get("r1").Waves[0]; w.HealthFailures != 3 || w.HealthRate != 7500 {
		t.Errorf("wave %+v", w)
	}
}

// Offers carry install mode 1 with a window; install commands go out only
// inside each device's local window, on its days; downloads happen any time.
func TestWindowsInLocalTime(t *testing.T) {
	e := newEnv(t)
	e.release("1.1.0", 0, "esp32-v2")
	// t0 is Wednesday 10:00 UTC. Berlin (tag, UTC+1 in December), a device
	// at UTC+5:30 from its birth, one at UTC-5 from its birth.
	e.devices(
		dev{id: "berlin", hw: "esp32-v2", firmware: "1.0.0", tags: map[string]string{"tz": "Europe/Berlin"}, offset: 600},
		dev{id: "india", hw: "esp32-v2", firmware: "1.0.0", offset: 330},
		dev{id: "ny", hw: "esp32-v2", firmware: "1.0.0", offset: -300},
	)
	e.create(`
id: r1
release: 1.1.0
waves: [{percent: [100]}]
window: {start: "02:00", end: "03:00", days: [thu]}
deadline: 3d
`)
	e.start("r1")
	e.pass()
	for _, id := range []string{"berlin", "india", "ny"} {
		o, ok := e.snd.lastOffer(id)
		if !ok || o.InstallMode != wire.InstallOnCommand {
			t.Fatalf("%s offer %+v", id, o)
		}
		e.walk(id, healthy, false) // downloads and verifies now, outside any window
	}
	e.pass()
	if e.get("r1").Counts["verified"] != 3 {
		t.Fatal(e.get("r1").Counts)
	}
	// Each device's Thursday 02:00 local: India 20:30 UTC Wednesday, Berlin
	// 01:00 UTC Thursday, New York 07:00 UTC Thursday.
	opens := map[string]time.Time{
		"india":  time.Date(2026, 12, 2, 20, 30, 0, 0, time.UTC),
		"berlin": time.Date(2026, 12, 3, 1, 0, 0, 0, time.UTC),
		"ny":     time.Date(2026, 12, 3, 7, 0, 0, 0, time.UTC),
	}
	for e.clk.Now().Before(time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)) {
		e.clk.Advance(5 * time.Minute)
		e.pass()
		now := e.clk.Now()
		for id, open := range opens {
			got := len(e.snd.commandsTo(id)) > 0
			inWindow := !now.Before(open) && now.Before(open.Add(time.Hour))
			if got && now.Before(open) {
				t.Fatalf("%s got an install command at %s, before its window at %s", id, now, open)
			}
			if inWindow && !got {
				t.Fatalf("%s got no install command at %s, inside its window", id, now)
			}
		}
	}
	for id, open := range opens {
		c := e.snd.commandsTo(id)[0]
		if c.Verb != wire.VerbInstall || c.RolloutID != "r1" || c.NotAfter != uint64(open.Add(time.Hour).Unix()) {
			t.Errorf("%s: %+v (window closes %s)", id, c, open.Add(time.Hour))
		}
	}
	// Friday and the days after: no window day, no more commands for a
	// device that still has not installed.
	n := len(e.snd.commandsTo("ny"))
	e.advance(24*time.Hour, 10*time.Minute)
	if len(e.snd.commandsTo("ny")) != n {
		t.Fatal("install commands outside the window days")
	}
}
