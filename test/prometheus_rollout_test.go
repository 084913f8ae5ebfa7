package test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/cmd/devsim/sim"
	"github.com/otamq/otamq/ota/fleet"
)

// TestPrometheusMidRollout runs a real Prometheus against a broker in the
// middle of a rollout: simulated devices took the canary wave of a release
// (some succeeded, some rolled back, some failed their health check), the
// bad canary paused the rollout and the next wave waits. Every query of
// every panel of the dashboard returns data, every recording rule
// records, every otamq_ name the dashboard and the rules use is exported,
// and the alerts that must fire are pending or firing with their labels,
// the others not.
func TestPrometheusMidRollout(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t, func(o *broker.Options) { o.RolloutTick = 200 * time.Millisecond })
	p := startPrometheus(t, w.HTTPAddr())

	// The canary: 10 esp32-v2 devices in eu (2 roll back at boot, 1 fails
	// its health check and rolls back) and 2 esp32-v3 in us (1 fails its
	// health check). The rest: 8 devices for the next wave.
	canaryEU, canaryUS, rest := ids("canary-eu-", 10), ids("canary-us-", 2), ids("rest-", 8)
	profiles := map[string]sim.Profile{"canary-eu-001": sim.Rollback, "canary-eu-002": sim.Rollback,
		"canary-eu-003": sim.BadHealth, "canary-us-001": sim.BadHealth}
	all := slices.Concat(canaryEU, canaryUS, rest)
	specs := w.registerSims(t, all, func(r *sim.Registration) {
		r.Hardware, r.Region = "esp32-v2", "eu"
		if strings.HasPrefix(r.ID, "canary-us-") || r.ID >= "rest-005" {
			r.Hardware, r.Region = "esp32-v3", "us"
		}
		if strings.HasPrefix(r.ID, "canary-") {
			r.Groups = []string{"canary"}
		}
	})
	for i := range specs {
		specs[i].Profile = profiles[specs[i].ID]
		if strings.HasPrefix(specs[i].ID, "canary-us-") || specs[i].ID >= "rest-005" {
			specs[i].Hardware = "esp32-v3"
		}
	}
	w.simFleet(t, specs)
	w.waitDevices(t, 30*time.Second, all, func(_ string, st fleet.Status) error {
		if !st.Online || st.Firmware != "1.0.0" {
			return fmt.Errorf("online %v, firmware %q", st.Online, st.Firmware)
		}
		return nil
	})

	rel := w.release(makeFirmware(t, w.key, "1.1.0", []string{"esp32-v2", "esp32-v3"}, 16*1024))
	spec := fmt.Sprintf(`id: r-mid
release: %s
waves:
  - {name: canary, groups: [canary]}
  - {percent: [100]}
probation: 2s
bake: 1m
`, rel.ID)
	ctx := context.Background()
	if err := w.admin().Call(ctx, "rollout/create", map[string]any{"yaml": spec}, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.admin().Call(ctx, "rollout/start", map[string]any{"id": "r-mid"}, nil); err != nil {
		t.Fatal(err)
	}

	// The canary is judged and the rollout paused on its rollbacks; the
	// next wave has not started.
	type waveView struct {
		Name           string         `json:"name"`
		State          string         `json:"state"`
		Counts         map[string]int `json:"counts"`
		HealthFailures int            `json:"health_failures"`
	}
	var view struct {
		State    string     `json:"state"`
		PausedBy string     `json:"paused_by"`
		Reason   string     `json:"reason"`
		Waves    []waveView `json:"waves"`
	}
	eventually(t, 90*time.Second, func() error {
		if err := w.admin().Call(ctx, "rollout/get", map[string]any{"id": "r-mid"}, &view); err != nil {
			return err
		}
		if len(view.Waves) != 2 {
			return fmt.Errorf("waves %+v", view.Waves)
		}
		c := view.Waves[0].Counts
		if view.State != "paused" || c["succeeded"] != 8 || c["rolled_back"] != 4 || view.Waves[0].HealthFailures != 2 {
			return fmt.Errorf("state %s (%s), canary %v, %d health failures", view.State, view.Reason, c, view.Waves[0].HealthFailures)
		}
		return nil
	})
	if view.PausedBy != "threshold" || view.Waves[1].State != "pending" || view.Waves[1].Counts["eligible"] != 8 {
		t.Fatalf("paused by %q (%s); next wave %+v", view.PausedBy, view.Reason, view.Waves[1])
	}

	// Prometheus scraped the final counts.
	want := map[string]map[string]float64{
		`otamq_rollout_state{rollout="r-mid"} == 1`: {"rollout=r-mid,state=paused": 1},
		`otamq_rollout_devices{rollout="r-mid",wave="canary"} > 0`: {"rollout=r-mid,state=rolled_back,wave=canary": 4,
			"rollout=r-mid,state=succeeded,wave=canary": 8},
		`otamq_rollout_devices{rollout="r-mid",wave="100%"} > 0`: {"rollout=r-mid,state=eligible,wave=100%": 8},
		`otamq_rollout_health_failures{rollout="r-mid"}`:         {"rollout=r-mid,wave=100%": 0, "rollout=r-mid,wave=canary": 2},
		// each device once, by its first result: a health failure that
		// rolled back is failed
		`otamq_updates_total`: {
			"hardware=esp32-v2,region=eu,result=succeeded,version=1.1.0":   7,
			"hardware=esp32-v2,region=eu,result=rolled_back,version=1.1.0": 2,
			"hardware=esp32-v2,region=eu,result=failed,version=1.1.0":      1,
			"hardware=esp32-v3,region=us,result=succeeded,version=1.1.0":   1,
			"hardware=esp32-v3,region=us,result=failed,version=1.1.0":      1},
		`otamq_rollbacks_total`: {"hardware=esp32-v2,region=eu,version=1.1.0": 3, "hardware=esp32-v3,region=us,version=1.1.0": 1},
		`otamq_update_health_failures_total`: {"hardware=esp32-v2,region=eu,version=1.1.0": 1,
			"hardware=esp32-v3,region=us,version=1.1.0": 1},
		// the recording rules: the canary's rates as the engine has them
		// (4 of 12, 2 of 12, in basis points); the esp32-v2/eu slice is
		// 10 results, the minimum sample: 3 rollbacks, 1 health failure;
		// esp32-v3/us has too few
		`rollout_wave:otamq_rollout_rollback_ratio`:              {"rollout=r-mid,wave=canary": 0.3333},
		`rollout_wave:otamq_rollout_health_ratio`:                {"rollout=r-mid,wave=canary": 0.1666},
		`hardware_region_version:otamq_update_rollback_ratio:1h`: {"hardware=esp32-v2,region=eu,version=1.1.0": 0.3},
		`hardware_region_version:otamq_update_health_ratio:1h`:   {"hardware=esp32-v2,region=eu,version=1.1.0": 0.1},
	}
	for expr, w := range want {
		eventually(t, 30*time.Second, func() error {
			got, err := p.query(expr)
			if err != nil {
				return err
			}
			if fmt.Sprint(got) != fmt.Sprint(w) {
				return fmt.Errorf("%s = %v, want %v", expr, got, w)
			}
			return nil
		})
	}

	// Every query of every panel returns data, for this rollout; the
	// template variable lists it.
	dash := loadDashboard(t)
	vars := map[string]string{"rollout": "r-mid"}
	for _, pn := range dash.allPanels() {
		if pn.Type != "row" && len(pn.Targets) == 0 {
			t.Errorf("panel %q has no query", pn.Title)
		}
		for _, tg := range pn.Targets {
			expr := grafanaExpr(tg.Expr, vars)
			eventually(t, 30*time.Second, func() error {
				got, err := p.query(expr)
				if err != nil {
					return fmt.Errorf("panel %q: %v", pn.Title, err)
				}
				if len(got) == 0 {
					return fmt.Errorf("panel %q: no data for %s", pn.Title, expr)
				}
				return nil
			})
		}
	}
	for _, v := range dash.Templating.List {
		metric, label, ok := labelValues(v.Query)
		if !ok {
			t.Fatalf("template variable %s: query %q is not label_values(METRIC, LABEL)", v.Name, v.Query)
		}
		got, err := p.query("count by (" + label + ") (" + metric + ")")
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := got[label+"=r-mid"]; !ok {
			t.Errorf("template variable %s lists %v, not r-mid", v.Name, got)
		}
	}
	if len(dash.Templating.List) == 0 {
		t.Error("the dashboard has no template variable")
	}

	// Every recording rule records, and no rule fails to evaluate on real
	// series (a matching error shows only with data).
	rules := loadRules(t)
	for _, name := range rules.records() {
		eventually(t, 30*time.Second, func() error {
			got, err := p.query(name)
			if err != nil {
				return err
			}
			if len(got) == 0 {
				return fmt.Errorf("recording rule %s has no data", name)
			}
			return nil
		})
	}
	rulesHealthy(t, p)

	// Every otamq_ name the dashboard and the rules use is exported.
	exported, err := httpGet("http://" + w.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range usedNames(t, rules) {
		if !strings.Contains(exported, "\n"+n+" ") && !strings.Contains(exported, "\n"+n+"{") {
			t.Errorf("%s is used by the dashboard or the alert rules but not exported", n)
		}
	}

	// The alerts: the rollout is paused; its canary's rollbacks (33 %)
	// are critical and a warning, its health failures (16.7 %) a warning
	// only; the esp32-v2/eu slice's rollbacks (30 %) too, its health
	// failures (exactly 10 %) not; esp32-v3/us (2 results) and the
	// pending wave nothing.
	wantAlerts := []string{
		"OtamqRolloutHealthFailureRate rollout=r-mid severity=warning wave=canary",
		"OtamqRolloutPaused rollout=r-mid severity=warning state=paused",
		"OtamqRolloutRollbackRate rollout=r-mid severity=critical wave=canary",
		"OtamqRolloutRollbackRate rollout=r-mid severity=warning wave=canary",
		"OtamqUpdateRollbackRate hardware=esp32-v2 region=eu severity=critical version=1.1.0",
		"OtamqUpdateRollbackRate hardware=esp32-v2 region=eu severity=warning version=1.1.0",
	}
	eventually(t, 30*time.Second, func() error {
		got, err := p.rolloutAlerts()
		if err != nil {
			return err
		}
		if !slices.Equal(got, wantAlerts) {
			return fmt.Errorf("alerts\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantAlerts, "\n"))
		}
		return nil
	})
}

// rolloutAlerts returns the pending and firing alerts of the rollout
// rules, each as "NAME label=value..." (job and instance left out),
// sorted.
func (p *promServer) rolloutAlerts() ([]string, error) {
	body, err := httpGet("http://" + p.addr + "/api/v1/alerts")
	if err != nil {
		return nil, err
	}
	var r struct {
		Data struct {
			Alerts []struct {
				Labels map[string]string `json:"labels"`
				State  string            `json:"state"`
			} `json:"alerts"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		return nil, err
	}
	var out []string
	for _, a := range r.Data.Alerts {
		name := a.Labels["alertname"]
		if !strings.HasPrefix(name, "OtamqRollout") && !strings.HasPrefix(name, "OtamqUpdate") {
			continue
		}
		if a.State != "pending" && a.State != "firing" {
			return nil, fmt.Errorf("%s in state %q", name, a.State)
		}
		var kv []string
		for k, v := range a.Labels {
			if k != "alertname" && k != "job" && k != "instance" {
				kv = append(kv, k+"="+v)
			}
		}
		sort.Strings(kv)
		out = append(out, name+" "+strings.Join(kv, " "))
	}
	sort.Strings(out)
	return out, nil
}
