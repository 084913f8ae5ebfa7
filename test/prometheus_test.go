package test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// promServer is a real Prometheus scraping the broker.
type promServer struct {
	addr string
}

func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func startPrometheus(t testing.TB, target string) *promServer {
	t.Helper()
	bin := needCommand(t, "prometheus")
	dir := t.TempDir()
	rules, err := filepath.Abs(filepath.Join(repoRoot(), "config", "prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: otamq
    static_configs:
      - targets: [%q]
`, rules, target)
	cfgFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freePort(t)
	cmd := exec.Command(bin, "--config.file="+cfgFile, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus log:\n%s", logs.String())
		}
	})
	eventually(t, 30*time.Second, func() error {
		_, err := httpGet("http://" + addr + "/-/ready")
		return err
	})
	return &promServer{addr: addr}
}

// query evaluates expr now and returns its samples as label-set → value.
func (p *promServer) query(expr string) (map[string]float64, error) {
	body, err := httpGet("http://" + p.addr + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return nil, fmt.Errorf("%s: %v: %s", expr, err, body)
	}
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		return nil, err
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("%s: %s", expr, r.Error)
	}
	out := map[string]float64{}
	for _, s := range r.Data.Result {
		var keys []string
		for k, v := range s.Metric {
			if k != "__name__" && k != "instance" && k != "job" {
				keys = append(keys, k+"="+v)
			}
		}
		sort.Strings(keys)
		var v float64
		fmt.Sscan(fmt.Sprint(s.Value[1]), &v)
		out[strings.Join(keys, ",")] = v
	}
	return out, nil
}

func TestMetricsScrapedByPrometheus(t *testing.T) {
	b := startBroker(t)
	tok := b.register("d1", "device", "", map[string]any{"hardware": "esp32-v2"})
	b.register("d2", "device", "", map[string]any{"hardware": "esp32-v3"})
	d := b.device("d1", tok)
	d.publish("dm/d1/birth", birthPayload)
	for range 3 {
		d.publish("dm/d1/hb", hbPayload)
	}
	d.publish("dm/d1/hb", []byte{0xff})

	p := startPrometheus(t, b.HTTPAddr())
	want := map[string]map[string]float64{
		"otamq_heartbeats_total":                             {"": 3},
		"otamq_births_total":                                 {"": 1},
		"otamq_devices_connected":                            {"": 1},
		"otamq_devices_registered":                           {"hardware=esp32-v2": 1, "hardware=esp32-v3": 1},
		"otamq_devices_by_version":                           {"hardware=esp32-v2,version=1.0.0": 1, "hardware=esp32-v3,version=unknown": 1},
		`otamq_rejected_total{reason="malformed_payload"}`:   {"reason=malformed_payload": 1},
		`otamq_admin_requests_total{verb="device/register"}`: {"result=ok,verb=device/register": 2},
		`up{job="otamq"}`:                                    {"": 1},
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

	// Every expression of the dashboard evaluates in Prometheus, and the
	// alert rules load and evaluate. A broker without a rollout has no
	// rollout series: TestPrometheusMidRollout checks that every panel
	// returns data and that every name the dashboard and the rules use is
	// exported.
	for _, pn := range loadDashboard(t).allPanels() {
		for _, tg := range pn.Targets {
			if _, err := p.query(grafanaExpr(tg.Expr, nil)); err != nil {
				t.Errorf("panel %q: %v", pn.Title, err)
			}
		}
	}
	rulesHealthy(t, p)
}

// rulesHealthy waits until Prometheus evaluated every rule without an
// error.
func rulesHealthy(t *testing.T, p *promServer) {
	t.Helper()
	eventually(t, 30*time.Second, func() error {
		body, err := httpGet("http://" + p.addr + "/api/v1/rules")
		if err != nil {
			return err
		}
		var r struct {
			Data struct {
				Groups []struct {
					Rules []struct {
						Name      string `json:"name"`
						Health    string `json:"health"`
						LastError string `json:"lastError"`
					} `json:"rules"`
				} `json:"groups"`
			} `json:"data"`
		}
		if err := json.Unmarshal([]byte(body), &r); err != nil {
			return err
		}
		n := 0
		for _, g := range r.Data.Groups {
			for _, rule := range g.Rules {
				if rule.Health != "ok" {
					return fmt.Errorf("rule %s: health %q %s", rule.Name, rule.Health, rule.LastError)
				}
				n++
			}
		}
		if want := len(loadRules(t).all()); n != want {
			return fmt.Errorf("%d rules loaded, alerts.yml has %d", n, want)
		}
		return nil
	})
}

// dashboard is what the tests read of config/grafana/otamq-fleet.json.
type dashboard struct {
	Panels     []dashPanel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Query string `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type dashPanel struct {
	Title   string `json:"title"`
	Type    string `json:"type"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []dashPanel `json:"panels"` // a collapsed row's
}

func loadDashboard(t testing.TB) dashboard {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(), "config", "grafana", "otamq-fleet.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("otamq-fleet.json: %v", err)
	}
	return d
}

// allPanels returns the panels, those of collapsed rows included.
func (d dashboard) allPanels() []dashPanel {
	var out []dashPanel
	var walk func([]dashPanel)
	walk = func(ps []dashPanel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// grafanaExpr replaces what Grafana replaces in a query: $__rate_interval
// (1m), and the template variables (vars, else their "All" value ".*").
func grafanaExpr(expr string, vars map[string]string) string {
	expr = strings.ReplaceAll(expr, "$__rate_interval", "1m")
	return regexp.MustCompile(`\$\{?([a-z_]+)\}?`).ReplaceAllStringFunc(expr, func(m string) string {
		name := strings.Trim(m, "${}")
		if v, ok := vars[name]; ok {
			return v
		}
		return ".*"
	})
}

// labelValues parses a Grafana variable query label_values(METRIC, LABEL).
func labelValues(q string) (metric, label string, ok bool) {
	m := regexp.MustCompile(`^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)$`).FindStringSubmatch(q)
	if m == nil {
		return "", "", false
	}
	return m[1], m[2], true
}

// ruleFile is what the tests read of config/prometheus/alerts.yml.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []rule `yaml:"rules"`
	} `yaml:"groups"`
}

type rule struct {
	Record string `yaml:"record"`
	Alert  string `yaml:"alert"`
	Expr   string `yaml:"expr"`
}

func loadRules(t testing.TB) ruleFile {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(), "config", "prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var f ruleFile
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("alerts.yml: %v", err)
	}
	return f
}

func (f ruleFile) all() []rule {
	var out []rule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	return out
}

// records returns the names the recording rules record.
func (f ruleFile) records() []string {
	var out []string
	for _, r := range f.all() {
		if r.Record != "" {
			out = append(out, r.Record)
		}
	}
	return out
}

// usedNames returns the otamq_ metric names that the dashboard's queries
// and the rules' expressions use, without the recorded ones.
func usedNames(t testing.TB, rules ruleFile) []string {
	t.Helper()
	var exprs []string
	dash := loadDashboard(t)
	for _, v := range dash.Templating.List {
		exprs = append(exprs, v.Query)
	}
	for _, p := range dash.allPanels() {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, r := range rules.all() {
		exprs = append(exprs, r.Expr)
	}
	text := strings.Join(exprs, "\n")
	for _, rec := range rules.records() {
		text = strings.ReplaceAll(text, rec, "")
	}
	seen := map[string]bool{}
	var out []string
	for _, n := range regexp.MustCompile(`otamq_[a-z_]+`).FindAllString(text, -1) {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}
