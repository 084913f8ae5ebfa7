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
	"github.com/otamq/otamq/ota/manifest"
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
	mustCall(t, w.admin(), verb, req, out)
}

func mustCall(t testing.TB, c *rpc.Client, verb string, req, out any) {
	t.Helper()
	if err := c.Call(context.Background(), verb, req, out); err != nil {
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
	return rolloutGet(t, w.admin(), id)
}

func rolloutGet(t testing.TB, c *rpc.Client, id string) roView {
	t.Helper()
	var v roView
	mustCall(t, c, "rollout/get", map[string]any{"id": id}, &v)
	return v
}

// devices returns every device of rollout id (all pages), with the
// filter's state or wave ("" any).
func (w *rolloutWorld) devices(t testing.TB, id, state, wave string) []roDevice {
	t.Helper()
	return rolloutDevices(t, w.admin(), id, state, wave)
}

func rolloutDevices(t testing.TB, c *rpc.Client, id, state, wave string) []roDevice {
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
		mustCall(t, c, "rollout/devices", req, &res)
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

// roEntry is a timeline entry with its time (device/timeline).
type roEntry struct {
	Time      time.Time `json:"time"`
	Source    string    `json:"source"`
	Type      string    `json:"type"`
	RolloutID string    `json:"rollout_id"`
	Version   string    `json:"version"`
	Error     string    `json:"error"`
	Detail    string    `json:"detail"`
}

// entries returns device id's timeline entries about rollout (its own
// offers, and those of its retries and stepping stones: the rollout ID
// followed by "~"), oldest first.
func (w *rolloutWorld) entries(t testing.TB, id, rollout string) []roEntry {
	t.Helper()
	return timelineOf(t, w.admin(), id, rollout)
}

func timelineOf(t testing.TB, c *rpc.Client, id, rollout string) []roEntry {
	t.Helper()
	var res struct {
		Entries []roEntry `json:"entries"`
	}
	mustCall(t, c, "device/timeline", map[string]any{"id": id}, &res)
	var out []roEntry
	for i := len(res.Entries) - 1; i >= 0; i-- {
		e := res.Entries[i]
		if e.RolloutID == rollout || strings.HasPrefix(e.RolloutID, rollout+"~") {
			out = append(out, e)
		}
	}
	return out
}

// offers returns the broker's offer entries in device id's timeline for
// rollout, oldest first.
func (w *rolloutWorld) offers(id, rollout string) []roEntry {
	return w.brokerEntries(id, rollout, "offer")
}

// brokerEntries are device id's timeline entries of type typ written by
// the broker (offer, cancel) for rollout.
func (w *rolloutWorld) brokerEntries(id, rollout, typ string) []roEntry {
	var out []roEntry
	for _, e := range w.entries(w.t, id, rollout) {
		if e.Source == "broker" && e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

// deviceCodes are device id's own events about rollout, "type" or
// "type:error" without "update.", progress left out and an event
// repeated at once counted once (deviceEvents' way).
func (w *rolloutWorld) deviceCodes(t testing.TB, id, rollout string) []string {
	var out []string
	for _, e := range w.entries(t, id, rollout) {
		if e.Source != "device" || e.Type == "update.download.progress" {
			continue
		}
		s := strings.TrimPrefix(e.Type, "update.")
		if e.Error != "" {
			s += ":" + e.Error
		}
		if len(out) == 0 || out[len(out)-1] != s {
			out = append(out, s)
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
	// What an operator's otactl shows agrees as well.
	out, errOut, code := runBinary(t, binary(t, "otactl"),
		[]string{"OTAMQ_URL=" + w.url(), "OTAMQ_USER=" + opID, "OTAMQ_PASSWORD=" + opPassword},
		"--json", "rollout", "status", id)
	if code != 0 {
		t.Fatalf("otactl --json rollout status: exit %d\n%s%s", code, out, errOut)
	}
	var status roView
	if err := json.Unmarshal([]byte(out), &status); err != nil {
		t.Fatalf("otactl --json rollout status: %v\n%s", err, out)
	}
	checkStatus(t, "otactl", status, done)
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

// TestRolloutHardwareSlice: one hardware variant of the canary fails
// health on the release, the other is fine. The wave as a whole stays
// under the pause threshold; the slice of that hardware passes it, and
// the pause reason and the alarm name "hardware esp32-v3"; nothing names
// the healthy variant. After the canary's results are in, the operator
// resumes (accepting them): the rollout proceeds through the next wave
// and completes.
func TestRolloutHardwareSlice(t *testing.T) {
	t.Parallel()
	w := newRolloutWorld(t)
	v3 := func(r *sim.Registration) { r.Hardware = "esp32-v3" }
	v3dev := func(d *sim.DeviceSpec) { d.Hardware = "esp32-v3" }
	specs, all := w.addFleet(t,
		fleetSpec{prefix: "hw-a-", n: 20, groups: []string{"canary"}},
		fleetSpec{prefix: "hw-b-", n: 3, groups: []string{"canary"}, reg: v3, dev: v3dev},
		fleetSpec{prefix: "hw-bad-", n: 3, groups: []string{"canary"}, reg: v3, dev: func(d *sim.DeviceSpec) {
			v3dev(d)
			d.Profile, d.FaultVersions = sim.BadHealth, []string{"1.1.0"}
		}},
		fleetSpec{prefix: "hw-field-a-", n: 4},
		fleetSpec{prefix: "hw-field-b-", n: 4, reg: v3, dev: v3dev},
	)
	// The bad image fails its trial after 6 s, well after the healthy
	// ones succeed (1 s of probation): the slice is judged on a sample
	// with both.
	w.simFleet(t, specs, func(c *sim.Config) { c.Timing.TrialTimeout = 6 * time.Second })
	w.waitBirths(t, all)
	rel := w.release(makeFirmware(t, w.key, "1.1.0", []string{"esp32-v2", "esp32-v3"}, 8*1024))
	w.create(t, `
id: hw-1
release: `+rel.ID+`
waves:
  - {name: canary, groups: [canary]}
  - {percent: [100]}
thresholds: {min_sample: 5}
bake: 1s
probation: 1s
`)
	w.start(t, "hw-1")
	v := w.waitRollout(t, 60*time.Second, "hw-1", inState("paused"))
	if v.PausedBy != "threshold" || !strings.HasPrefix(v.Reason, "wave canary, hardware esp32-v3: health failures") {
		t.Fatalf("paused by %q: %q", v.PausedBy, v.Reason)
	}
	found := false
	for _, a := range v.Alarms {
		if strings.Contains(a.Message, "esp32-v2") || a.Slice == "hardware esp32-v2" {
			t.Errorf("an alarm names the healthy variant: %+v", a)
		}
		if a.Level == "pause" && a.Kind == "health" && a.Slice == "hardware esp32-v3" && a.Wave == "canary" && a.Judged >= 5 {
			found = true
		}
		if a.Level == "pause" && a.Slice == "" {
			t.Errorf("the whole wave passed the pause threshold: %+v", a)
		}
	}
	if !found {
		t.Fatalf("no pause alarm of the slice: %+v", v.Alarms)
	}
	// The canary's results come in; the operator resumes.
	v = w.waitRollout(t, 60*time.Second, "hw-1", func(v roView) error {
		if c := v.Waves[0].Counts; c["succeeded"] != 23 || c["rolled_back"] != 3 {
			return fmt.Errorf("canary %v", nonzero(c))
		}
		return nil
	})
	if v.State != "paused" || v.Waves[1].State != "pending" || v.Waves[1].Counts["eligible"] != 8 {
		t.Fatalf("before the resume: %s, next wave %+v", v.State, v.Waves[1])
	}
	for _, d := range w.devices(t, "hw-1", "", "canary") {
		if bad := strings.HasPrefix(d.Device, "hw-bad-"); bad != (d.State == "rolled_back") || d.Hardware != map[bool]string{true: "esp32-v3", false: d.Hardware}[bad] {
			t.Errorf("%+v", d)
		}
	}
	var rv roView
	w.call(t, "rollout/resume", map[string]any{"id": "hw-1"}, &rv)
	if rv.State != "running" || rv.Reason != "" {
		t.Fatalf("resumed: %s (%s)", rv.State, rv.Reason)
	}
	done := w.waitRollout(t, 60*time.Second, "hw-1", inState("completed"))
	checkWavesInOrder(t, done)
	if c := done.Waves[1].Counts; c["succeeded"] != 8 {
		t.Fatalf("the wave after the resume: %v", nonzero(c))
	}
}

// TestRolloutBrokerObserved: devices that fail without saying so are
// counted as failing from what the broker sees: a boot loop (more
// connections after its reboot than `reconnects`), a device that never
// comes back after its reboot (silent past `silence`), one that comes
// back and sends nothing (mute: no result within its deadline). Each is
// a health failure judged by the broker in rollout/devices, in the
// wave's counts and in the metrics; a healthy device beside them
// succeeds.
func TestRolloutBrokerObserved(t *testing.T) {
	t.Parallel()
	w := newRolloutWorld(t)
	profiles := map[string]sim.Profile{"bo-ok": sim.Healthy, "bo-loop": sim.BootLoop, "bo-silent": sim.Silent, "bo-mute": sim.Mute}
	var devs []string
	for id := range profiles {
		devs = append(devs, id)
	}
	slices.Sort(devs)
	specs := w.registerSims(t, devs, nil)
	for i := range specs {
		specs[i].Profile = profiles[specs[i].ID]
	}
	// The boot loop goes on long enough for the broker to see it: the
	// agent's own reboot trigger would roll it back after 7 boots.
	w.simFleet(t, specs, func(c *sim.Config) { c.Timing.MaxReboots = 7 })
	w.waitBirths(t, devs)
	rel := w.release(makeFirmware(t, w.key, "1.1.0", []string{"esp32-v2"}, 8*1024))
	fw := w.watch(t)
	w.create(t, `
id: bo-1
release: `+rel.ID+`
waves: [{name: all, devices: [bo-loop, bo-mute, bo-ok, bo-silent]}]
thresholds: {health: {warn: 100%, pause: 100%}, rollback: {warn: 100%, pause: 100%}}
reconnects: 2
silence: 2s
deadline: 20s
probation: 1s
`)
	w.start(t, "bo-1")
	v := w.waitRollout(t, 60*time.Second, "bo-1", func(v roView) error {
		if n := v.Counts["offered"] + v.Counts["downloading"] + v.Counts["verified"] + v.Counts["installing"] +
			v.Counts["rebooting"] + v.Counts["trial"] + v.Counts["eligible"]; n != 0 {
			return fmt.Errorf("%d without a result", n)
		}
		return nil
	})
	ds := byDevice(w.devices(t, "bo-1", "", ""))
	if d := ds["bo-ok"]; d.State != "succeeded" || d.Health || d.Broker {
		t.Errorf("healthy: %+v", d)
	}
	// Silent: offline since its reboot.
	if d := ds["bo-silent"]; d.State != "failed" || !d.Health || !d.Broker || !strings.HasPrefix(d.Reason, "silent for 2s after its reboot") {
		t.Errorf("silent: %+v", d)
	}
	// Mute: connected, but never a birth, an event or a heartbeat again.
	if d := ds["bo-mute"]; d.State != "timed_out" || !d.Health || !d.Broker || !strings.Contains(d.Reason, "(it was rebooting)") {
		t.Errorf("mute: %+v", d)
	}
	// The boot loop: judged by the broker from its reconnects; the
	// rollback it reports later makes it rolled back, still a failure the
	// broker saw.
	if d := ds["bo-loop"]; (d.State != "failed" && d.State != "rolled_back") || !d.Health || !d.Broker {
		t.Errorf("boot loop: %+v", d)
	}
	eventually(t, 10*time.Second, func() error {
		for _, e := range fw.events("bo-1") {
			if e.Type == "rollout.device" && e.ID == "bo-loop" && e.State == "failed" && strings.HasPrefix(e.Reason, "reconnect loop:") {
				return nil
			}
		}
		return fmt.Errorf("no event of the boot loop judged by its reconnects: %+v", fw.events("bo-1"))
	})
	if wv := v.Waves[0]; wv.HealthFailures != 3 || wv.Judged != 4 || wv.HealthRate != "75%" {
		t.Errorf("wave: %d health failures of %d judged (%s)", wv.HealthFailures, wv.Judged, wv.HealthRate)
	}
	m := w.metricsText(t)
	if got := metricSum(m, "otamq_update_health_failures_total", `version="1.1.0"`); got != 3 {
		t.Errorf("otamq_update_health_failures_total = %d", got)
	}
	if got := metricSum(m, "otamq_rollout_health_failures", `rollout="bo-1"`, `wave="all"`); got != 3 {
		t.Errorf("otamq_rollout_health_failures = %d", got)
	}
	if got := metricSum(m, "otamq_updates_total", `version="1.1.0"`); got != 4 {
		t.Errorf("otamq_updates_total sums to %d, want one result per device", got)
	}
}

// TestRolloutApproval: a rollout that requires approval cannot start
// before it is approved, its creator cannot approve it, an observer
// cannot either; another operator can, and then it starts and completes.
// The audit log has every attempt with its result.
func TestRolloutApproval(t *testing.T) {
	t.Parallel()
	w := newRolloutWorld(t)
	specs, devs := w.addFleet(t, fleetSpec{prefix: "ap-", n: 3})
	w.simFleet(t, specs)
	w.waitBirths(t, devs)
	rel := w.release(makeFirmware(t, w.key, "1.1.0", []string{"esp32-v2"}, 8*1024))
	w.addOperator("olga", "operator", "olga's password 1")
	w.addOperator("otto", "observer", "otto's password 1")
	olga := w.dial("olga", "olga's password 1")
	otto := w.dial("otto", "otto's password 1")

	v, _ := w.create(t, `
id: ap-1
release: `+rel.ID+`
waves: [{percent: [100]}]
approval: true
probation: 1s
`)
	if v.State != "awaiting_approval" || !v.Approval || v.Approved != nil || v.CreatedBy != opID {
		t.Fatalf("created %+v", v)
	}
	re := w.refused(t, w.admin(), "rollout/start", map[string]any{"id": "ap-1"}, "conflict")
	if !strings.Contains(re.Message, "needs approval by an operator other than ops") {
		t.Errorf("start before the approval: %s", re.Message)
	}
	re = w.refused(t, w.admin(), "rollout/approve", map[string]any{"id": "ap-1"}, "forbidden")
	if !strings.Contains(re.Message, "another operator must approve it") {
		t.Errorf("approved by its creator: %s", re.Message)
	}
	// An observer may not even send it: the broker refuses the publish.
	w.refused(t, otto, "rollout/approve", map[string]any{"id": "ap-1"}, "mqtt_0x87")
	if v := w.get(t, "ap-1"); v.State != "awaiting_approval" || v.Approved != nil {
		t.Fatalf("after the refusals: %s, approved %+v", v.State, v.Approved)
	}
	for _, d := range devs {
		if o := w.offers(d, "ap-1"); len(o) != 0 {
			t.Fatalf("%s offered before the approval", d)
		}
	}
	if err := olga.Call(context.Background(), "rollout/approve", map[string]any{"id": "ap-1"}, &v); err != nil {
		t.Fatal(err)
	}
	if v.State != "draft" || v.Approved == nil || v.Approved.By != "olga" {
		t.Fatalf("approved: %s %+v", v.State, v.Approved)
	}
	w.refused(t, olga, "rollout/approve", map[string]any{"id": "ap-1"}, "conflict") // once
	if v = w.start(t, "ap-1"); v.State != "running" || v.StartedBy != opID {
		t.Fatalf("started: %s by %s", v.State, v.StartedBy)
	}
	w.waitRollout(t, 60*time.Second, "ap-1", inState("completed"))
	var got []string
	for _, r := range auditAll(t, w.admin(), map[string]any{"target": "ap-1"}) {
		if r.Action == "rollout/approve" || r.Action == "rollout/start" {
			got = append(got, r.Actor+" "+r.Action+" "+r.Result)
		}
	}
	slices.Reverse(got) // newest first
	want := []string{"ops rollout/start conflict", "ops rollout/approve forbidden",
		"olga rollout/approve ok", "olga rollout/approve conflict", "ops rollout/start ok"}
	if !slices.Equal(got, want) {
		t.Errorf("audit:\n%v\nwant\n%v", got, want)
	}
}

// TestRolloutAbort: an abort in the middle of a wave. Devices that had
// not begun to install (slow downloads, and the next wave's devices not
// yet offered) are cancelled: those with an offer get the cancel (the
// empty offer), stop their download and stay on their version; those
// past the install are listed in the reply, finish, and their results
// are still recorded.
func TestRolloutAbort(t *testing.T) {
	t.Parallel()
	w := newRolloutWorld(t)
	specs, all := w.addFleet(t,
		fleetSpec{prefix: "ab-fast-", n: 3, groups: []string{"first"}},
		fleetSpec{prefix: "ab-slow-", n: 3, groups: []string{"first"}, dev: func(d *sim.DeviceSpec) {
			d.Profile, d.SlowRate = sim.Slow, 1024 // 32 KiB in 32 s
		}},
		fleetSpec{prefix: "ab-next-", n: 4},
	)
	fast, slow, next := all[:3], all[3:6], all[6:]
	w.simFleet(t, specs)
	w.waitBirths(t, all)
	rel := w.release(makeFirmware(t, w.key, "1.1.0", []string{"esp32-v2"}, 32*1024))
	w.create(t, `
id: ab-1
release: `+rel.ID+`
waves:
  - {name: first, groups: [first]}
  - {percent: [100]}
probation: 8s
`)
	w.start(t, "ab-1")
	// The fast ones reach their trial (8 s of probation ahead), the slow
	// ones are downloading.
	eventually(t, 30*time.Second, func() error {
		ds := byDevice(w.devices(t, "ab-1", "", "first"))
		for _, id := range fast {
			if ds[id].State != "trial" {
				return fmt.Errorf("%s is %s", id, ds[id].State)
			}
		}
		for _, id := range slow {
			if ds[id].State != "downloading" {
				return fmt.Errorf("%s is %s", id, ds[id].State)
			}
		}
		return nil
	})
	var ab struct {
		Rollout    roView     `json:"rollout"`
		Cancelled  int        `json:"cancelled"`
		Installing []roDevice `json:"installing"`
	}
	w.call(t, "rollout/abort", map[string]any{"id": "ab-1"}, &ab)
	var installing []string
	for _, d := range ab.Installing {
		installing = append(installing, d.Device)
		if d.State != "trial" {
			t.Errorf("installing %+v", d)
		}
	}
	if ab.Rollout.State != "aborted" || ab.Rollout.Reason != "aborted by ops" || ab.Cancelled != 7 || !slices.Equal(installing, fast) {
		t.Fatalf("abort: %s (%s), %d cancelled, installing %v", ab.Rollout.State, ab.Rollout.Reason, ab.Cancelled, installing)
	}
	for _, wv := range ab.Rollout.Waves {
		if wv.State != "stopped" {
			t.Errorf("wave %s is %s", wv.Name, wv.State)
		}
	}
	// The slow ones get the cancel and stop.
	for _, id := range slow {
		if c := w.brokerEntries(id, "ab-1", "cancel"); len(c) != 1 {
			t.Errorf("%s: %d cancels", id, len(c))
		}
		w.waitEvents(t, 20*time.Second, id, "ab-1", "download.started", "download.failed:cancelled")
	}
	// The next wave's devices were never offered: nothing to withdraw.
	for _, id := range next {
		if o, c := w.offers(id, "ab-1"), w.brokerEntries(id, "ab-1", "cancel"); len(o) != 0 || len(c) != 0 {
			t.Errorf("%s: %d offers, %d cancels", id, len(o), len(c))
		}
	}
	// The installed ones finish and are reported.
	w.waitDevices(t, 30*time.Second, fast, onVersion("1.1.0", "committed", "ota_reboot", 1))
	v := w.waitRollout(t, 30*time.Second, "ab-1", func(v roView) error {
		if v.Counts["succeeded"] != 3 {
			return fmt.Errorf("want 3 succeeded")
		}
		return nil
	})
	if v.State != "aborted" || v.Counts["cancelled"] != 7 {
		t.Fatalf("%s %v", v.State, nonzero(v.Counts))
	}
	ds := byDevice(w.devices(t, "ab-1", "", ""))
	for _, id := range append(slices.Clone(slow), next...) {
		if d := ds[id]; d.State != "cancelled" || d.Reason != "aborted by ops" {
			t.Errorf("%+v", d)
		}
	}
	w.waitDevices(t, 10*time.Second, append(slices.Clone(slow), next...), onVersion("1.0.0", "idle", "power_on", 0))
	m := w.metricsText(t)
	if c, s := metricSum(m, "otamq_updates_total", `result="cancelled"`), metricSum(m, "otamq_updates_total", `result="succeeded"`); c != 7 || s != 3 {
		t.Errorf("otamq_updates_total: %d cancelled, %d succeeded", c, s)
	}
}

// TestRolloutVersionRules: each device the version rules refuse is
// skipped with its reason, in the dry run, in the rollout's plan and in
// rollout/devices (already on the version, a downgrade, a secure version
// above the release's, the wrong hardware; with major upgrades not
// allowed, the old device too). The old device takes the stepping stone
// first, then the release: two offers, in that order.
func TestRolloutVersionRules(t *testing.T) {
	t.Parallel()
	w := newRolloutWorld(t)
	ids := []string{"vr-ok", "vr-old", "vr-same", "vr-newer", "vr-secure", "vr-hw"}
	regs := map[string]func(*sim.Registration){"vr-hw": func(r *sim.Registration) { r.Hardware = "" }}
	specs := w.registerSims(t, ids, func(r *sim.Registration) {
		if f := regs[r.ID]; f != nil {
			f(r)
		}
	})
	set := map[string]func(*sim.DeviceSpec){
		"vr-ok":     func(d *sim.DeviceSpec) { d.Version = "1.1.5" },
		"vr-old":    func(d *sim.DeviceSpec) { d.Profile = sim.TooOld },
		"vr-same":   func(d *sim.DeviceSpec) { d.Version = "1.2.0" },
		"vr-newer":  func(d *sim.DeviceSpec) { d.Version = "1.2.1" },
		"vr-secure": func(d *sim.DeviceSpec) { d.Version, d.SecureVersion = "1.1.5", 3 },
		"vr-hw":     func(d *sim.DeviceSpec) { d.Profile = sim.WrongHardware },
	}
	for i := range specs {
		set[specs[i].ID](&specs[i])
	}
	w.simFleet(t, specs)
	w.waitBirths(t, ids)
	stone := w.release(makeFirmware(t, w.key, "1.1.0", []string{"esp32-v2"}, 8*1024))
	rel := w.release(signedFirmware(t, w.key, manifestFor("1.2.0", 2), 8*1024))
	spec := func(id, versions string) string {
		return `
` + id + `
release: ` + rel.ID + `
waves: [{name: all, devices: [` + strings.Join(ids, ", ") + `]}]
versions: ` + versions + `
upgrade_path: [` + stone.ID + `]
probation: 1s
`
	}
	wantSkips := map[string]string{
		"vr-same":   "already runs 1.2.0",
		"vr-newer":  "version rule: 1.2.1 to 1.2.0 is a downgrade (versions.downgrade is false)",
		"vr-secure": "secure version: the release has 2, the device 3 (it would refuse it)",
		"vr-hw":     "wrong hardware: the release targets esp32-v2, not esp32-c3",
	}
	checkSkips := func(what string, p roPlan, want map[string]string) {
		t.Helper()
		got := map[string]string{}
		for _, g := range p.Skipped {
			if g.Devices != len(g.Examples) {
				t.Errorf("%s: %d devices, examples %v", what, g.Devices, g.Examples)
			}
			for _, d := range g.Examples {
				got[d] = g.Reason
			}
		}
		if !maps.Equal(got, want) {
			t.Errorf("%s: skipped %v\nwant %v", what, got, want)
		}
		if p.Selected != 6 || p.Devices != 6-len(want) || len(p.Waves) != 1 || p.Waves[0].Skipped != len(want) {
			t.Errorf("%s: selected %d, devices %d, waves %+v", what, p.Selected, p.Devices, p.Waves)
		}
	}
	// Dry runs: as it will run, and with major upgrades forbidden.
	var dry roPlan
	w.call(t, "rollout/plan", map[string]any{"yaml": spec("", "{major: true}")}, &dry)
	checkSkips("dry run", dry, wantSkips)
	if !dry.Provisional || !maps.Equal(dry.Steps, map[string]int{stone.ID: 1}) || !slices.Equal(dry.UpgradePath, []string{stone.ID}) {
		t.Errorf("dry run: provisional %v, steps %v, path %v", dry.Provisional, dry.Steps, dry.UpgradePath)
	}
	noMajor := maps.Clone(wantSkips)
	noMajor["vr-old"] = "version rule: 0.9.0 to 1.1.0 is a major upgrade (versions.major is false)"
	w.call(t, "rollout/plan", map[string]any{"yaml": spec("", "{major: false}")}, &dry)
	checkSkips("dry run without major upgrades", dry, noMajor)

	_, plan := w.create(t, spec("id: vr-1", "{major: true}"))
	checkSkips("create", plan, wantSkips)
	w.call(t, "rollout/plan", map[string]any{"id": "vr-1"}, &plan)
	checkSkips("plan of the rollout", plan, wantSkips)
	ds := byDevice(w.devices(t, "vr-1", "skipped", ""))
	for id, reason := range wantSkips {
		if ds[id].Reason != reason || !ds[id].Offered.IsZero() {
			t.Errorf("%s: %+v, want skipped: %s", id, ds[id], reason)
		}
		if o := w.offers(id, "vr-1"); len(o) != 0 {
			t.Errorf("skipped %s was offered %+v", id, o)
		}
	}
	if d := byDevice(w.devices(t, "vr-1", "", ""))["vr-old"]; d.Target != stone.ID {
		t.Errorf("the old device's first target: %+v", d)
	}
	w.start(t, "vr-1")
	done := w.waitRollout(t, 60*time.Second, "vr-1", inState("completed"))
	if done.Counts["succeeded"] != 2 || done.Counts["skipped"] != 4 || done.Devices != 2 {
		t.Fatalf("counts %v, devices %d", nonzero(done.Counts), done.Devices)
	}
	w.waitDevices(t, 10*time.Second, []string{"vr-ok"}, onVersion("1.2.0", "committed", "ota_reboot", 1))
	w.waitDevices(t, 10*time.Second, []string{"vr-old"}, onVersion("1.2.0", "committed", "ota_reboot", 0)) // two updates
	// The old device: the stone (offer vr-1~s0, 1.1.0) and its whole
	// update, then the release (vr-1, 1.2.0).
	var offers []string
	for _, o := range w.offers("vr-old", "vr-1") {
		offers = append(offers, o.RolloutID+" "+o.Version)
	}
	if want := []string{"vr-1~s0 1.1.0", "vr-1 1.2.0"}; !slices.Equal(offers, want) {
		t.Errorf("old device's offers %v, want %v", offers, want)
	}
	var steps []string
	for _, e := range w.entries(t, "vr-old", "vr-1") {
		if e.Type == "offer" || e.Type == "update.health.ok" {
			steps = append(steps, e.RolloutID+" "+e.Type)
		}
	}
	if want := []string{"vr-1~s0 offer", "vr-1~s0 update.health.ok", "vr-1 offer", "vr-1 update.health.ok"}; !slices.Equal(steps, want) {
		t.Errorf("old device's steps %v, want %v", steps, want)
	}
	if o := w.offers("vr-ok", "vr-1"); len(o) != 1 || o[0].RolloutID != "vr-1" || o[0].Version != "1.2.0" {
		t.Errorf("vr-ok offers %+v", o)
	}
}

// manifestFor is a firmware manifest of version with a secure version.
func manifestFor(version string, secure uint32) manifest.Manifest {
	return manifest.Manifest{Version: version, BuildID: "test", Kind: manifest.KindFirmware, SecureVersion: secure}
}
