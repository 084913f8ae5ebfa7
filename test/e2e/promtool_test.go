package e2e

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/otamq/otamq/ota/rollout"
)

// waveAlerts are the alerts on a rollout wave's rates in
// config/prometheus/alerts.yml, and the recorded ratio each compares.
var waveAlerts = map[string]string{
	"OtamqRolloutRollbackRate":      "rollout_wave:otamq_rollout_rollback_ratio",
	"OtamqRolloutHealthFailureRate": "rollout_wave:otamq_rollout_health_ratio",
}

// alertExpr is one alert rule's expression: the ratio it compares and the
// threshold it must pass.
type alertExpr struct {
	alert, severity, expr, ratio string
	threshold                    float64
}

// waveAlertExprs reads the wave alerts' expressions from alerts.yml.
func (w *world) waveAlertExprs() []alertExpr {
	w.t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(), "config", "prometheus", "alerts.yml"))
	if err != nil {
		w.t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []struct {
				Alert  string            `yaml:"alert"`
				Expr   string            `yaml:"expr"`
				Labels map[string]string `yaml:"labels"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		w.t.Fatal(err)
	}
	var out []alertExpr
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			ratio, ok := waveAlerts[r.Alert]
			if !ok {
				continue
			}
			lhs, rhs, found := strings.Cut(r.Expr, " > ")
			thr, err := strconv.ParseFloat(strings.TrimSpace(rhs), 64)
			if !found || strings.TrimSpace(lhs) != ratio || err != nil {
				w.t.Fatalf("alert %s: expression %q is not %s > THRESHOLD", r.Alert, r.Expr, ratio)
			}
			out = append(out, alertExpr{r.Alert, r.Labels["severity"], r.Expr, ratio, thr})
		}
	}
	if len(out) != 4 {
		w.t.Fatalf("alerts.yml has %d wave alert rules, want 4 (warning and critical of each)", len(out))
	}
	return out
}

// ratio is the engine's way of a rate: whole basis points, rounded down.
func ratio(n, of int) float64 { return math.Floor(10000*float64(n)/float64(of)) / 10000 }

// checkWaveAlerts evaluates the wave alerts' expressions with promtool on
// the series of m (each held for 20 minutes, as if scraped so) and checks
// that each holds exactly for the waves whose rates, by the rollouts' own
// status, are past its threshold. It returns the alerts whose expression
// was true, as "alert severity rollout/wave ratio".
func (w *world) checkWaveAlerts(m metrics, views ...rollout.View) []string {
	w.t.Helper()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		w.t.Fatal("promtool not found: run `make deps` (it installs the Debian packages in .ci/packages)")
	}
	var series []string
	for _, name := range []string{"otamq_rollout_devices", "otamq_rollout_state", "otamq_rollout_health_failures"} {
		f := m[name]
		if f == nil {
			w.t.Fatalf("/metrics has no %s", name)
		}
		for _, x := range f.Metric {
			labels := []string{`job="otamq"`, `instance="e2e"`}
			for _, l := range x.Label {
				labels = append(labels, l.GetName()+"="+strconv.Quote(l.GetValue()))
			}
			v := x.GetGauge().GetValue()
			series = append(series, fmt.Sprintf("      - {series: '%s{%s}', values: '%gx20'}", name, strings.Join(labels, ","), v))
		}
	}
	var tests, fired []string
	for _, a := range w.waveAlertExprs() {
		var samples []string
		for _, v := range views {
			if v.State != "running" && v.State != "paused" {
				continue
			}
			for _, wv := range v.Waves {
				taking := 0
				for st, n := range wv.Counts {
					if st != "skipped" && st != "cancelled" {
						taking += n
					}
				}
				if sample := min(taking, 10); sample == 0 || wv.Judged < sample {
					continue
				}
				r := ratio(wv.Counts["rolled_back"], wv.Judged)
				if a.ratio == waveAlerts["OtamqRolloutHealthFailureRate"] {
					r = ratio(wv.HealthFailures, wv.Judged)
				}
				if r <= a.threshold {
					continue
				}
				samples = append(samples, fmt.Sprintf("          - {labels: '%s{instance=\"e2e\",job=\"otamq\",rollout=%q,wave=%q}', value: %g}",
					a.ratio, v.ID, wv.Name, r))
				fired = append(fired, fmt.Sprintf("%s %s %s/%s %g", a.alert, a.severity, v.ID, wv.Name, r))
			}
		}
		exp := " []"
		if len(samples) > 0 {
			exp = "\n" + strings.Join(samples, "\n")
		}
		tests = append(tests, fmt.Sprintf("      - expr: '%s'\n        eval_time: 16m\n        exp_samples:%s", a.expr, exp))
	}
	file := fmt.Sprintf("rule_files: [%s]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n%s\n    promql_expr_test:\n%s\n",
		strconv.Quote(filepath.Join(repoRoot(), "config", "prometheus", "alerts.yml")), strings.Join(series, "\n"), strings.Join(tests, "\n"))
	path := filepath.Join(w.dir, fmt.Sprintf("alerts_e2e_%d_test.yml", len(tests)))
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		w.t.Fatal(err)
	}
	out, err := exec.Command(promtool, "test", "rules", path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SUCCESS") {
		w.t.Errorf("promtool test rules on the scraped series: %v\n%s\n%s", err, out, file)
	}
	slices.Sort(fired)
	return fired
}
