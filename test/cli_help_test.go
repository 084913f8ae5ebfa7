package test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// runBinary runs one of the built binaries with args and env and returns
// its output and exit status.
func runBinary(t *testing.T, path string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatal(err)
		}
		code = ee.ExitCode()
	}
	return out.String(), errb.String(), code
}

// docFiles are the documents a user reads.
func docFiles(t *testing.T) []string {
	t.Helper()
	root := repoRoot()
	files := []string{filepath.Join(root, "README.md")}
	for _, glob := range []string{"docs/*.md", "agent-c/*.md", "agent-c/port/*/*.md", "agent-c/port/*/*/*.md", "config/*.yaml"} {
		m, err := filepath.Glob(filepath.Join(root, glob))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	return files
}

// TestOtactlHelpForDocumentedCommands: every "otactl A B" the documents
// mention answers "otactl A B --help" with that command's (or group's) usage
// and an example, never "unknown command", exit status 0.
func TestOtactlHelpForDocumentedCommands(t *testing.T) {
	otactl := binary(t, "otactl")
	mention := regexp.MustCompile(`otactl ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?`)
	seen := map[string]bool{}
	for _, f := range docFiles(t) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range mention.FindAllStringSubmatch(string(b), -1) {
			seen[strings.TrimSpace(m[1]+" "+m[2])] = true
		}
	}
	var names []string
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) < 20 {
		t.Fatalf("found only %d otactl mentions in the documents: %v", len(names), names)
	}
	for _, n := range names {
		args := append(strings.Fields(n), "--help")
		out, errOut, code := runBinary(t, otactl, nil, args...)
		if code != 0 || strings.Contains(out+errOut, "unknown command") || !strings.Contains(out, "Usage:") {
			t.Errorf("otactl %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
		}
	}
}

// TestOtactlCommandHelp: each command's --help is its own short usage with
// its flags and an example, on stdout; the global usage lists them all.
func TestOtactlCommandHelp(t *testing.T) {
	otactl := binary(t, "otactl")
	global, _, code := runBinary(t, otactl, nil, "--help")
	if code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	// The commands, from the global usage's command lines.
	line := regexp.MustCompile(`(?m)^  ([a-z]+(?: [a-z]+)?)(?: [A-Z][A-Za-z.@-]*)*  `)
	var cmds []string
	for _, m := range line.FindAllStringSubmatch(global, -1) {
		cmds = append(cmds, m[1])
	}
	if len(cmds) < 25 {
		t.Fatalf("the global usage lists %d commands:\n%s", len(cmds), global)
	}
	for _, c := range cmds {
		args := append(strings.Fields(c), "--help")
		out, errOut, code := runBinary(t, otactl, nil, args...)
		if code != 0 || errOut != "" || !strings.HasPrefix(out, "Usage:\n  otactl "+c) || !strings.Contains(out, "\nExamples:\n  ") ||
			strings.Contains(out, "Devices and gateways:") {
			t.Errorf("otactl %s --help: exit %d\nstdout:\n%s\nstderr:\n%s", c, code, out, errOut)
		}
	}
	// Flags of the command are listed, with their defaults.
	out, _, _ := runBinary(t, otactl, nil, "device", "list", "--help")
	for _, want := range []string{"--region string", "--online", "--limit int", "(default 100)", "otactl device list --region eu --online"} {
		if !strings.Contains(out, want) {
			t.Errorf("device list --help lacks %q:\n%s", want, out)
		}
	}
}

// TestOtactlUsageErrors: mistakes on the command line exit 2 with a message
// that says what to fix, before any connection is tried.
func TestOtactlUsageErrors(t *testing.T) {
	otactl := binary(t, "otactl")
	env := []string{"OTAMQ_URL=mqtt://127.0.0.1:1", "OTAMQ_USER=ops", "OTAMQ_PASSWORD=x"}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--timeout", "10", "device", "list"}, `invalid value "10" for flag -timeout: duration 10: add a unit, e.g. 10s`},
		{[]string{"device", "list", "--timeout", "-1s"}, "must be more than 0"},
		{[]string{"device", "list", "--limit", "many"}, `invalid value "many" for flag -limit`},
		{[]string{"device", "list", "extra"}, "unexpected arguments: extra"},
		{[]string{"device", "register"}, "exactly one device ID"},
		{[]string{"device", "update", "dev-1"}, "nothing to change"},
		{[]string{"device"}, "which command?"},
		{[]string{"devices", "list"}, `unknown command "devices"`},
		{[]string{"--url", "http://127.0.0.1:1883", "device", "list"}, "want mqtt://host:port or mqtts://host:port"},
		{[]string{"--user", "", "device", "list"}, "no operator given: set --user or OTAMQ_USER"},
		{[]string{"key", "add"}, "want the public key file"},
		{[]string{"sign", "fw.bin"}, "--key KEY"},
	}
	for _, c := range cases {
		out, errOut, code := runBinary(t, otactl, env, c.args...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("otactl %q: exit %d, want 2 with %q\n%s%s", c.args, code, c.want, out, errOut)
		}
	}
	// A duration with its unit is taken; the broker is not there: exit 1.
	_, errOut, code := runBinary(t, otactl, env, "--timeout", "2s", "device", "list")
	if code != 1 || !strings.Contains(errOut, "is otamq running") {
		t.Errorf("--timeout 2s: exit %d\n%s", code, errOut)
	}
}

// TestVersionFlags: otamq, otactl and the agent say which build they are.
func TestVersionFlags(t *testing.T) {
	for _, c := range []struct{ path, prefix string }{
		{binary(t, "otamq"), "otamq "}, {binary(t, "otactl"), "otactl "}, {agentBinary(t), "otamq-agent "},
	} {
		out, errOut, code := runBinary(t, c.path, nil, "--version")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if code != 0 || len(lines) != 1 || !strings.HasPrefix(lines[0], c.prefix) || len(lines[0]) <= len(c.prefix) {
			t.Errorf("%s --version: exit %d\n%s%s", c.path, code, out, errOut)
		}
	}
	// The agent's is the version it reports in its birth.
	out, _, _ := runBinary(t, agentBinary(t), nil, "--version")
	src, err := os.ReadFile(filepath.Join(repoRoot(), "agent-c", "include", "otamq", "ota_agent.h"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`#define OTA_AGENT_VERSION "([^"]+)"`).FindSubmatch(src)
	if m == nil || strings.TrimSpace(out) != "otamq-agent "+string(m[1]) {
		t.Errorf("agent --version %q, OTA_AGENT_VERSION %q", out, m)
	}
}
