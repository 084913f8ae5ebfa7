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

	// The dashboard and the alert rules speak the broker's metric names:
	// every otamq_ name they use is exported, and every expression of the
	// dashboard evaluates in Prometheus.
	exported, err := httpGet("http://" + b.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	dash, err := os.ReadFile(filepath.Join(repoRoot(), "config", "grafana", "otamq-fleet.json"))
	if err != nil {
		t.Fatal(err)
	}
	alerts, err := os.ReadFile(filepath.Join(repoRoot(), "config", "prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	names := regexp.MustCompile(`otamq_[a-z_]+`)
	for _, src := range [][]byte{dash, alerts} {
		for _, n := range names.FindAllString(string(src), -1) {
			if n == "otamq_fleet" {
				continue // the dashboard's uid, not a metric
			}
			if !strings.Contains(exported, "\n"+n+" ") && !strings.Contains(exported, "\n"+n+"{") {
				t.Errorf("%s is used by the dashboard or alerts but not exported", n)
			}
		}
	}
	var d2 struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(dash, &d2); err != nil {
		t.Fatal(err)
	}
	for _, pn := range d2.Panels {
		for _, tg := range pn.Targets {
			expr := strings.ReplaceAll(tg.Expr, "$__rate_interval", "1m")
			if _, err := p.query(expr); err != nil {
				t.Errorf("panel %q: %v", pn.Title, err)
			}
		}
	}
	// The alert rules load and evaluate.
	eventually(t, 30*time.Second, func() error {
		body, err := httpGet("http://" + p.addr + "/api/v1/rules")
		if err != nil {
			return err
		}
		if !strings.Contains(body, `"health":"ok"`) || strings.Contains(body, `"health":"err"`) {
			return fmt.Errorf("rules not healthy yet: %.300s", body)
		}
		return nil
	})
}
