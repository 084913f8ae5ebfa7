package rollout

import (
	"encoding/json"
	"sort"
	"time"
)

// View is a rollout as operators see it (rollout/get, the summaries that
// otactl rollout watch shows).
type View struct {
	ID        string    `json:"id"`
	Name      string    `json:"name,omitempty"`
	Release   string    `json:"release"`
	Version   string    `json:"version"`
	Path      []string  `json:"upgrade_path,omitempty"`
	State     string    `json:"state"`
	Reason    string    `json:"reason,omitempty"`
	PausedBy  string    `json:"paused_by,omitempty"`
	Approval  bool      `json:"approval"`
	Approved  *Approval `json:"approved,omitempty"`
	CreatedBy string    `json:"created_by"`
	Created   time.Time `json:"created"`
	StartedBy string    `json:"started_by,omitempty"`
	Started   time.Time `json:"started,omitzero"`
	Ended     time.Time `json:"ended,omitzero"`
	Updated   time.Time `json:"updated"`
	// Devices counts the devices taking part (the skipped not).
	Devices int `json:"devices"`
	// Counts are the devices by state (every state, zeros included).
	Counts map[string]int `json:"counts"`
	Waves  []WaveView     `json:"waves"`
	Alarms []Alarm        `json:"alarms"`
	Rate   RateView       `json:"rate"`
	// Next says what the rollout waits for, when it waits on time.
	Next *Next `json:"next,omitempty"`
	// Spec is the YAML the rollout was created from (rollout/get only).
	Spec string `json:"spec,omitempty"`
	// Gateways groups the devices that are children of gateways under
	// their gateway, most children first (rollout/get only; at most
	// MaxGatewayViews, the rest counted in MoreGateways). Unreachable
	// counts the devices in flight cut off by their gateway's disconnect.
	Gateways     []GatewayView `json:"gateways,omitempty"`
	MoreGateways int           `json:"more_gateways,omitempty"`
	Unreachable  int           `json:"unreachable,omitempty"`
}

// WaveView is one wave of a View.
type WaveView struct {
	Name    string  `json:"name"`
	Percent Percent `json:"percent,omitempty"`
	State   string  `json:"state"`
	// Devices counts the wave's devices taking part.
	Devices   int            `json:"devices"`
	Counts    map[string]int `json:"counts"`
	Started   time.Time      `json:"started,omitzero"`
	Reached   time.Time      `json:"reached,omitzero"`
	BakeUntil time.Time      `json:"bake_until,omitzero"`
	Passed    time.Time      `json:"passed,omitzero"`
	// Judged counts the results (succeeded, failed, rolled back, timed
	// out); the rates are of those.
	Judged         int     `json:"judged"`
	Rollbacks      int     `json:"rollbacks"`
	HealthFailures int     `json:"health_failures"`
	RollbackRate   Percent `json:"rollback_rate"`
	HealthRate     Percent `json:"health_rate"`
}

// RateView is where the rate limits stand.
type RateView struct {
	// PerMinute is the limit now (the ramp raises it); 0: none.
	PerMinute         int `json:"per_minute"`
	StartedLastMinute int `json:"started_last_minute"`
	InFlight          int `json:"in_flight"`
	InFlightLimit     int `json:"in_flight_limit"`
}

// Next is what a rollout waits for.
type Next struct {
	// What: "start" (the schedule), "wave" (a bake ends), "end" (the
	// schedule).
	What string    `json:"what"`
	Wave string    `json:"wave,omitempty"`
	At   time.Time `json:"at"`
}

func countsMap(c *counter) map[string]int {
	m := make(map[string]int, numStates)
	for s := Eligible; s < numStates; s++ {
		m[s.String()] = c[s]
	}
	return m
}

