package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/cmd/devsim/sim"
	"github.com/otamq/otamq/cmd/otactl/rpc"
	"github.com/otamq/otamq/ota/fleet"
)

// Rollouts (issue 9) end to end: a real broker on loopback, simulated
// devices (cmd/devsim/sim) speaking the device contract over MQTT, and an
// operator driving rollout/* through the admin API. What the engine
// decided is read back from every side that shows it: rollout/get,
// rollout/devices, rollout/plan, the registry (device/list), the devices'
// timelines (the broker's offers and cancels, the devices' events), the
// fleet events on dm/fleet/events, the summaries on dm/fleet/rollouts/ID
// and /metrics.

// The JSON shapes of docs/ROLLOUTS.md, decoded here on their own (not with
// the engine's types) so that a change of the documented shape fails.

type roView struct {
	ID          string         `json:"id"`
	Name        string         `json:"name"`
	Release     string         `json:"release"`
	Version     string         `json:"version"`
	UpgradePath []string       `json:"upgrade_path"`
	State       string         `json:"state"`
	Reason      string         `json:"reason"`
	PausedBy    string         `json:"paused_by"`
	Approval    bool           `json:"approval"`
	Approved    *roApproval    `json:"approved"`
	CreatedBy   string         `json:"created_by"`
	StartedBy   string         `json:"started_by"`
	Created     time.Time      `json:"created"`
	Started     time.Time      `json:"started"`
	Ended       time.Time      `json:"ended"`
	Devices     int            `json:"devices"`
	Counts      map[string]int `json:"counts"`
	Waves       []roWave       `json:"waves"`
	Alarms      []roAlarm      `json:"alarms"`
	Rate        roRate         `json:"rate"`
	Next        *roNext        `json:"next"`
	Spec        string         `json:"spec"`
}

type roApproval struct {
	By string    `json:"by"`
	At time.Time `json:"at"`
}

type roWave struct {
	Name           string         `json:"name"`
	Percent        string         `json:"percent"`
	State          string         `json:"state"`
	Devices        int            `json:"devices"`
	Counts         map[string]int `json:"counts"`
	Started        time.Time      `json:"started"`
	Reached        time.Time      `json:"reached"`
	BakeUntil      time.Time      `json:"bake_until"`
	Passed         time.Time      `json:"passed"`
	Judged         int            `json:"judged"`
	Rollbacks      int            `json:"rollbacks"`
	HealthFailures int            `json:"health_failures"`
	RollbackRate   string         `json:"rollback_rate"`
	HealthRate     string         `json:"health_rate"`
}

type roAlarm struct {
	Time    time.Time `json:"time"`
	Wave    string    `json:"wave"`
	Kind    string    `json:"kind"`
	Level   string    `json:"level"`
	Slice   string    `json:"slice"`
	Rate    string    `json:"rate"`
	Judged  int       `json:"judged"`
	Count   int       `json:"count"`
	Message string    `json:"message"`
}

type roRate struct {
	PerMinute         int `json:"per_minute"`
	StartedLastMinute int `json:"started_last_minute"`
	InFlight          int `json:"in_flight"`
	InFlightLimit     int `json:"in_flight_limit"`
}

type roNext struct {
	What string    `json:"what"`
	Wave string    `json:"wave"`
	At   time.Time `json:"at"`
}

type roDevice struct {
	Device   string    `json:"device"`
	Wave     string    `json:"wave"`
	State    string    `json:"state"`
	Reason   string    `json:"reason"`
	Target   string    `json:"target"`
	OfferID  string    `json:"offer_id"`
	Retries  int       `json:"retries"`
	Since    time.Time `json:"since"`
	Offered  time.Time `json:"offered"`
	Health   bool      `json:"health_failure"`
	Broker   bool      `json:"broker_observed"`
	Hardware string    `json:"hardware"`
	Region   string    `json:"region"`
}

