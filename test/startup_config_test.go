package test

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigErrorsAllAtOnce: otamq reports every problem of its
// configuration file and flags in one go, one line each naming the key
// (and the flag that sets it), and exits 2 without starting.
func TestConfigErrorsAllAtOnce(t *testing.T) {
	dir := t.TempDir()
	cfg := writeFile(t, filepath.Join(dir, "otamq.yaml"), `data_dir: `+filepath.Join(dir, "data")+`
mqtt:
  tcp_adr: 127.0.0.1:1883
  connect_timeout: 10
  max_packet_size: 100
fleet:
  flush_interval: soon
admin:
  workers: lots
log:
  level: loud
`)
	stdout, stderr, code := runOtamq(t, nil, "--config", cfg, "--http-addr", "127.0.0.1", "--log-format", "xml")
	if code != 2 {
		t.Fatalf("exit %d, want 2\n%s%s", code, stdout, stderr)
	}
	want := []string{
		"otamq: " + cfg + ": line 3: mqtt.tcp_adr: unknown setting (did you mean mqtt.tcp_addr?)",
		"otamq: " + cfg + ": line 4: mqtt.connect_timeout: duration 10: add a unit, e.g. 10s",
		"otamq: " + cfg + `: line 7: fleet.flush_interval: duration "soon": want a number with a unit, e.g. 10s, 500ms or 1h30m`,
		"otamq: " + cfg + `: line 9: admin.workers: "lots" is not an integer`,
		`otamq: log level "loud": want debug, info, warn or error (set --log-level or log.level)`,
		`otamq: log format "xml": want text or json (set --log-format or log.format)`,
		`otamq: http listener "127.0.0.1": missing port in address (set --http-addr or http.addr)`,
		"otamq: max packet size 100 is below 1024 bytes (set mqtt.max_packet_size)",
	}
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if len(lines) != len(want) {
		t.Errorf("%d lines, want %d:\n%s", len(lines), len(want), stderr)
	}
	for _, w := range want {
		if !strings.Contains(stderr, w+"\n") {
			t.Errorf("stderr lacks the line %q:\n%s", w, stderr)
		}
	}
	if strings.Contains(stdout, "First operator") {
		t.Fatal("a broker with a bad configuration started")
	}
}
