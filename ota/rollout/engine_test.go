package rollout

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/store"
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
	for _, id := range e.snd.everOffered() {
		if !strings.HasPrefix(id, "canary") {
			t.Fatalf("%s was offered outside the canary", id)
		}
	}
	// The failed canaries had the release withdrawn (empty offer).
	if n := len(e.snd.offered()); n != 3 {
		t.Fatalf("%d canaries still offered the release after the 2 failures", n)
	}
	if len(v.Alarms) == 0 || v.Alarms[len(v.Alarms)-1].Level != "pause" {
		t.Fatalf("alarms %+v", v.Alarms)
	}
	// Paused: time passes, nothing new is offered.
	e.advance(time.Hour, 10*time.Minute)
	if n := len(e.snd.everOffered()); n != 5 {
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
	if e.rec.rollbacks != 6 || e.rec.results["alarm/rollback/warn"] != 2 /* the wave and region eu, all of it */ || e.rec.results["alarm/rollback/pause"] != 1 {
		t.Fatalf("%d rollbacks recorded; %v", e.rec.rollbacks, e.rec.results)
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

// The schedule: nothing before its start; at its end with stop no new
// offers; with cancel, devices that have not installed get the cancel.
func TestSchedule(t *testing.T) {
	for _, atEnd := range []string{AtEndStop, AtEndCancel} {
		t.Run(atEnd, func(t *testing.T) {
			e := newEnv(t)
			e.release("1.1.0", 0, "esp32-v2")
			e.fleetOf(map[string]int{"rest": 10})
			start, end := t0.Add(time.Hour), t0.Add(2*time.Hour)
			e.create(fmt.Sprintf("id: r1\nrelease: 1.1.0\nwaves: [{percent: [100]}]\nrate: {per_minute: 2}\nschedule: {start: %q, end: %q, at_end: %s}\n",
				start.Format(time.RFC3339), end.Format(time.RFC3339), atEnd))
			if v := e.start("r1"); v.State != StateScheduled || v.Next == nil || v.Next.What != "start" {
				t.Fatalf("started %+v", v)
			}
			e.advance(59*time.Minute, time.Minute)
			if n := len(e.snd.offered()); n != 0 {
				t.Fatalf("%d offered before the start", n)
			}
			e.advance(time.Minute, time.Minute)
			if v := e.get("r1"); v.State != StateRunning || len(e.snd.offered()) != 2 {
				t.Fatalf("at the start: %s, %d offered", v.State, len(e.snd.offered()))
			}
			// Two a minute: by the end some have installed, some are
			// downloading, some not offered.
			walked := map[string]bool{}
			for e.clk.Now().Before(end.Add(-time.Minute)) {
				e.clk.Advance(time.Minute)
				e.pass()
				for _, id := range e.snd.offered() {
					if !walked[id] && len(walked) < 4 {
						walked[id] = true
						e.walk(id, healthy, true)
					} else if !walked[id] && !walked[id+"-dl"] {
						walked[id+"-dl"] = true
						e.event(id, wire.EvDownloadStarted, 0)
					}
				}
			}
			offered := len(e.snd.offered())
			e.advance(2*time.Minute, time.Minute)
			v := e.get("r1")
			if v.State != StateEnded || !strings.Contains(v.Reason, "at_end: "+atEnd) {
				t.Fatalf("at the end: %s %s", v.State, v.Reason)
			}
			e.advance(10*time.Minute, time.Minute)
			states := e.states("r1")
			installed := 0
			for id, st := range states {
				o, _ := e.snd.lastOffer(id)
				switch {
				case walked[id]:
					installed++
					if st == "cancelled" || o.RolloutID == "" {
						t.Errorf("%s had installed and was cancelled", id)
					}
				case atEnd == AtEndCancel && st != "cancelled":
					t.Errorf("%s is %s after the end with cancel", id, st)
				case atEnd == AtEndCancel && len(e.snd.offers[id]) > 0 && o.RolloutID != "":
					t.Errorf("%s was offered and got no empty offer", id)
				case atEnd == AtEndStop && (st == "cancelled" || len(e.snd.offers[id]) > 1):
					t.Errorf("%s: %s with stop", id, st)
				}
			}
			if installed != 4 || len(e.snd.offered()) > offered {
				t.Fatalf("%d installed; %d offered after the end (%d before)", installed, len(e.snd.offered()), offered)
			}
		})
	}
}

// A rollout that needs approval cannot start until another operator
// approves it.
func TestApproval(t *testing.T) {
	e := newEnv(t)
	e.release("1.1.0", 0, "esp32-v2")
	e.fleetOf(map[string]int{"rest": 3})
	if v := e.create("id: r1\nrelease: 1.1.0\nwaves: [{percent: [100]}]\napproval: true\n"); v.State != StateAwaitingApproval {
		t.Fatal(v.State)
	}
	if _, err := e.eng.Start("alice", "r1", e.commit); !errors.Is(err, ErrState) || !strings.Contains(err.Error(), "needs approval") {
		t.Fatalf("start before approval: %v", err)
	}
	if _, err := e.eng.Approve("alice", "r1", e.commit); !errors.Is(err, ErrForbidden) {
		t.Fatalf("approval by the creator: %v", err)
	}
	e.pass()
	if len(e.snd.offered()) != 0 {
		t.Fatal("offered before approval")
	}
	v, err := e.eng.Approve("bob", "r1", e.commit)
	if err != nil || v.State != StateDraft || v.Approved == nil || v.Approved.By != "bob" {
		t.Fatalf("approve: %+v %v", v, err)
	}
	if _, err := e.eng.Approve("carol", "r1", e.commit); !errors.Is(err, ErrState) {
		t.Fatalf("second approval: %v", err)
	}
	e.start("r1")
	e.pass()
	if len(e.snd.offered()) != 3 {
		t.Fatal(e.snd.offered())
	}
}

// Abort: devices that had not installed get the cancel; the others are
// reported and their results still recorded.
func TestAbort(t *testing.T) {
	e := newEnv(t)
	e.release("1.1.0", 0, "esp32-v2")
	e.fleetOf(map[string]int{"rest": 6})
	e.create("id: r1\nrelease: 1.1.0\nwaves: [{percent: [100]}]\nrate: {per_minute: 5}\nprobation: 1m\n")
	e.start("r1")
	e.pass()
	offered := e.snd.offered()                       // 5 of 6
	e.walk(offered[0], healthy, true)                // trial
	e.event(offered[1], wire.EvDownloadStarted, 0)   // downloading
	e.event(offered[2], wire.EvDownloadStarted, 0)   // installing
	e.event(offered[2], wire.EvDownloadCompleted, 0) //
	e.event(offered[2], wire.EvInstallStarted, 0)    //
	res, err := e.eng.Abort("alice", "r1", "", e.commit)
	if err != nil {
		t.Fatal(err)
	}
	if res.View.State != StateAborted || res.Cancelled != 4 || len(res.Installing) != 2 {
		t.Fatalf("abort: %s cancelled %d installing %+v", res.View.State, res.Cancelled, res.Installing)
	}
	for _, id := range offered[1:2] {
		if o, _ := e.snd.lastOffer(id); o.RolloutID != "" {
			t.Errorf("%s got no cancel", id)
		}
	}
	if o, _ := e.snd.lastOffer(offered[0]); o.RolloutID != "r1" {
		t.Errorf("%s, in its trial, was cancelled", offered[0])
	}
	// The one in its trial finishes and is recorded; no new offers.
	e.advance(5*time.Minute, time.Minute)
	if d := e.device("r1", offered[0]); d.State != "succeeded" {
		t.Errorf("%+v", d)
	}
	if len(e.snd.offers) != 5 {
		t.Errorf("offers after the abort: %d devices", len(e.snd.offers))
	}
	if _, err := e.eng.Abort("alice", "r1", "", e.commit); !errors.Is(err, ErrState) {
		t.Fatalf("second abort: %v", err)
	}
	// The devices are free for another rollout once the aborted one is done with them.
	if h, ok := e.eng.Holder(offered[1]); ok {
		t.Fatalf("%s still held by %s", offered[1], h)
	}
	if h, ok := e.eng.Holder(offered[2]); !ok || h != "r1" {
		t.Fatalf("%s, installing, not held: %q", offered[2], h)
	}
}

// Rate: never more than per_minute started in any minute nor in_flight at
// once; the ramp raises the rate as devices succeed.
func TestRate(t *testing.T) {
	e := newEnv(t)
	e.release("1.1.0", 0, "esp32-v2")
	e.fleetOf(map[string]int{"rest": 200})
	e.create("id: r1\nrelease: 1.1.0\nwaves: [{percent: [100]}]\nprobation: 1s\nrate: {per_minute: 4, in_flight: 30, ramp: {factor: 2, every_succeeded: 8, max: 25}}\n")
	e.start("r1")
	var starts []time.Time
	seen := map[string]bool{}
	maxInFlight := 0
	for i := 0; i < 200 && e.get("r1").State != StateCompleted; i++ {
		e.pass()
		for _, id := range e.snd.offered() {
			if !seen[id] {
				seen[id] = true
				starts = append(starts, e.clk.Now())
			}
		}
		v := e.get("r1")
		maxInFlight = max(maxInFlight, v.Rate.InFlight)
		if v.Rate.InFlight > 30 {
			t.Fatalf("%d in flight", v.Rate.InFlight)
		}
		// Five devices finish every 20 s: the in-flight limit binds.
		n := 0
		for _, id := range e.snd.offered() {
			if d := e.device("r1", id); d.State == "offered" && n < 5 {
				n++
				e.walk(id, healthy, true)
			}
		}
		e.clk.Advance(20 * time.Second)
	}
	// No 60-second window holds more starts than the largest rate (25).
	perMinute := map[int]int{}
	for i, s := range starts {
		n := 0
		for _, u := range starts[i:] {
			if u.Sub(s) < time.Minute {
				n++
			}
		}
		if n > 25 {
			t.Fatalf("%d started within a minute from %s", n, s)
		}
		perMinute[int(s.Sub(t0)/time.Minute)]++
	}
	if perMinute[0] != 4 {
		t.Fatalf("first minute: %d started, want 4", perMinute[0])
	}
	// The ramp: later minutes start more than the first.
	most := 0
	for _, n := range perMinute {
		most = max(most, n)
	}
	if most <= 4 || maxInFlight != 30 || e.get("r1").State != StateCompleted {
		t.Fatalf("the ramp did not raise the rate: per minute %v, in flight at most %d", perMinute, maxInFlight)
	}
}

// Version rules skip devices with their reason; an old device takes the
// stepping stone first, then the release.
func TestVersionRulesAndUpgradePath(t *testing.T) {
	e := newEnv(t)
	e.release("1.1.0", 1, "esp32-v2")
	e.release("1.2.4", 1, "esp32-v2")
	e.devices(
		dev{id: "old", hw: "esp32-v2", firmware: "1.0.3"},
		dev{id: "mid", hw: "esp32-v2", firmware: "1.1.5"},
		dev{id: "current", hw: "esp32-v2", firmware: "1.2.4"},
		dev{id: "newer", hw: "esp32-v2", firmware: "1.2.5"},
		dev{id: "major", hw: "esp32-v2", firmware: "0.9.0"},
		dev{id: "secure", hw: "esp32-v2", firmware: "1.1.9", secure: 2},
		dev{id: "other-hw", hw: "rp2040", firmware: "1.0.0"},
		dev{id: "unborn", hw: "esp32-v2"},
		dev{id: "reported-hw"},
		dev{id: "disagrees", hw: "esp32-v2"},
	)
	// registered without hardware: what it runs on is what its birth says;
	// registered with hardware: that, whatever its birth says
	for id, hw := range map[string]string{"reported-hw": "esp32-v2", "disagrees": "rp2040"} {
		e.connect(id)
		if err := e.reg.Birth(id, wire.Birth{FirmwareVersion: "1.0.3", Hardware: hw, OTAState: wire.StateIdle}); err != nil {
			t.Fatal(err)
		}
	}
	spec := "id: r1\nrelease: 1.2.4\nwaves: [{percent: [100]}]\nupgrade_path: [1.1.0]\nprobation: 1m\n"
	p, err := e.eng.PlanSpec([]byte(spec))
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]string{}
	for _, g := range p.Skipped {
		for _, id := range g.Examples {
			reasons[id] = g.Reason
		}
	}
	for id, want := range map[string]string{
		"current":  "already runs 1.2.4",
		"newer":    "downgrade",
		"major":    "major upgrade",
		"secure":   "secure version",
		"other-hw": "wrong hardware",
	} {
		if !strings.Contains(reasons[id], want) {
			t.Errorf("%s skipped for %q, want %q", id, reasons[id], want)
		}
	}
	if p.Devices != 5 || p.Steps[e.rels["1.1.0"].ID] != 3 {
		t.Fatalf("plan %+v", p)
	}
	e.create(spec)
	e.start("r1")
	e.pass()
	if got := e.target("old"); got != "1.1.0" {
		t.Fatalf("old offered %s first", got)
	}
	if o, _ := e.snd.lastOffer("old"); o.RolloutID != "r1~s0" {
		t.Fatalf("stepping stone offered as %q", o.RolloutID)
	}
	for _, id := range []string{"reported-hw", "disagrees"} {
		if got := e.target(id); got != "1.1.0" {
			t.Fatalf("%s offered %q first (%+v)", id, got, e.device("r1", id))
		}
	}
	if got := e.target("mid"); got != "1.2.4" {
		t.Fatalf("mid offered %s", got)
	}
	// unborn had no version when planned; it is offered and judged by the
	// device itself.
	if _, ok := e.snd.lastOffer("unborn"); !ok {
		t.Fatal("unborn not offered")
	}
	e.walk("old", healthy, true)
	e.walk("mid", healthy, true)
	e.walk("unborn", rollsBack, true)
	e.advance(2*time.Minute, time.Minute)
	if d := e.device("r1", "old"); d.State != "offered" || d.Target != e.rels["1.2.4"].ID || d.OfferID != "r1" {
		t.Fatalf("old after the stone: %+v", d)
	}
	e.walk("old", healthy, true)
	e.advance(2*time.Minute, time.Minute)
	for id, want := range map[string]string{"old": "succeeded", "mid": "succeeded", "unborn": "rolled_back", "current": "skipped"} {
		if d := e.device("r1", id); d.State != want {
			t.Errorf("%s: %+v", id, d)
		}
	}
	if v, _ := e.reg.Get("old"); v.Status.Firmware != "1.2.4" {
		t.Errorf("old runs %s", v.Status.Firmware)
	}
}

// A failed download is offered again under a new rollout ID (the agent
// does not retry the same rollout and image) until the retries run out.
func TestRetries(t *testing.T) {
	e := newEnv(t)
	e.release("1.1.0", 0, "esp32-v2")
	e.fleetOf(map[string]int{"rest": 1})
	e.create("id: r1\nrelease: 1.1.0\nwaves: [{percent: [100]}]\nretries: 2\n")
	e.start("r1")
	var ids []string
	for i := 0; i < 3; i++ {
		e.pass()
		o, _ := e.snd.lastOffer("rest-000")
		ids = append(ids, o.RolloutID)
		e.event("rest-000", wire.EvDownloadStarted, 0)
		e.event("rest-000", wire.EvDownloadFailed, wire.ErrCodeRetriesExhausted)
	}
	e.pass()
	if !slices.Equal(ids, []string{"r1", "r1~t1", "r1~t2"}) {
		t.Fatalf("offers %v", ids)
	}
	d := e.device("r1", "rest-000")
	if d.State != "failed" || !strings.Contains(d.Reason, "no retries left") {
		t.Fatalf("%+v", d)
	}
	// An event about an earlier offer changes nothing.
	if err := e.dlv.Event(t.Context(), "rest-000", wire.Event{Code: wire.EvHealthOK, RolloutID: "r1~t1"}); err != nil {
		t.Fatal(err)
	}
	if d := e.device("r1", "rest-000"); d.State != "failed" {
		t.Fatalf("%+v", d)
	}
}

// A device takes part in one active rollout at a time.
func TestConflicts(t *testing.T) {
	e := newEnv(t)
	e.release("1.1.0", 0, "esp32-v2")
	e.fleetOf(map[string]int{"canary": 2, "rest": 3})
	e.create("id: r1\nrelease: 1.1.0\nwaves: [{groups: [canary]}]\n")
	_, _, err := e.eng.Create("alice", []byte("id: r2\nrelease: 1.1.0\nwaves: [{percent: [100]}]\n"), e.commit)
	se := specErr(t, err)
	if !hasProblem(se, "selector", "canary-000 (in rollout r1)") {
		t.Fatalf("%v", se)
	}
	// A rollout of the others is fine; once r1 is aborted its devices are free.
	e.create("id: r2\nrelease: 1.1.0\nwaves: [{percent: [100]}]\nselector: {devices: [rest-000, rest-001, rest-002]}\n")
	if _, err := e.eng.Abort("alice", "r1", "", e.commit); err != nil {
		t.Fatal(err)
	}
	e.create("id: r3\nrelease: 1.1.0\nwaves: [{groups: [canary]}]\n") // the others are in no wave: not members, no conflict
	if h, _ := e.eng.Holder("canary-001"); h != "r3" {
		t.Fatalf("holder %q", h)
	}
	// The same ID twice.
	_, _, err = e.eng.Create("alice", []byte("id: r3\nrelease: 1.1.0\nwaves: [{groups: [canary]}]\n"), e.commit)
	if se := specErr(t, err); !hasProblem(se, "id", "exists") {
		t.Fatal(se)
	}
}

// Plans that cannot work are refused with every problem, and nothing is
// stored.
func TestImpossiblePlans(t *testing.T) {
	e := newEnv(t)
	e.release("1.1.0", 0, "rp2040")
	e.release("1.2.0", 0, "esp32-v2")
	e.fleetOf(map[string]int{"canary": 2, "rest": 3})
	for name, tc := range map[string]struct {
		spec string
		want map[string]string
	}{
		"group selects nobody": {"release: 1.2.0\nwaves: [{groups: [nosuch]}, {name: c, groups: [canary]}]\n",
			map[string]string{"waves[0]": "selects no device"}},
		"release nobody can take": {"release: 1.1.0\nwaves: [{percent: [100]}]\n",
			map[string]string{"release": "wrong hardware"}},
		"unknown release and stone": {"release: 9.9.9\nwaves: [{percent: [100]}]\nupgrade_path: [8.8.8]\n",
			map[string]string{"release": "no such release", "upgrade_path[0]": "no such release"}},
		"stone not older": {"release: 1.2.0\nwaves: [{percent: [100]}]\nupgrade_path: [1.2.0]\n",
			map[string]string{"upgrade_path[0]": "not older"}},
		"unknown devices": {"release: 1.2.0\nwaves: [{name: x, devices: [ghost]}]\nselector: {devices: [ghost2]}\n",
			map[string]string{"selector.devices": "ghost2 is not registered", "waves[0].devices": "ghost is not selected"}},
	} {
		t.Run(name, func(t *testing.T) {
			for _, run := range []func() error{
				func() error { _, err := e.eng.PlanSpec([]byte(tc.spec)); return err },
				func() error { _, _, err := e.eng.Create("alice", []byte(tc.spec), e.commit); return err },
			} {
				se := specErr(t, run())
				for field, msg := range tc.want {
					if !hasProblem(se, field, msg) {
						t.Errorf("no %q at %q: %v", msg, field, se.Problems)
					}
				}
			}
			if vs, _, _ := e.eng.List(ListFilter{}); len(vs) != 0 {
				t.Fatalf("stored %+v", vs)
			}
		})
	}
}

// Timeouts: a device that does not finish within its deadline.
func TestDeadline(t *testing.T) {
	e := newEnv(t)
	e.release("1.1.0", 0, "esp32-v2")
	e.fleetOf(map[string]int{"rest": 2})
	e.create("id: r1\nrelease: 1.1.0\nwaves: [{percent: [100]}]\ndeadline: 1h\nsilence: 2h\nthresholds: {health: {warn: 100%, pause: 100%}}\n")
	e.start("r1")
	e.pass()
	e.event("rest-000", wire.EvDownloadStarted, 0) // never finishes
	e.walk("rest-001", staysAway, true)            // reboots and stays away (silence is longer than the deadline)
	e.advance(61*time.Minute, 5*time.Minute)
	d0, d1 := e.device("r1", "rest-000"), e.device("r1", "rest-001")
	if d0.State != "timed_out" || d0.Health || d1.State != "timed_out" || !d1.Health {
		t.Fatalf("%+v\n%+v", d0, d1)
	}
	if v := e.get("r1"); v.State != StatePaused || v.PausedBy != PauseSuccess {
		t.Fatalf("%s %s: %s", v.State, v.PausedBy, v.Reason)
	}
}

// auto_resume: a rollout paused by a threshold resumes by itself once
// later results bring the rate under it.
func TestAutoResume(t *testing.T) {
	e := newEnv(t)
	e.release("1.1.0", 0, "esp32-v2")
	e.fleetOf(map[string]int{"rest": 12})
	e.create("id: r1\nrelease: 1.1.0\nwaves: [{percent: [100]}]\nauto_resume: true\nprobation: 1m\nthresholds: {min_sample: 2, rollback: {pause: 20%}}\nrate: {in_flight: 6}\n")
	e.start("r1")
	e.pass()
	first := e.snd.offered()
	e.walk(first[0], rollsBack, true)
	e.walk(first[1], healthy, true)
	e.advance(2*time.Minute, time.Minute)
	if v := e.get("r1"); v.State != StatePaused || v.PausedBy != PauseThreshold {
		t.Fatalf("%s: %s", v.State, v.Reason)
	}
	for _, id := range first[2:] {
		e.walk(id, healthy, true)
	}
	e.advance(2*time.Minute, time.Minute)
	v := e.get("r1")
	if v.State != StateRunning {
		t.Fatalf("%s: %s", v.State, v.Reason)
	}
	if !slices.Contains(e.evs.kinds(), "resumed") {
		t.Fatal(e.evs.kinds())
	}
}

// After a restart (the store is all that is left) the rollout goes on where
// it was: no device offered twice, none forgotten, no wave skipped, the
// bake and probation timers from their stored times.
func TestRestartContinues(t *testing.T) {
	e := newEnv(t)
	e.release("1.1.0", 0, "esp32-v2")
	e.fleetOf(map[string]int{"canary": 3, "rest": 20})
	e.create("id: r1\nrelease: 1.1.0\nwaves: [{groups: [canary]}, {percent: [50, 100]}]\nbake: 30m\nprobation: 10m\nsuccess: 100%\nrate: {per_minute: 5}\n")
	e.start("r1")
	e.pass()
	for _, id := range e.snd.offered() {
		e.walk(id, healthy, true)
	}
	e.advance(12*time.Minute, time.Minute) // probation over: baking
	if w := e.get("r1").Waves[0]; w.State != WaveBaking {
		t.Fatalf("%+v", w)
	}
	offers := func() map[string]int {
		out := map[string]int{}
		var ids []string
		e.reg.Each(func(v *fleet.View) { ids = append(ids, v.ID) })
		for _, id := range ids {
			tl, _ := e.dlv.Timeline(id, 100)
			for _, en := range tl {
				if en.Type == "offer" {
					out[id]++
				}
			}
		}
		return out
	}
	e.restart()
	e.reconnectAll()
	// The bake began at 10:10 (the last canary's probation ended): the
	// wave passes at 10:40, 28 minutes after the restart, not 30.
	e.advance(27*time.Minute, time.Minute)
	if w := e.get("r1").Waves[0]; w.State != WaveBaking {
		t.Fatalf("bake after restart %+v", w)
	}
	e.advance(2*time.Minute, time.Minute)
	if w := e.get("r1").Waves[0]; w.State != WavePassed {
		t.Fatalf("bake after restart %+v", w)
	}
	// The rest, with a restart after every few minutes; devices walk
	// whatever they were offered.
	walked := map[string]bool{"canary-000": true, "canary-001": true, "canary-002": true}
	for i := 0; i < 40 && e.get("r1").State != StateCompleted; i++ {
		for _, id := range e.snd.offered() {
			if !walked[id] {
				walked[id] = true
				e.walk(id, healthy, true)
			}
		}
		e.advance(3*time.Minute, time.Minute)
		if i%3 == 0 {
			e.restart()
			e.reconnectAll()
			// Devices in the trial before the restart keep their offer;
			// the env's sender is new, so it knows them from the store.
			for _, o := range e.dlv.Offers() {
				if _, ok := e.snd.lastOffer(o.Device); !ok {
					e.snd.offers[o.Device] = []wire.Offer{{RolloutID: o.RolloutID, Manifest: e.rels["1.1.0"].Manifest}}
				}
			}
		}
	}
	v := e.get("r1")
	if v.State != StateCompleted || v.Counts["succeeded"] != 23 {
		t.Fatalf("%s %+v", v.State, v.Counts)
	}
	for id, n := range offers() {
		if n != 1 {
			t.Errorf("%s offered %d times", id, n)
		}
	}
	if len(offers()) != 23 {
		t.Errorf("%d devices offered", len(offers()))
	}
	var passed []time.Time
	for _, w := range v.Waves {
		passed = append(passed, w.Passed)
	}
	if !slices.IsSortedFunc(passed, func(a, b time.Time) int { return a.Compare(b) }) {
		t.Errorf("waves passed out of order: %v", passed)
	}
}

// reconnectAll is what devices do when the broker is back: connect, birth,
// heartbeat.
func (e *env) reconnectAll() {
	e.reg.Each(func(v *fleet.View) {
		e.connect(v.ID)
		e.birth(v.ID, v.Status.Firmware, wire.BootPowerOn, wire.StateIdle, 0, 0)
		e.heartbeat(v.ID, wire.HealthAllOK, wire.StateIdle)
	})
}

// Finished rollouts beyond KeepFinished leave memory (and the metrics)
// but not the store: get, list and devices still answer from it.
func TestKeepFinished(t *testing.T) {
	e := newEnv(t)
	e.eng.o.KeepFinished = 1
	e.release("1.1.0", 0, "esp32-v2")
	e.fleetOf(map[string]int{"rest": 2})
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("r%d", i)
		e.create("id: " + id + "\nrelease: 1.1.0\nwaves: [{percent: [100]}]\n")
		e.clk.Advance(time.Second)
		if _, err := e.eng.Abort("alice", id, "", e.commit); err != nil {
			t.Fatal(err)
		}
	}
	e.pass()
	if m := e.eng.Metrics(); len(m) != 1 || m[0].ID != "r3" {
		t.Fatalf("in memory: %+v", m)
	}
	if v := e.get("r1"); v.State != StateAborted {
		t.Fatal(v.State)
	}
	if states := e.states("r1"); len(states) != 2 || states["rest-000"] != "cancelled" {
		t.Fatal(states)
	}
	if vs, _, _ := e.eng.List(ListFilter{}); len(vs) != 3 || vs[0].ID != "r3" {
		t.Fatalf("%+v", vs)
	}
	if _, err := e.eng.Resume("alice", "r1", e.commit); !errors.Is(err, ErrState) {
		t.Fatal(err)
	}
}

