package test

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/cmd/devsim/sim"
	"github.com/otamq/otamq/ota/clock"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/wire"
)

// Rollouts on the broker's clock: a clock.Fake moves the engine's time
// (windows, schedule, rate, probation, bake) while the simulated devices
// run on the real one. The fake clock starts ahead of the real time, so
// that the offers' deadlines and the commands' not-after times it sets
// are ahead for the devices too. What the engine decided carries the
// fake time it decided at (timeline entries, rollout/devices' offered and
// since), which the tests check against the windows and limits.

// clockWorld is a rolloutWorld on a fake clock, and the commands its
// broker sent.
type clockWorld struct {
	*rolloutWorld
	clk  *clock.Fake
	cmds *cmdLog
}

func newClockWorld(t *testing.T, start time.Time, mods ...func(*broker.Options)) *clockWorld {
	t.Helper()
	clk := clock.NewFake(start)
	mods = append([]func(*broker.Options){func(o *broker.Options) { o.Clock = clk }}, mods...)
	w := newRolloutWorld(t, mods...)
	cmds := &cmdLog{}
	if err := w.Server().AddHook(cmds, nil); err != nil {
		t.Fatal(err)
	}
	return &clockWorld{rolloutWorld: w, clk: clk, cmds: cmds}
}

// advanceTo moves the broker's clock to at (never back).
func (w *clockWorld) advanceTo(t *testing.T, at time.Time) {
	t.Helper()
	d := at.Sub(w.clk.Now())
	if d < 0 {
		t.Fatalf("the clock is at %v, past %v", w.clk.Now(), at)
	}
	w.cmds.step.Add(1)
	w.clk.Advance(d)
}

// next returns the first time after after on weekday wd at hh:mm UTC.
func next(after time.Time, wd time.Weekday, hh, mm int) time.Time {
	t := time.Date(after.Year(), after.Month(), after.Day(), hh, mm, 0, 0, time.UTC)
	for !t.After(after) || t.Weekday() != wd {
		t = t.AddDate(0, 0, 1)
	}
	return t
}

// cmdLog records the commands the broker writes to devices (dm/ID/cmd),
// with the test's step when it was written.
type cmdLog struct {
	mqtt.HookBase
	step atomic.Int64
	mu   sync.Mutex
	cmds []sentCmd
}

type sentCmd struct {
	device string
	cmd    wire.Command
	step   int64
}

func (h *cmdLog) ID() string           { return "test-command-log" }
func (h *cmdLog) Provides(b byte) bool { return b == mqtt.OnPacketEncode }

// OnPacketEncode implements mqtt.Hook.
func (h *cmdLog) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type != packets.Publish || pk.TopicName != "dm/"+cl.ID+"/cmd" {
		return pk
	}
	c, err := wire.DecodeCommand(pk.Payload)
	if err != nil {
		return pk
	}
	h.mu.Lock()
	h.cmds = append(h.cmds, sentCmd{device: cl.ID, cmd: c, step: h.step.Load()})
	h.mu.Unlock()
	return pk
}

// of returns the commands sent to device id.
func (h *cmdLog) of(id string) []sentCmd {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []sentCmd
	for _, c := range h.cmds {
		if c.device == id {
			out = append(out, c)
		}
	}
	return out
}