type roPlan struct {
	ID               string         `json:"id"`
	Provisional      bool           `json:"provisional"`
	Release          string         `json:"release"`
	Version          string         `json:"version"`
	UpgradePath      []string       `json:"upgrade_path"`
	Selected         int            `json:"selected"`
	Devices          int            `json:"devices"`
	Unassigned       int            `json:"unassigned"`
	UnknownLocalTime int            `json:"unknown_local_time"`
	Waves            []roPlanWave   `json:"waves"`
	Skipped          []roSkip       `json:"skipped"`
	Steps            map[string]int `json:"steps"`
}

type roPlanWave struct {
	Name     string         `json:"name"`
	Percent  string         `json:"percent"`
	Devices  int            `json:"devices"`
	Skipped  int            `json:"skipped"`
	Hardware map[string]int `json:"hardware"`
}

type roSkip struct {
	Reason   string   `json:"reason"`
	Devices  int      `json:"devices"`
	Examples []string `json:"examples"`
}

// deviceStates are the device states of docs/ROLLOUTS.md, in order.
var deviceStates = []string{"eligible", "offered", "downloading", "verified", "installing", "rebooting", "trial",
	"succeeded", "failed", "rolled_back", "timed_out", "skipped", "cancelled"}

// inFlightStates are between an offer and a result.
var inFlightStates = deviceStates[1:7]

// rolloutTiming shortens the simulated agent's timers further than
// simTiming where a rollout has many devices: heartbeats less often (a
// heartbeat goes out at every state change anyway).
func rolloutTiming(heartbeat time.Duration) sim.Timing {
	t := simTiming
	t.Heartbeat = heartbeat
	return t
}

// rolloutWorld is a simWorld whose rollout engine evaluates often, with
// the helpers of an operator driving rollouts.
type rolloutWorld struct {
	*simWorld
}

func newRolloutWorld(t *testing.T, mods ...func(*broker.Options)) *rolloutWorld {
	t.Helper()
	mods = append([]func(*broker.Options){func(o *broker.Options) { o.RolloutTick = 100 * time.Millisecond }}, mods...)
	return &rolloutWorld{simWorld: newSimWorld(t, mods...)}
}

// call sends a rollout verb and decodes its result; it fails the test on
// a refusal.
func (w *rolloutWorld) call(t testing.TB, verb string, req, out any) {
	t.Helper()
	if err := w.admin().Call(context.Background(), verb, req, out); err != nil {
		t.Fatalf("%s: %v", verb, err)
	}
}

// refused sends a verb that must be refused with code, and returns the
// refusal.
func (w *rolloutWorld) refused(t testing.TB, c *rpc.Client, verb string, req any, code string) *rpc.RemoteError {
	t.Helper()
	err := c.Call(context.Background(), verb, req, nil)
	var re *rpc.RemoteError
	if !errors.As(err, &re) || re.Code != code {
		t.Fatalf("%s %v: got %v, want a refusal with code %s", verb, req, err, code)
	}
	return re
}

// create creates a rollout from yaml.
func (w *rolloutWorld) create(t testing.TB, yaml string) (roView, roPlan) {
	t.Helper()
	var res struct {
		Rollout roView `json:"rollout"`
		Plan    roPlan `json:"plan"`
	}
	w.call(t, "rollout/create", map[string]any{"yaml": yaml}, &res)
	return res.Rollout, res.Plan
}

func (w *rolloutWorld) start(t testing.TB, id string) roView {
	t.Helper()
	var v roView
	w.call(t, "rollout/start", map[string]any{"id": id}, &v)
	return v
}

func (w *rolloutWorld) get(t testing.TB, id string) roView {
	t.Helper()
	var v roView
	w.call(t, "rollout/get", map[string]any{"id": id}, &v)
	return v
}

// devices returns every device of rollout id (all pages), with the
// filter's state or wave ("" any).
func (w *rolloutWorld) devices(t testing.TB, id, state, wave string) []roDevice {
	t.Helper()
	var out []roDevice
	after := ""
	for {
		var res struct {
			Devices []roDevice `json:"devices"`
			Next    string     `json:"next"`
		}
		req := map[string]any{"id": id, "after": after, "limit": 1000}
		if state != "" {
			req["state"] = state
		}
		if wave != "" {
			req["wave"] = wave
		}
		w.call(t, "rollout/devices", req, &res)
		out = append(out, res.Devices...)
		if res.Next == "" {
			return out
		}
		after = res.Next
	}
}

