package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/otamq/otamq/broker"
)

// TestAPIDocExamples runs the curl examples of docs/API.md ("Common tasks
// with curl"), in order, in one shell against a broker, with the files
// they name made for the test; the stream example runs for a few seconds.
func TestAPIDocExamples(t *testing.T) {
	t.Parallel()
	needCommand(t, "curl")
	needCommand(t, "jq")
	b := startBroker(t, func(o *broker.Options) { o.StreamHeartbeat = 100 * time.Millisecond })
	doc, err := os.ReadFile(filepath.Join(repoRoot(), "docs", "API.md"))
	if err != nil {
		t.Fatal(err)
	}
	section := string(doc)
	start := strings.Index(section, "## Common tasks with curl")
	if start < 0 {
		t.Fatal("docs/API.md has no section Common tasks with curl")
	}
	section = section[start+3:]
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	blocks := regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(section, -1)
	if len(blocks) < 7 {
		t.Fatalf("found %d examples", len(blocks))
	}
	var script strings.Builder
	script.WriteString("set -euo pipefail\n")
	streams := 0
	for i, bl := range blocks {
		code := bl[1]
		if strings.Contains(code, "/api/v1/events") {
			// The stream runs until interrupted: a few seconds here.
			streams++
			code = "timeout 3 " + strings.TrimSpace(code) + " > events.out || test $? -eq 124\ncat events.out\n"
		}
		script.WriteString(code)
		if i == 0 {
			// The examples' variables, pointed at this broker.
			script.WriteString("OTAMQ=" + b.apiBase() + "\nOTAMQ_USER=" + opID + "\n")
		}
	}
	if streams != 1 {
		t.Fatalf("%d stream examples", streams)
	}
	dir := t.TempDir()
	key, pub := newKey(t)
	fw := makeFirmware(t, key, "3.1.0", []string{"esp32-v2"}, 20*1024)
	for name, data := range map[string][]byte{"release-key.pub.pem": pub, "firmware.manifest": fw.signed, "firmware.bin": fw.image} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("bash", "-c", script.String())
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "OTAMQ_PASSWORD="+opPassword)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the examples failed: %v\n%s\nscript:\n%s", err, out, script.String())
	}
	for _, want := range []string{"dev-7\tfalse", "running", "paused", "retry:", ": heartbeat", "session/login", "rollout/start", "true"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