// TestRolloutWindows: a maintenance window (02:00 to 04:00, Monday to
// Friday) in each device's local time, from the UTC offset of its birth
// or from its "tz" tag (which wins). Every device downloads and verifies
// at once, outside its window; each gets its install command only when
// its own window opens, on a weekday (02:30 on a Saturday is no window):
// the commands' not-after is the end of that window, the install begins
// inside it in the device's local time, and no command went out before
// the step at which its window opened.
func TestRolloutWindows(t *testing.T) {
	t.Parallel()
	// Friday 23:30 UTC, at least a day ahead of the real time.
	t0 := next(time.Now().Add(24*time.Hour), time.Friday, 23, 30)
	w := newClockWorld(t, t0)
	offsets := map[string]int16{"win-utc": 0, "win-east": 120, "win-west": -300, "win-tz": 0, "win-ctl": 120}
	devs := []string{"win-east", "win-tz", "win-utc", "win-west"}
	specs := w.registerSims(t, append(slices.Clone(devs), "win-ctl"), func(r *sim.Registration) {
		if r.ID == "win-tz" {
			r.Tags = map[string]string{"tz": "Asia/Kolkata"} // UTC+05:30; its birth says UTC
		}
	})
	for i := range specs {
		specs[i].UTCOffsetMinutes = offsets[specs[i].ID]
	}
	w.simFleet(t, specs)
	w.waitBirths(t, append(slices.Clone(devs), "win-ctl"))
	rel := w.release(makeFirmware(t, w.key, "1.1.0", []string{"esp32-v2"}, 8*1024))
	_, plan := w.create(t, `
id: win-1
release: `+rel.ID+`
selector: {devices: [win-east, win-tz, win-utc, win-west]}
waves: [{name: all, devices: [win-east, win-tz, win-utc, win-west]}]
window: {start: "02:00", end: "04:00", days: [mon, tue, wed, thu, fri]}
probation: 1m
deadline: 7d
`)
	if plan.Devices != 4 || plan.UnknownLocalTime != 0 {
		t.Fatalf("plan %+v", plan)
	}
	// A control rollout whose window is open on Saturdays: its device,
	// two hours east of UTC like win-east, proves that the engine
	// evaluated the windows at the Saturday step (its rollout comes after
	// win-1 in every pass).
	w.create(t, `
id: zz-ctl
release: `+rel.ID+`
selector: {devices: [win-ctl]}
waves: [{name: all, devices: [win-ctl]}]
window: {start: "02:00", end: "04:00", days: [sat, sun]}
probation: 1m
deadline: 7d
`)
	w.start(t, "win-1")
	w.start(t, "zz-ctl")

	// Downloads happen outside the window: every device verified, none
	// told to install.
	eventually(t, 30*time.Second, func() error {
		for _, id := range devs {
			if d := byDevice(w.devices(t, "win-1", "", ""))[id]; d.State != "verified" {
				return fmt.Errorf("%s is %s", id, d.State)
			}
		}
		return nil
	})

	opens := map[string]int64{} // the step at which each device's window opens
	// Saturday 00:30 UTC: 02:30 for win-east, but a Saturday.
	w.advanceTo(t, t0.Add(time.Hour))
	w.waitInstalled(t, "zz-ctl", "win-ctl")
	// Sunday 21:00 UTC: Monday 02:30 in Kolkata (the tag, not the birth's
	// UTC).
	w.advanceTo(t, t0.Add(45*time.Hour+30*time.Minute))
	opens["win-tz"] = w.cmds.step.Load()
	w.waitInstalled(t, "win-1", "win-tz")
	// Monday 00:30 UTC: 02:30 for win-east.
	w.advanceTo(t, t0.Add(49*time.Hour))
	opens["win-east"] = w.cmds.step.Load()
	w.waitInstalled(t, "win-1", "win-east")
	// Monday 02:30 UTC.
	w.advanceTo(t, t0.Add(51*time.Hour))
	opens["win-utc"] = w.cmds.step.Load()
	w.waitInstalled(t, "win-1", "win-utc")
	// Monday 07:30 UTC: 02:30 for win-west.
	w.advanceTo(t, t0.Add(56*time.Hour))
	opens["win-west"] = w.cmds.step.Load()
	w.waitInstalled(t, "win-1", "win-west")
	w.advanceTo(t, t0.Add(56*time.Hour+5*time.Minute)) // its probation
	w.waitRollout(t, 30*time.Second, "win-1", inState("completed"))

	monday := t0.Add(48*time.Hour + 30*time.Minute).Truncate(24 * time.Hour)
	closes := map[string]time.Time{ // Monday 04:00 local, in UTC
		"win-tz":   monday.Add(4*time.Hour - 5*time.Hour - 30*time.Minute),
		"win-east": monday.Add(2 * time.Hour),
		"win-utc":  monday.Add(4 * time.Hour),
		"win-west": monday.Add(9 * time.Hour),
	}
	zones := map[string]*time.Location{"win-tz": mustZone(t, "Asia/Kolkata")}
	for _, id := range devs {
		if zones[id] == nil {
			zones[id] = time.FixedZone("", int(offsets[id])*60)
		}
		cmds := w.cmds.of(id)
		if len(cmds) == 0 {
			t.Errorf("%s got no command", id)
		}
		for _, c := range cmds {
			if c.cmd.Verb != wire.VerbInstall || c.cmd.RolloutID != "win-1" || c.step < opens[id] ||
				time.Unix(int64(c.cmd.NotAfter), 0).UTC() != closes[id] {
				t.Errorf("%s: command %+v (not after %v) at step %d; its window opened at step %d and closes %v", id, c.cmd,
					time.Unix(int64(c.cmd.NotAfter), 0).UTC(), c.step, opens[id], closes[id])
			}
		}
		// The download completed at the start, before any window; the
		// install began inside the device's window in its local time.
		var downloaded, installed time.Time
		for _, e := range w.entries(t, id, "win-1") {
			switch e.Type {
			case "update.download.completed":
				downloaded = e.Time
			case "update.install.started":
				installed = e.Time
			}
		}
		if !downloaded.Equal(t0) {
			t.Errorf("%s downloaded at %v, not at the start %v", id, downloaded, t0)
		}
		local := installed.In(zones[id])
		if installed.IsZero() || local.Weekday() != time.Monday || local.Hour() < 2 || local.Hour() >= 4 {
			t.Errorf("%s began to install at %v, %v local", id, installed, local)
		}
	}
	w.waitDevices(t, 10*time.Second, devs, onVersion("1.1.0", "committed", "ota_reboot", 1))
}

