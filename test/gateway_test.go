package test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Gateways with real processes: otamq-gateway (agent-c: the agent's
// simulated device plus a relay with a cache) connected to the broker, and
// children that are otamq-agent processes on a local link (a UNIX socket,
// docs/PROTOCOL.md "Local links"), so every byte a child gets went through
// the link framing and the gateway's cache.

var gatewayBuild struct {
	once sync.Once
	path string
	err  error
}

// gatewayBinary builds agent-c's otamq-gateway once per test run, beside
// otamq-agent.
func gatewayBinary(t testing.TB) string {
	t.Helper()
	agentBinary(t)
	gatewayBuild.once.Do(func() {
		dir := filepath.Join(binDir, "agent-c")
		gatewayBuild.path = filepath.Join(dir, "otamq-gateway")
		cmd := exec.Command("make", "-C", filepath.Join(repoRoot(), "agent-c"), "B="+dir, gatewayBuild.path)
		if out, err := cmd.CombinedOutput(); err != nil {
			gatewayBuild.err = fmt.Errorf("make -C agent-c otamq-gateway: %v\n%s", err, out)
		}
	})
	if gatewayBuild.err != nil {
		t.Fatal(gatewayBuild.err)
	}
	return gatewayBuild.path
}

// startProc runs a supervised agent-c process (otamq-agent or
// otamq-gateway) with args; it is stopped at the end of the test.
func startAgentC(t testing.TB, bin string, args []string) *agentProc {
	t.Helper()
	a := &agentProc{t: t, cmd: exec.Command(bin, args...), out: &syncBuffer{}}
	a.cmd.Stdout, a.cmd.Stderr = a.out, a.out
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.stop)
	return a
}

// gwWorld is an agent world with one gateway's socket.
type gwWorld struct {
	*agentWorld
	sock string
}

// shortDir is a temporary directory with a short path: a UNIX socket's
// path has at most 107 bytes.
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "gw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

// gateway registers gateway id and starts otamq-gateway for it (supervised,
// factory image 1.0.0) listening on sock, with url as its broker.
func (w *agentWorld) gateway(t *testing.T, id, url, sock string, flags ...string) *agentProc {
	t.Helper()
	tok := w.register(id, "gateway", "", map[string]any{"hardware": "esp32-v2"})
	dir := t.TempDir()
	args := []string{"--broker", url, "--id", id, "--token", tok, "--data-dir", dir,
		"--key", w.keyFile, "--initial-version", "1.0.0", "--supervise", "--verbose",
		"--listen", "unix:" + sock, "--cache-dir", filepath.Join(dir, "cache")}
	args = append(args, agentTiming...)
	a := startAgentC(t, gatewayBinary(t), append(args, flags...))
	a.dir = dir
	return a
}

// child registers id as a child of gw and starts otamq-agent for it on
// the local link at sock.
func (w *agentWorld) child(t *testing.T, id, gw, sock string, flags ...string) *agentProc {
	t.Helper()
	w.register(id, "device", gw, map[string]any{"hardware": "esp32-v2"})
	dir := t.TempDir()
	args := []string{"--link", "unix:" + sock, "--id", id, "--data-dir", dir,
		"--key", w.keyFile, "--initial-version", "1.0.0", "--supervise", "--verbose"}
	args = append(args, agentTiming...)
	a := startAgentC(t, agentBinary(t), append(args, flags...))
	a.dir = dir
	return a
}

// waitReported waits until every device reported firmware fw in state st
// (st "" for any).
func (w *agentWorld) waitReported(t *testing.T, within time.Duration, ids []string, fw, st string) {
	t.Helper()
	eventually(t, within, func() error {
		for _, id := range ids {
			s := w.status(id)
			if s.Firmware != fw || (st != "" && s.OTAState != st) {
				return fmt.Errorf("%s: firmware %q, state %q (want %s %s)", id, s.Firmware, s.OTAState, fw, st)
			}
		}
		return nil
	})
}

// startRollout creates and starts a rollout of release rel to devices in
// one wave.
func (w *agentWorld) startRollout(t *testing.T, id, rel string, devices []string) {
	t.Helper()
	spec := fmt.Sprintf("id: %s\nrelease: %s\nselector: {devices: [%s]}\nwaves:\n  - {percent: [100]}\nprobation: 2s\n",
		id, rel, strings.Join(devices, ", "))
	ctx := context.Background()
	if err := w.admin().Call(ctx, "rollout/create", map[string]any{"yaml": spec}, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.admin().Call(ctx, "rollout/start", map[string]any{"id": id}, nil); err != nil {
		t.Fatal(err)
	}
}

func (w *agentWorld) blockBytes(t *testing.T) int {
	t.Helper()
	v, err := w.metric("otamq_block_bytes_total")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseFloat(v, 64)
	if err != nil {
		t.Fatal(err)
	}
	return int(n)
}

func childIDs(prefix string, n int) []string {
	var ids []string
	for i := 1; i <= n; i++ {
		ids = append(ids, fmt.Sprintf("%s%d", prefix, i))
	}
	return ids
}

// A gateway with 5 children through a real rollout: every child downloads
// from the gateway's cache, installs, reboots and commits, and the broker
// served the image's bytes once, to the gateway, not once per child.
func TestGatewayRollout(t *testing.T) {
	gatewayBinary(t)
	t.Parallel()
	w := newAgentWorld(t)
	sock := filepath.Join(shortDir(t), "gw.sock")
	gw := w.gateway(t, "gw-1", w.url(), sock)
	kids := childIDs("kid-", 5)
	for _, id := range kids {
		w.child(t, id, "gw-1", sock)
	}
	w.waitReported(t, 30*time.Second, append([]string{"gw-1"}, kids...), "1.0.0", "")
	for _, id := range kids {
		if st := w.status(id); st.Link != "via_gateway" {
			t.Errorf("%s reports connectivity %q, want via_gateway", id, st.Link)
		}
	}
	before := w.blockBytes(t)

	const size = 96 * 1024
	fw := simFirmware(t, w.key, "1.1.0", simHealthy, size)
	rel := w.release(fw)
	w.startRollout(t, "r-gw", rel.ID, kids)
	w.waitReported(t, 90*time.Second, kids, "1.1.0", "committed")
	for _, id := range kids {
		if err := hasEvents(w.timeline(id), "r-gw", "update.download.started", "update.download.completed",
			"update.reboot.completed", "update.health.ok"); err != nil {
			t.Error(err)
		}
	}
	if got := w.blockBytes(t) - before; got != size {
		t.Errorf("the broker served %d block bytes for a %d-byte image and 5 children (want one image: %d)", got, size, size)
	}
	if n := len(w.gets.requests("gw-1")); n == 0 {
		t.Errorf("the gateway made no block requests of its own")
	}
	if !strings.Contains(gw.out.String(), "complete, 98304 bytes") {
		t.Errorf("the gateway's log does not show the cached image complete")
	}
	w.noRefusals()
}