// byDevice indexes ds by device ID.
func byDevice(ds []roDevice) map[string]roDevice {
	m := make(map[string]roDevice, len(ds))
	for _, d := range ds {
		m[d.Device] = d
	}
	return m
}

// waitRollout polls rollout/get until cond holds and returns that view.
func (w *rolloutWorld) waitRollout(t testing.TB, within time.Duration, id string, cond func(v roView) error) roView {
	t.Helper()
	var v roView
	eventually(t, within, func() error {
		v = w.get(t, id)
		if err := cond(v); err != nil {
			return fmt.Errorf("rollout %s is %s (%s), counts %v: %w", id, v.State, v.Reason, nonzero(v.Counts), err)
		}
		return nil
	})
	return v
}

// inState is a waitRollout condition: the rollout is in state st.
func inState(st string) func(roView) error {
	return func(v roView) error {
		if v.State != st {
			return fmt.Errorf("want state %s", st)
		}
		return nil
	}
}

func nonzero(m map[string]int) map[string]int {
	out := map[string]int{}
	for k, n := range m {
		if n != 0 {
			out[k] = n
		}
	}
	return out
}

// offers returns the broker's offer entries in device id's timeline for
// rollout (an offer ID, or its prefix followed by "~" for retries and
// stepping stones), oldest first.
func (w *rolloutWorld) offers(id, rollout string) []timelineEntry {
	return w.brokerEntries(id, rollout, "offer")
}

// brokerEntries are device id's timeline entries of type typ written by
// the broker for rollout's offers.
func (w *rolloutWorld) brokerEntries(id, rollout, typ string) []timelineEntry {
	var out []timelineEntry
	for _, e := range w.timeline(id) {
		if e.Source == "broker" && e.Type == typ && (e.RolloutID == rollout || strings.HasPrefix(e.RolloutID, rollout+"~")) {
			out = append(out, e)
		}
	}
	return out
}

// fleetWatcher is an operator's MQTT client following dm/fleet/events and
// the rollout summaries, as otactl rollout watch does.
type fleetWatcher struct {
	c *client
}

func (w *rolloutWorld) watch(t *testing.T) *fleetWatcher {
	t.Helper()
	c, err := dialClient(t, w.Addr(), opID+"~watch", clientOpts{username: opID, password: opPassword})
	if err != nil {
		t.Fatalf("connect the watcher: %v", err)
	}
	for _, f := range []string{"dm/fleet/events", "dm/fleet/rollouts/+"} {
		if rc := c.subscribe(f); rc > 2 {
			t.Fatalf("subscribe %s: reason %#x", f, rc)
		}
	}
	return &fleetWatcher{c: c}
}

// rolloutEvent is a fleet event about a rollout (hooks/events.go).
type rolloutEvent struct {
	Type    string `json:"type"`
	ID      string `json:"id"`
	Rollout string `json:"rollout"`
	Wave    string `json:"wave"`
	State   string `json:"state"`
	Reason  string `json:"reason"`
	Actor   string `json:"actor"`
}

// events returns the rollout events received so far about rollout, in
// the order they came.
func (fw *fleetWatcher) events(rollout string) []rolloutEvent {
	fw.c.mu.Lock()
	defer fw.c.mu.Unlock()
	var out []rolloutEvent
	for _, m := range fw.c.msgs {
		if m.Topic != "dm/fleet/events" {
			continue
		}
		var e rolloutEvent
		if json.Unmarshal(m.Payload, &e) == nil && strings.HasPrefix(e.Type, "rollout.") && e.Rollout == rollout {
			out = append(out, e)
		}
	}
	return out
}