func mustZone(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

// waitInstalled waits until device id of rollout has its install command
// and reached its trial with health ok (its probation runs on the fake
// clock, which stays where it is meanwhile).
func (w *clockWorld) waitInstalled(t *testing.T, rollout, id string) {
	t.Helper()
	eventually(t, 30*time.Second, func() error {
		if len(w.cmds.of(id)) == 0 {
			return fmt.Errorf("%s has no install command", id)
		}
		codes := w.deviceCodes(t, id, rollout)
		if !slices.Contains(codes, "health.ok") {
			return fmt.Errorf("%s reported %v", id, codes)
		}
		if d := byDevice(w.devices(t, rollout, "", ""))[id]; d.State != "trial" {
			return fmt.Errorf("%s is %s", id, d.State)
		}
		return nil
	})
}

// TestRolloutRate: at most per_minute devices started in any minute and
// at most in_flight between their offer and their result, checked from
// the offer times (rollout/devices' offered, the timelines' offers) and
// the results' times; the ramp doubles the rate each time two more
// devices succeed (up to its max), so that later minutes start more
// devices than the first.
func TestRolloutRate(t *testing.T) {
	t.Parallel()
	t0 := next(time.Now().Add(24*time.Hour), time.Wednesday, 12, 0)
	w := newClockWorld(t, t0)
	specs, devs := w.addFleet(t, fleetSpec{prefix: "rate-", n: 14})
	w.simFleet(t, specs)
	w.waitBirths(t, devs)
	rel := w.release(makeFirmware(t, w.key, "1.1.0", []string{"esp32-v2"}, 8*1024))
	const perMinute, inFlight, factor, every, rampMax = 2, 3, 2, 2, 8
	w.create(t, fmt.Sprintf(`
id: rate-1
release: %s
waves: [{percent: [100]}]
rate: {per_minute: %d, in_flight: %d, ramp: {factor: %d, every_succeeded: %d, max: %d}}
probation: 10s
deadline: 7d
`, rel.ID, perMinute, inFlight, factor, every, rampMax))
	w.start(t, "rate-1")

	// The fake clock moves 15 s at a time, once every device under way
	// has committed its update (so that its probation ends at the next
	// step) and the engine has taken the results of the step before.
	seenRate := map[int]bool{}
	for step := 0; ; step++ {
		if step > 200 {
			t.Fatal("the rollout did not complete in 200 steps")
		}
		v := w.get(t, "rate-1")
		seenRate[v.Rate.PerMinute] = true
		if v.Rate.InFlight > inFlight || v.Rate.InFlightLimit != inFlight {
			t.Fatalf("rate %+v", v.Rate)
		}
		if v.State == "completed" {
			break
		}
		var under []string
		for _, d := range w.devices(t, "rate-1", "", "") {
			if slices.Contains(inFlightStates, d.State) {
				under = append(under, d.Device)
			}
		}
		w.waitDevices(t, 30*time.Second, under, onVersion("1.1.0", "committed", "ota_reboot", 1))
		w.advanceTo(t, w.clk.Now().Add(15*time.Second))
		eventually(t, 30*time.Second, func() error {
			ds := byDevice(w.devices(t, "rate-1", "", ""))
			for _, id := range under {
				if ds[id].State != "succeeded" {
					return fmt.Errorf("%s is %s", id, ds[id].State)
				}
			}
			return nil
		})
	}

	ds := w.devices(t, "rate-1", "", "")
	var offered, succeeded []time.Time
	for _, d := range ds {
		if d.State != "succeeded" || d.Offered.IsZero() || d.Since.Before(d.Offered) {
			t.Fatalf("%+v", d)
		}
		o := w.offers(d.Device, "rate-1")
		if len(o) != 1 || !o[0].Time.Equal(d.Offered) {
			t.Errorf("%s offered at %v; its timeline's offers: %+v", d.Device, d.Offered, o)
		}
		offered = append(offered, d.Offered)
		succeeded = append(succeeded, d.Since)
	}
	countUpTo := func(ts []time.Time, from, to time.Time) int { // in (from, to]
		n := 0
		for _, x := range ts {
			if x.After(from) && !x.After(to) {
				n++
			}
		}
		return n
	}
	most, mostInFlight := 0, 0
	for _, at := range offered {
		// the limit then: the ramp counts the results up to that moment
		// (results are taken before offers in each pass)
		limit := perMinute
		for n := countUpTo(succeeded, time.Time{}, at); n >= every && limit < rampMax; n -= every {
			limit *= factor
		}
		limit = min(limit, rampMax)
		inMinute := countUpTo(offered, at.Add(-time.Minute), at)
		if inMinute > limit {
			t.Errorf("%d devices started in the minute up to %v, limit %d", inMinute, at.Sub(t0), limit)
		}
		most = max(most, inMinute)
		n := countUpTo(offered, time.Time{}, at) - countUpTo(succeeded, time.Time{}, at)
		if n > inFlight {
			t.Errorf("%d devices in flight at %v, limit %d", n, at.Sub(t0), inFlight)
		}
		mostInFlight = max(mostInFlight, n)
	}
	if first := countUpTo(offered, t0.Add(-time.Second), t0); first != perMinute {
		t.Errorf("%d started at the start, want %d (the rate before any success)", first, perMinute)
	}
	if mostInFlight != inFlight {
		t.Errorf("at most %d devices in flight: the limit of %d was never reached", mostInFlight, inFlight)
	}
	if most <= perMinute || !seenRate[4] || !seenRate[rampMax] {
		t.Errorf("the ramp never raised the rate: at most %d in a minute, limits seen %v", most, seenRate)
	}
}

// TestRolloutSchedule: two rollouts with the same schedule (start in an
// hour, end an hour later). Before the start they wait (scheduled) and
// nothing is offered; at the start they run. At the end, the one with
// at_end stop offers nothing more (the devices under way finish); the one
// with at_end cancel cancels the devices that have not installed (those
// with an offer get the empty offer), while the one that installed
// finishes. Every offer carries a time within the schedule.
func TestRolloutSchedule(t *testing.T) {
	t.Parallel()
	t0 := next(time.Now().Add(24*time.Hour), time.Tuesday, 12, 0)
	start, end := t0.Add(time.Hour), t0.Add(2*time.Hour)
	w := newClockWorld(t, t0)
	stSpecs, stop := w.addFleet(t, fleetSpec{prefix: "st-", n: 6})
	// st-004, offered a minute after the start, is still downloading at
	// the end.
	stSpecs[3].Profile, stSpecs[3].SlowRate = sim.Slow, 1024
	// sc-a's window (02:00 to 03:00 local) is open at the start: UTC-10:30.
	scSpecs, cancel := w.addFleet(t, fleetSpec{prefix: "sc-", n: 5})
	scSpecs[0].UTCOffsetMinutes = -630
	w.simFleet(t, append(stSpecs, scSpecs...))
	w.waitBirths(t, append(slices.Clone(stop), cancel...))
	// Its first window of blocks (16 KiB) comes at once, the next 16 s
	// later.
	rel := w.release(makeFirmware(t, w.key, "1.1.0", []string{"esp32-v2"}, 32*1024))
	sched := fmt.Sprintf(`{start: "%s", end: "%s", at_end: %%s}`, start.Format(time.RFC3339), end.Format(time.RFC3339))
	w.create(t, `
id: st-1
release: `+rel.ID+`
selector: {devices: [`+strings.Join(stop, ", ")+`]}
waves: [{percent: [100]}]
rate: {per_minute: 2}
schedule: `+fmt.Sprintf(sched, "stop")+`
probation: 10s
deadline: 7d
`)
	w.create(t, `
id: sc-1
release: `+rel.ID+`
selector: {devices: [`+strings.Join(cancel, ", ")+`]}
waves: [{percent: [100]}]
rate: {in_flight: 3}
window: {start: "02:00", end: "03:00"}
schedule: `+fmt.Sprintf(sched, "cancel")+`
probation: 30m
deadline: 7d
`)
	for _, id := range []string{"st-1", "sc-1"} {
		if v := w.start(t, id); v.State != "scheduled" || v.Next == nil || v.Next.What != "start" || !v.Next.At.Equal(start) {
			t.Fatalf("%s started: %s, next %+v", id, v.State, v.Next)
		}
	}
	w.advanceTo(t, t0.Add(30*time.Minute))
	if v := w.get(t, "st-1"); v.State != "scheduled" {
		t.Fatalf("half an hour before the start: %s", v.State)
	}
	// The start: two of st-1 (its rate), three of sc-1 (in flight).
	w.advanceTo(t, start)
	w.waitRollout(t, 30*time.Second, "st-1", inState("running"))
	offeredOf := func(id string) []roDevice {
		var out []roDevice
		for _, d := range w.devices(t, id, "", "") {
			if !d.Offered.IsZero() {
				out = append(out, d)
			}
		}
		return out
	}
	eventually(t, 30*time.Second, func() error {
		if n, m := len(offeredOf("st-1")), len(offeredOf("sc-1")); n != 2 || m != 3 {
			return fmt.Errorf("offered: %d of st-1, %d of sc-1", n, m)
		}
		return nil
	})
	// sc-a installs in its window; the others of sc-1 downloaded and wait.
	w.waitInstalled(t, "sc-1", cancel[0])
	eventually(t, 30*time.Second, func() error {
		ds := byDevice(w.devices(t, "sc-1", "", ""))
		for _, id := range cancel[1:3] {
			if ds[id].State != "verified" {
				return fmt.Errorf("%s is %s", id, ds[id].State)
			}
		}
		return nil
	})
	// A minute on: two more of st-1. The clock jumps to the end only
	// when no device is in the middle of a reboot (an hour passing then
	// would be an hour of silence after it).
	w.advanceTo(t, start.Add(time.Minute))
	eventually(t, 30*time.Second, func() error {
		if n := len(offeredOf("st-1")); n != 4 {
			return fmt.Errorf("%d offered", n)
		}
		return nil
	})
	w.waitDevices(t, 30*time.Second, stop[:3], onVersion("1.1.0", "committed", "ota_reboot", 1))
	w.waitDevices(t, 10*time.Second, stop[3:4], func(_ string, st fleet.Status) error {
		if st.OTAState != "downloading" {
			return fmt.Errorf("state %s", st.OTAState)
		}
		return nil
	})
	// The end.
	w.advanceTo(t, end)
	st := w.waitRollout(t, 30*time.Second, "st-1", inState("ended"))
	sc := w.waitRollout(t, 30*time.Second, "sc-1", inState("ended"))
	if st.Reason != "the schedule ended (at_end: stop)" || sc.Reason != "the schedule ended (at_end: cancel)" {
		t.Errorf("reasons %q, %q", st.Reason, sc.Reason)
	}
	// Later still: nothing more is offered; the device under way
	// finishes.
	w.waitDevices(t, 30*time.Second, stop[3:4], onVersion("1.1.0", "committed", "ota_reboot", 1))
	w.advanceTo(t, end.Add(time.Hour))
	st = w.waitRollout(t, 30*time.Second, "st-1", func(v roView) error {
		if v.Counts["succeeded"] != 4 || v.Counts["eligible"] != 2 {
			return fmt.Errorf("want 4 succeeded, 2 never offered")
		}
		return nil
	})
	sc = w.waitRollout(t, 30*time.Second, "sc-1", func(v roView) error {
		if v.Counts["succeeded"] != 1 || v.Counts["cancelled"] != 4 {
			return fmt.Errorf("want 1 succeeded, 4 cancelled")
		}
		return nil
	})
	if st.State != "ended" || sc.State != "ended" {
		t.Fatalf("states %s, %s", st.State, sc.State)
	}
	for _, id := range append(slices.Clone(stop), cancel...) {
		for _, o := range append(w.offers(id, "st-1"), w.offers(id, "sc-1")...) {
			if o.Time.Before(start) || !o.Time.Before(end) {
				t.Errorf("%s offered at %v, outside the schedule %v to %v", id, o.Time, start, end)
			}
		}
	}
	if n := len(offeredOf("st-1")); n != 4 {
		t.Errorf("%d of st-1 offered in all", n)
	}
	ds := byDevice(w.devices(t, "sc-1", "", ""))
	if d := ds[cancel[0]]; d.State != "succeeded" || len(w.brokerEntries(cancel[0], "sc-1", "cancel")) != 0 {
		t.Errorf("the installed one: %+v", d)
	}
	for i, id := range cancel[1:] {
		d := ds[id]
		if d.State != "cancelled" || d.Reason != "the schedule ended (at_end: cancel)" {
			t.Errorf("%+v", d)
		}
		cancels := w.brokerEntries(id, "sc-1", "cancel")
		if i < 2 { // offered and verified: withdrawn
			if len(cancels) != 1 || !cancels[0].Time.Equal(end) {
				t.Errorf("%s: cancels %+v", id, cancels)
			}
			w.waitEvents(t, 20*time.Second, id, "sc-1", "download.started", "download.completed", "download.failed:cancelled")
		} else if len(cancels) != 0 || len(w.offers(id, "sc-1")) != 0 {
			t.Errorf("%s was never offered, yet has offers or cancels", id)
		}
	}
	w.waitDevices(t, 10*time.Second, cancel[1:], onVersion("1.0.0", "idle", "power_on", 0))
	if got := metricSum(w.metricsText(t), "otamq_updates_total", `result="cancelled"`); got != 4 {
		t.Errorf("otamq_updates_total cancelled = %d", got)
	}
}