// view renders r. Callers hold e.mu.
func (e *Engine) view(r *run, now time.Time, withSpec bool) *View {
	rec := r.rec
	v := &View{ID: rec.ID, Name: rec.Name, Release: rec.Release, Version: rec.Version, Path: rec.Path, State: rec.State,
		Reason: rec.Reason, PausedBy: rec.PausedBy, Approval: r.spec.Approval, Approved: rec.Approved,
		CreatedBy: rec.CreatedBy, Created: rec.Created, StartedBy: rec.StartedBy, Started: rec.Started, Ended: rec.Ended,
		Updated: rec.Updated, Alarms: append([]Alarm{}, rec.Alarms...)}
	if withSpec {
		v.Spec = rec.Spec
		v.Gateways, v.MoreGateways, v.Unreachable = e.gatewayViews(r)
	}
	var all counter
	for i, w := range rec.Waves {
		var c counter
		if i < len(r.counts) {
			c = r.counts[i]
		}
		for s := range c {
			all[s] += c[s]
		}
		wv := WaveView{Name: w.Name, Percent: w.Percent, State: w.State, Devices: c.total(), Counts: countsMap(&c),
			Started: w.Started, Reached: w.Reached, Passed: w.Passed, Judged: c.judged(), Rollbacks: c[RolledBack],
			HealthFailures: c[healthIdx]}
		wv.RollbackRate, wv.HealthRate = of(c[RolledBack], wv.Judged), of(c[healthIdx], wv.Judged)
		if !w.Reached.IsZero() && w.State == WaveBaking {
			wv.BakeUntil = w.Reached.Add(r.spec.Bake.D())
			if v.Next == nil {
				v.Next = &Next{What: "wave", Wave: w.Name, At: wv.BakeUntil}
			}
		}
		v.Waves = append(v.Waves, wv)
	}
	v.Devices = all.total()
	v.Counts = countsMap(&all)
	sp := r.spec
	if rec.State == StateScheduled && sp.Schedule.Start != nil {
		v.Next = &Next{What: "start", At: *sp.Schedule.Start}
	}
	if v.Next == nil && sp.Schedule.End != nil && !finished(rec.State) {
		v.Next = &Next{What: "end", At: *sp.Schedule.End}
	}
	v.Rate.InFlightLimit = sp.Rate.InFlight
	for s := Offered; s < Succeeded; s++ {
		v.Rate.InFlight += all[s]
	}
	if sp.Rate.PerMinute > 0 {
		v.Rate.PerMinute = r.perMinute()
		cut := now.Add(-time.Minute).UnixNano()
		for _, t := range r.starts {
			if t > cut {
				v.Rate.StartedLastMinute++
			}
		}
	}
	return v
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

// DeviceView is a device in a rollout (rollout/devices).
type DeviceView struct {
	Device string `json:"device"`
	Wave   string `json:"wave"`
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
	// Target is the release the device is to take now (a stepping stone,
	// or the rollout's release).
	Target string `json:"target"`
	// OfferID is the rollout ID of its current offer.
	OfferID string    `json:"offer_id,omitempty"`
	Tries   int       `json:"retries,omitempty"`
	Since   time.Time `json:"since,omitzero"`
	Offered time.Time `json:"offered,omitzero"`
	// Health marks a result that is a health failure; Broker one the
	// broker judged from what it saw.
	Health   bool   `json:"health_failure,omitempty"`
	Broker   bool   `json:"broker_observed,omitempty"`
	Hardware string `json:"hardware,omitempty"`
	Region   string `json:"region,omitempty"`
	// Gateway is the gateway a child is registered under (the rollout
	// counts the child as a device of its own); Unreachable says the
	// child is cut off because that gateway is offline: it waits, and is
	// not judged failing for it.
	Gateway     string `json:"gateway,omitempty"`
	Unreachable bool   `json:"unreachable,omitempty"`
}

// GatewayView counts the devices of a rollout behind one gateway
// (rollout/get).
type GatewayView struct {
	Gateway string `json:"gateway"`
	// Online says whether the gateway is connected now.
	Online bool `json:"online"`
	// Devices counts its children taking part; Counts them by state (only
	// the states some are in); Unreachable those in flight that are cut
	// off by the gateway's disconnect.
	Devices     int            `json:"devices"`
	Counts      map[string]int `json:"counts"`
	Unreachable int            `json:"unreachable"`
}

// MaxGatewayViews bounds View.Gateways: the gateways with the most children
// in the rollout are listed, the rest counted in View.MoreGateways.
const MaxGatewayViews = 100

// gatewayViews groups the members of r that are children of gateways under
// their gateway. Callers hold e.mu.
func (e *Engine) gatewayViews(r *run) ([]GatewayView, int, int) {
	by := map[string]*GatewayView{}
	unreachable := 0
	for _, m := range r.members {
		d, ok := e.reg.Lookup(m.id)
		if !ok || d.Parent == "" || m.state == Skipped || m.state == Cancelled {
			continue
		}
		g := by[d.Parent]
		if g == nil {
			g = &GatewayView{Gateway: d.Parent, Counts: map[string]int{}}
			if gv, ok := e.reg.Get(d.Parent); ok {
				g.Online = gv.Status.Online
			}
			by[d.Parent] = g
		}
		g.Devices++
		g.Counts[m.state.String()]++
		if m.state.inFlight() {
			if v, ok := e.reg.Get(m.id); ok && e.cutOff(&v) != "" {
				g.Unreachable++
				unreachable++
			}
		}
	}
	out := make([]GatewayView, 0, len(by))
	for _, g := range by {
		out = append(out, *g)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Devices != out[j].Devices {
			return out[i].Devices > out[j].Devices
		}
		return out[i].Gateway < out[j].Gateway
	})
	more := 0
	if len(out) > MaxGatewayViews {
		more, out = len(out)-MaxGatewayViews, out[:MaxGatewayViews]
	}
	return out, more, unreachable
}

func nanoTime(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// Metrics is a rollout's state for the metrics: its state and its devices
// by wave and state.
type Metrics struct {
	ID    string
	State string
	Waves []WaveMetrics
}

// WaveMetrics counts a wave's devices by state (every state), and its
// health failures (among its results).
type WaveMetrics struct {
	Name           string
	Counts         [numStates]int
	HealthFailures int
}

// Metrics returns the rollouts in memory (the active ones and the most
// recently finished, Options.KeepFinished), by ID.
func (e *Engine) Metrics() []Metrics {
	e.mu.RLock()
	defer e.mu.RUnlock()
	out := make([]Metrics, 0, len(e.runs))
	for _, r := range e.runs {
		m := Metrics{ID: r.rec.ID, State: r.rec.State}
		for i, w := range r.rec.Waves {
			wm := WaveMetrics{Name: w.Name}
			if i < len(r.counts) {
				copy(wm.Counts[:], r.counts[i][:numStates])
				wm.HealthFailures = r.counts[i][healthIdx]
			}
			m.Waves = append(m.Waves, wm)
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