// kinds are the rollout-level events' kinds (device events left out),
// "kind:wave" where the event names a wave.
func kinds(evs []rolloutEvent) []string {
	var out []string
	for _, e := range evs {
		k := strings.TrimPrefix(e.Type, "rollout.")
		if k == "device" {
			continue
		}
		if e.Wave != "" {
			k += ":" + e.Wave
		}
		out = append(out, k)
	}
	return out
}

// summaries returns the summaries of rollout received so far.
func (fw *fleetWatcher) summaries(rollout string) []roView {
	fw.c.mu.Lock()
	defer fw.c.mu.Unlock()
	var out []roView
	for _, m := range fw.c.msgs {
		if m.Topic != "dm/fleet/rollouts/"+rollout {
			continue
		}
		var v roView
		if json.Unmarshal(m.Payload, &v) == nil {
			out = append(out, v)
		}
	}
	return out
}

// metricsText scrapes /metrics.
func (w *rolloutWorld) metricsText(t testing.TB) string {
	t.Helper()
	out, err := httpGet("http://" + w.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// metricSum adds the samples of metric whose labels include every one of
// labels (`name="value"` each).
func metricSum(text, metric string, labels ...string) int {
	n := 0
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, metric+"{") {
			continue
		}
		i := strings.LastIndexByte(line, '}')
		if i < 0 {
			continue
		}
		set := line[len(metric)+1 : i]
		ok := true
		for _, l := range labels {
			if !slices.Contains(strings.Split(set, ","), l) {
				ok = false
				break
			}
		}
		if ok {
			n += atoi(strings.TrimSpace(line[i+1:]))
		}
	}
	return n
}

// countsOf counts ds by state.
func countsOf(ds []roDevice) map[string]int {
	m := map[string]int{}
	for _, d := range ds {
		m[d.State]++
	}
	return m
}

// checkCountsAgree checks that a view's counts (the whole rollout's and
// each wave's) are what rollout/devices lists, state by state, every
// state present.
func checkCountsAgree(t testing.TB, v roView, ds []roDevice) {
	t.Helper()
	for _, st := range deviceStates {
		if _, ok := v.Counts[st]; !ok {
			t.Errorf("counts lack state %s: %v", st, v.Counts)
		}
	}
	if got := countsOf(ds); !maps.Equal(nonzero(v.Counts), got) {
		t.Errorf("rollout counts %v, rollout/devices %v", nonzero(v.Counts), got)
	}
	for _, wv := range v.Waves {
		var in []roDevice
		for _, d := range ds {
			if d.Wave == wv.Name {
				in = append(in, d)
			}
		}
		if got := countsOf(in); !maps.Equal(nonzero(wv.Counts), got) {
			t.Errorf("wave %s counts %v, rollout/devices %v", wv.Name, nonzero(wv.Counts), got)
		}
	}
}

// checkStatus compares what an operator's status view shows with
// rollout/get: the fields `otactl --json rollout status ID` must print
// (issue 9: id, release, state, reason, counts, waves with name, state,
// devices, counts).
func checkStatus(t testing.TB, what string, got, want roView) {
	t.Helper()
	if got.ID != want.ID || got.Release != want.Release || got.State != want.State || got.Reason != want.Reason {
		t.Errorf("%s: %s %s %s (%s), want %s %s %s (%s)", what, got.ID, got.Release, got.State, got.Reason,
			want.ID, want.Release, want.State, want.Reason)
	}
	if !maps.Equal(got.Counts, want.Counts) {
		t.Errorf("%s: counts %v, want %v", what, got.Counts, want.Counts)
	}
	if len(got.Waves) != len(want.Waves) {
		t.Fatalf("%s: %d waves, want %d", what, len(got.Waves), len(want.Waves))
	}
	for i := range want.Waves {
		g, x := got.Waves[i], want.Waves[i]
		if g.Name != x.Name || g.State != x.State || g.Devices != x.Devices || !maps.Equal(g.Counts, x.Counts) {
			t.Errorf("%s: wave %d %s %s %d %v, want %s %s %d %v", what, i, g.Name, g.State, g.Devices, nonzero(g.Counts),
				x.Name, x.State, x.Devices, nonzero(x.Counts))
		}
	}
}