// TestRefusedOfferInBatch: the offers of a pass are made in calls of
// alike offers; a device the delivery refuses in the middle of one (here
// revoked after the rollout started) is skipped with the refusal, and only
// it: its neighbours in the call are offered.
func TestRefusedOfferInBatch(t *testing.T) {
	e := newEnv(t)
	rel := e.release("1.1.0", 0, "esp32-v2")
	e.devices(dev{id: "a", hw: "esp32-v2", firmware: "1.0.0"}, dev{id: "b", hw: "esp32-v2", firmware: "1.0.0"},
		dev{id: "c", hw: "esp32-v2", firmware: "1.0.0"})
	e.create(fmt.Sprintf("id: r1\nrelease: %s\nwaves:\n  - {percent: [100]}\n", rel.ID))
	e.start("r1")
	e.update(func(tx store.Tx) error { _, err := e.reg.Revoke(tx, "b", "lost", "t"); return err })
	e.pass()
	for _, id := range []string{"a", "c"} {
		if d := e.device("r1", id); d.State != "offered" {
			t.Errorf("%s %s (%s), want offered", id, d.State, d.Reason)
		}
		if o, ok := e.snd.lastOffer(id); !ok || o.RolloutID != "r1" {
			t.Errorf("%s got %+v (%v), want the offer of r1", id, o, ok)
		}
	}
	if d := e.device("r1", "b"); d.State != "skipped" || !strings.Contains(d.Reason, "revoked") {
		t.Errorf("b %s (%q), want skipped as revoked", d.State, d.Reason)
	}
	if o, ok := e.snd.lastOffer("b"); ok && o.RolloutID != "" {
		t.Errorf("b was sent %+v", o)
	}
}
