package test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// documentedMetrics returns the metrics docs/METRICS.md lists in its
// tables, by type ("gauge", "counter", "histogram"): name → labels cell.
func documentedMetrics(t *testing.T) map[string]map[string]string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join(repoRoot(), "docs", "METRICS.md"))
	if err != nil {
		t.Fatal(err)
	}
	name := regexp.MustCompile("`(otamq_[a-z_]+)`")
	out := map[string]map[string]string{}
	for _, line := range strings.Split(string(doc), "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 4 || !strings.HasPrefix(strings.TrimSpace(line), "|") {
			continue
		}
		typ := strings.TrimSpace(cells[2])
		labels := ""
		if len(cells) >= 6 {
			labels = cells[3]
		}
		for _, m := range name.FindAllStringSubmatch(cells[1], -1) {
			if out[typ] == nil {
				out[typ] = map[string]string{}
			}
			out[typ][m[1]] = labels
		}
	}
	return out
}

// TestGaugesExportedWhenZero: a fresh broker, with no device, release or
// client, exports every gauge docs/METRICS.md lists, so that dashboards show
// 0 rather than "No data"; the fleet's gauges are 0. Gauges labelled by
// rollout have series once there is a rollout (TestPrometheusMidRollout
// checks them).
func TestGaugesExportedWhenZero(t *testing.T) {
	var gauges []string
	perRollout := 0
	for g, labels := range documentedMetrics(t)["gauge"] {
		if strings.Contains(labels, "`rollout`") {
			perRollout++
			continue
		}
		gauges = append(gauges, g)
	}
	sort.Strings(gauges)
	if len(gauges) < 9 || perRollout < 3 {
		t.Fatalf("docs/METRICS.md lists %d gauges and %d per rollout: %v", len(gauges), perRollout, gauges)
	}
	b := startBroker(t)
	body, err := httpGet("http://" + b.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range gauges {
		sample := regexp.MustCompile(`(?m)^` + g + `(\{[^}]*\})? (\S+)$`)
		ms := sample.FindAllStringSubmatch(body, -1)
		if len(ms) == 0 {
			t.Errorf("%s is not exported by a fresh broker", g)
			continue
		}
		if strings.HasPrefix(g, "otamq_devices_") || g == "otamq_releases" {
			for _, m := range ms {
				if m[2] != "0" {
					t.Errorf("%s%s = %s on a fresh broker, want 0", g, m[1], m[2])
				}
			}
		}
	}
	// With a device registered the placeholder series goes: the device's
	// own hardware is counted.
	b.register("d1", "device", "", map[string]any{"hardware": "esp32-v2"})
	for series, want := range map[string]string{
		`otamq_devices_registered{hardware="esp32-v2"}`:                   "1",
		`otamq_devices_by_version{hardware="esp32-v2",version="unknown"}`: "1",
	} {
		if got, err := b.metric(series); err != nil || got != want {
			t.Errorf("%s = %q (%v), want %s", series, got, err, want)
		}
	}
	if _, err := b.metric(`otamq_devices_registered{hardware="unknown"}`); err == nil {
		t.Error("the zero series stays once a device is counted")
	}
}

// TestGrafanaDashboardAsksForDataSource: the dashboard declares its
// Prometheus data source as an import input (__inputs), so Grafana's import
// dialog asks for it, and every panel and query uses that input.
func TestGrafanaDashboardAsksForDataSource(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(repoRoot(), "config", "grafana", "otamq-fleet.json"))
	if err != nil {
		t.Fatal(err)
	}
	type ds struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	}
	type panel struct {
		Title      string  `json:"title"`
		Type       string  `json:"type"`
		Datasource *ds     `json:"datasource"`
		Panels     []panel `json:"panels"` // inside rows
		Targets    []struct {
			RefID      string `json:"refId"`
			Expr       string `json:"expr"`
			Datasource *ds    `json:"datasource"`
		} `json:"targets"`
	}
	var d struct {
		Inputs []struct {
			Name, Type, PluginID string
		} `json:"__inputs"`
		Requires []struct {
			Type, ID string
		} `json:"__requires"`
		Templating struct {
			List []struct{ Name, Type string } `json:"list"`
		} `json:"templating"`
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatal(err)
	}
	if len(d.Inputs) != 1 || d.Inputs[0].Type != "datasource" || d.Inputs[0].PluginID != "prometheus" || d.Inputs[0].Name == "" {
		t.Fatalf("__inputs = %+v, want one Prometheus data source input", d.Inputs)
	}
	uid := "${" + d.Inputs[0].Name + "}"
	required := false
	for _, r := range d.Requires {
		required = required || r.Type == "datasource" && r.ID == "prometheus"
	}
	if !required {
		t.Errorf("__requires does not name the prometheus data source: %+v", d.Requires)
	}
	for _, v := range d.Templating.List {
		if v.Type == "datasource" {
			t.Errorf("templating variable %q of type datasource: the panels use the import input %s", v.Name, uid)
		}
	}
	var check func(ps []panel)
	n := 0
	check = func(ps []panel) {
		for _, p := range ps {
			check(p.Panels)
			if p.Type == "row" {
				continue
			}
			n++
			if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != uid {
				t.Errorf("panel %q: datasource %+v, want prometheus %s", p.Title, p.Datasource, uid)
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for _, tg := range p.Targets {
				if tg.Datasource != nil && (tg.Datasource.Type != "prometheus" || tg.Datasource.UID != uid) {
					t.Errorf("panel %q query %s: datasource %+v, want prometheus %s", p.Title, tg.RefID, tg.Datasource, uid)
				}
			}
		}
	}
	check(d.Panels)
	if n < 10 {
		t.Fatalf("only %d panels", n)
	}
	// No reference to a variable that is not defined.
	for _, m := range regexp.MustCompile(`\$\{([A-Za-z_]+)\}`).FindAllStringSubmatch(string(raw), -1) {
		if m[1] != d.Inputs[0].Name {
			t.Errorf("the dashboard uses ${%s}, which it does not define", m[1])
		}
	}
}