// checkWavesInOrder checks that every wave passed, each after it started
// and no earlier than the one before it passed: none skipped.
func checkWavesInOrder(t testing.TB, v roView) {
	t.Helper()
	var prev time.Time
	for _, wv := range v.Waves {
		if wv.State != "passed" || wv.Passed.IsZero() {
			t.Errorf("wave %s is %s", wv.Name, wv.State)
			continue
		}
		if wv.Devices > 0 && (wv.Started.IsZero() || wv.Started.Before(prev) || wv.Passed.Before(wv.Started)) {
			t.Errorf("wave %s started %v, passed %v; the wave before passed %v", wv.Name, wv.Started, wv.Passed, prev)
		}
		prev = wv.Passed
	}
}

// fleetSpec places simulated devices: named groups of n devices each,
// with a profile per device where given.
type fleetSpec struct {
	prefix string
	n      int
	groups []string
	reg    func(*sim.Registration)
	dev    func(*sim.DeviceSpec)
}

// addFleet registers the devices of fs and returns their specs and IDs.
func (w *rolloutWorld) addFleet(t *testing.T, fs ...fleetSpec) ([]sim.DeviceSpec, []string) {
	t.Helper()
	var specs []sim.DeviceSpec
	var all []string
	for _, f := range fs {
		devs := ids(f.prefix, f.n)
		s := w.registerSims(t, devs, func(r *sim.Registration) {
			r.Groups = f.groups
			if f.reg != nil {
				f.reg(r)
			}
		})
		if f.dev != nil {
			for i := range s {
				f.dev(&s[i])
			}
		}
		specs = append(specs, s...)
		all = append(all, devs...)
	}
	return specs, all
}

// waitBirths waits until every device of ids has sent its birth and is
// online (the plan judges versions from births).
func (w *rolloutWorld) waitBirths(t *testing.T, ids []string) {
	t.Helper()
	w.waitDevices(t, 60*time.Second, ids, func(_ string, st fleet.Status) error {
		if !st.Online || st.BirthAt.IsZero() {
			return fmt.Errorf("online %v, birth %v", st.Online, st.BirthAt)
		}
		return nil
	})
}

// TestRolloutCanaryToGA: 200 devices in canary, internal and pilot groups
// and the rest take a release through six waves in cascade. The rollout
// completes; every device runs the new version (device/list); the counts
// of rollout/get, of each wave, of rollout/devices, the summary pushed on
// dm/fleet/rollouts/ID and the metrics agree; each device was offered
// once; the fleet events tell the cascade in order.
func TestRolloutCanaryToGA(t *testing.T) {
	t.Parallel()
	w := newRolloutWorld(t)
	specs, all := w.addFleet(t,
		fleetSpec{prefix: "ga-canary-", n: 10, groups: []string{"canary"}},
		fleetSpec{prefix: "ga-internal-", n: 10, groups: []string{"internal"}},
		fleetSpec{prefix: "ga-pilot-", n: 20, groups: []string{"pilot"}, reg: func(r *sim.Registration) { r.Region = "us" }},
		fleetSpec{prefix: "ga-field-", n: 160, reg: func(r *sim.Registration) { r.Region = "eu" }},
	)
	w.simFleet(t, specs, func(c *sim.Config) { c.Timing = rolloutTiming(2 * time.Second) })
	w.waitBirths(t, all)
	rel := w.release(makeFirmware(t, w.key, "1.1.0", []string{"esp32-v2"}, 8*1024))
	fw := w.watch(t)

	const id = "ga-1"
	v, plan := w.create(t, `
id: ga-1
release: `+rel.ID+`
waves:
  - {name: canary, groups: [canary]}
  - {name: internal, groups: [internal]}
  - {name: pilot, groups: [pilot]}
  - {percent: [10, 50, 100]}
bake: 1s
probation: 1s
`)
	if v.State != "draft" || v.Devices != 200 || plan.Devices != 200 || plan.Selected != 200 || len(plan.Skipped) != 0 {
		t.Fatalf("created %s with %d devices; plan %+v", v.State, v.Devices, plan)
	}
	wantNames := []string{"canary", "internal", "pilot", "10%", "50%", "100%"}
	var names []string
	rest := 0
	for i, pw := range plan.Waves {
		names = append(names, pw.Name)
		if i >= 3 {
			rest += pw.Devices
		}
	}
	if !slices.Equal(names, wantNames) || plan.Waves[0].Devices != 10 || plan.Waves[1].Devices != 10 ||
		plan.Waves[2].Devices != 20 || rest != 160 {
		t.Fatalf("plan waves %+v", plan.Waves)
	}
	w.start(t, id)
	done := w.waitRollout(t, 150*time.Second, id, inState("completed"))

	// Every device runs the release, committed (the registry's view).
	st := w.statuses(t)
	for _, d := range all {
		if s := st[d]; s.Firmware != "1.1.0" || s.OTAState != "committed" {
			t.Errorf("%s runs %s (%s)", d, s.Firmware, s.OTAState)
		}
	}
	ds := w.devices(t, id, "", "")
	if len(ds) != 200 || done.Counts["succeeded"] != 200 || done.Devices != 200 {
		t.Fatalf("%d devices listed, counts %v", len(ds), nonzero(done.Counts))
	}
	checkCountsAgree(t, done, ds)
	checkWavesInOrder(t, done)
	for i, wv := range done.Waves {
		if wv.Devices != plan.Waves[i].Devices || wv.Counts["succeeded"] != wv.Devices || wv.Judged != wv.Devices {
			t.Errorf("wave %s: %d devices (planned %d), %v", wv.Name, wv.Devices, plan.Waves[i].Devices, nonzero(wv.Counts))
		}
	}
	// A device of a later wave was offered only after the waves before it
	// had passed.
	passed := map[string]time.Time{}
	for _, wv := range done.Waves {
		passed[wv.Name] = wv.Passed
	}
	for _, d := range ds {
		i := slices.Index(wantNames, d.Wave)
		if i > 0 && d.Offered.Before(passed[wantNames[i-1]]) {
			t.Errorf("%s of wave %s offered %v, before wave %s passed %v", d.Device, d.Wave, d.Offered, wantNames[i-1], passed[wantNames[i-1]])
		}
	}
	// Each device was offered once, for this rollout (the timelines).
	for _, d := range all {
		if n := len(w.offers(d, id)); n != 1 {
			t.Errorf("%s was offered %d times", d, n)
		}
	}

	// The metrics say the same.
	eventually(t, 10*time.Second, func() error {
		m := w.metricsText(t)
		for _, wv := range done.Waves {
			for _, st := range deviceStates {
				if got := metricSum(m, "otamq_rollout_devices", `rollout="ga-1"`, `wave="`+wv.Name+`"`, `state="`+st+`"`); got != wv.Counts[st] {
					return fmt.Errorf("otamq_rollout_devices wave %s state %s = %d, want %d", wv.Name, st, got, wv.Counts[st])
				}
			}
		}
		if got := metricSum(m, "otamq_rollout_state", `rollout="ga-1"`, `state="completed"`); got != 1 {
			return fmt.Errorf("otamq_rollout_state completed = %d", got)
		}
		if got := metricSum(m, "otamq_rollout_state", `rollout="ga-1"`); got != 1 {
			return fmt.Errorf("otamq_rollout_state sums to %d over the states", got)
		}
		if got := metricSum(m, "otamq_updates_total", `result="succeeded"`, `version="1.1.0"`); got != 200 {
			return fmt.Errorf("otamq_updates_total succeeded = %d", got)
		}
		if eu, us := metricSum(m, "otamq_updates_total", `result="succeeded"`, `region="eu"`),
			metricSum(m, "otamq_updates_total", `result="succeeded"`, `region="us"`); eu != 160 || us != 20 {
			return fmt.Errorf("otamq_updates_total succeeded: eu %d, us %d", eu, us)
		}
		if got := metricSum(m, "otamq_updates_total"); got != 200 {
			return fmt.Errorf("otamq_updates_total sums to %d over every result", got)
		}
		return nil
	})

	// The events tell the cascade, in order; the last summary pushed is the
	// completed rollout.
	want := []string{"created", "started"}
	for _, n := range wantNames {
		want = append(want, "wave_started:"+n, "wave_reached:"+n, "wave_passed:"+n)
	}
	want = append(want, "completed")
	eventually(t, 10*time.Second, func() error {
		if got := kinds(fw.events(id)); !slices.Equal(got, want) {
			return fmt.Errorf("events %v\nwant %v", got, want)
		}
		sums := fw.summaries(id)
		if len(sums) == 0 || sums[len(sums)-1].State != "completed" {
			return fmt.Errorf("%d summaries, none of the completed rollout", len(sums))
		}
		return nil
	})
	last := fw.summaries(id)
	checkStatus(t, "summary", last[len(last)-1], done)
	succeeded := 0
	for _, e := range fw.events(id) {
		if e.Type == "rollout.device" && e.State == "succeeded" {
			succeeded++
		}
	}
	if succeeded != 200 {
		t.Errorf("%d device events say succeeded", succeeded)
	}
	// TODO(otactl rollout): compare `otactl --json rollout status ga-1`
	// here with checkStatus(t, "otactl", status, done), once otactl has
	// the rollout commands.
}

// TestRolloutBadCanary: the canary fails health on the new release (the
// bad-health profile, its fault limited to that version). The rollout
// pauses at the canary with the threshold's reason; no device outside the
// canary is offered (their timelines hold no offer, rollout/devices has
// them eligible, never offered). The fix that is realistic for a bad
// release is a new release: the operator aborts the paused rollout (the
// devices of later waves are cancelled before they were ever offered)
// and rolls out the fixed release, which the same canary passes and the
// whole fleet takes.
func TestRolloutBadCanary(t *testing.T) {
	t.Parallel()
	w := newRolloutWorld(t)
	specs, all := w.addFleet(t,
		fleetSpec{prefix: "bc-canary-", n: 6, groups: []string{"canary"}, dev: func(d *sim.DeviceSpec) {
			d.Profile, d.FaultVersions = sim.BadHealth, []string{"1.1.0"}
		}},
		fleetSpec{prefix: "bc-pilot-", n: 6, groups: []string{"pilot"}},
		fleetSpec{prefix: "bc-field-", n: 12},
	)
	w.simFleet(t, specs)
	w.waitBirths(t, all)
	bad := w.release(makeFirmware(t, w.key, "1.1.0", []string{"esp32-v2"}, 8*1024))
	spec := func(id, rel string) string {
		return `
id: ` + id + `
release: ` + rel + `
waves:
  - {name: canary, groups: [canary]}
  - {name: pilot, groups: [pilot]}
  - {percent: [50, 100]}
thresholds: {min_sample: 4}
bake: 1s
probation: 1s
`
	}
	w.create(t, spec("bc-1", bad.ID))
	w.start(t, "bc-1")
	v := w.waitRollout(t, 60*time.Second, "bc-1", inState("paused"))
	if v.PausedBy != "threshold" || !strings.Contains(v.Reason, "wave canary") || !strings.Contains(v.Reason, "health failures") ||
		!strings.Contains(v.Reason, "passed the pause threshold 20%") {
		t.Fatalf("paused by %q: %q", v.PausedBy, v.Reason)
	}
	var pause *roAlarm
	for i, a := range v.Alarms {
		if a.Level == "pause" && a.Kind == "health" && a.Wave == "canary" && a.Slice == "" {
			pause = &v.Alarms[i]
		}
	}
	if pause == nil || pause.Judged < 4 || pause.Count < 1 || pause.Message != v.Reason {
		t.Fatalf("alarms %+v", v.Alarms)
	}
	if v.Waves[0].State == "passed" || v.Waves[1].State != "pending" {
		t.Fatalf("waves %s %s", v.Waves[0].State, v.Waves[1].State)
	}
	// The canary goes on to its results (a pause stops new offers only):
	// each canary device fails health and rolls back.
	v = w.waitRollout(t, 60*time.Second, "bc-1", func(v roView) error {
		if c := v.Waves[0].Counts; c["rolled_back"] != 6 {
			return fmt.Errorf("canary %v", nonzero(c))
		}
		return nil
	})
	if v.State != "paused" || v.Waves[0].HealthFailures != 6 || v.Waves[0].HealthRate != "100%" {
		t.Fatalf("after the canary's results: %s, canary %+v", v.State, v.Waves[0])
	}
	ds := byDevice(w.devices(t, "bc-1", "", ""))
	for _, id := range all {
		d := ds[id]
		if d.Wave == "canary" {
			if d.State != "rolled_back" || !d.Health || d.Offered.IsZero() || !strings.Contains(d.Reason, "health_check") {
				t.Errorf("canary %s: %+v", id, d)
			}
			if st := w.status(id); st.Firmware != "1.0.0" {
				t.Errorf("canary %s runs %s", id, st.Firmware)
			}
			continue
		}
		if d.State != "eligible" || !d.Offered.IsZero() || d.OfferID != "" {
			t.Errorf("%s of wave %s, outside the canary: %+v", id, d.Wave, d)
		}
		if o := w.offers(id, "bc-1"); len(o) != 0 {
			t.Errorf("%s, outside the canary, was offered: %+v", id, o)
		}
	}
	m := w.metricsText(t)
	// Each canary device has one result, a health failure and a rollback
	// (it failed health, then rolled back: counted once).
	if got := metricSum(m, "otamq_update_health_failures_total", `version="1.1.0"`); got != 6 {
		t.Errorf("otamq_update_health_failures_total = %d, want 6", got)
	}
	if got := metricSum(m, "otamq_updates_total", `version="1.1.0"`); got != 6 {
		t.Errorf("otamq_updates_total sums to %d over the results, want 6 (one each)", got)
	}
	if got := metricSum(m, "otamq_rollbacks_total", `version="1.1.0"`); got != 6 {
		t.Errorf("otamq_rollbacks_total = %d, want 6", got)
	}
	if got := metricSum(m, "otamq_rollout_state", `rollout="bc-1"`, `state="paused"`); got != 1 {
		t.Errorf("otamq_rollout_state paused = %d", got)
	}

	// Abort: nothing was offered outside the canary, so nothing is
	// withdrawn; the others are cancelled in the rollout.
	var ab struct {
		Rollout    roView     `json:"rollout"`
		Cancelled  int        `json:"cancelled"`
		Installing []roDevice `json:"installing"`
	}
	w.call(t, "rollout/abort", map[string]any{"id": "bc-1", "reason": "1.1.0 fails its health check"}, &ab)
	if ab.Rollout.State != "aborted" || ab.Cancelled != 18 || len(ab.Installing) != 0 || ab.Rollout.Reason != "1.1.0 fails its health check" {
		t.Fatalf("abort: %s (%s), %d cancelled, installing %+v", ab.Rollout.State, ab.Rollout.Reason, ab.Cancelled, ab.Installing)
	}
	for _, id := range all[6:] {
		if c := w.brokerEntries(id, "bc-1", "cancel"); len(c) != 0 {
			t.Errorf("%s got a cancel for an offer it never had", id)
		}
	}

	// The fixed release goes through the same waves.
	good := w.release(makeFirmware(t, w.key, "1.1.1", []string{"esp32-v2"}, 8*1024))
	w.create(t, spec("bc-2", good.ID))
	w.start(t, "bc-2")
	done := w.waitRollout(t, 90*time.Second, "bc-2", inState("completed"))
	if done.Counts["succeeded"] != 24 {
		t.Fatalf("counts %v", nonzero(done.Counts))
	}
	checkWavesInOrder(t, done)
	w.waitDevices(t, 10*time.Second, all, onVersion("1.1.1", "committed", "ota_reboot", 1))
}
