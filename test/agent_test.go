package test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/wire"
	"github.com/otamq/otamq/test/testkit"
)

// The C agent (agent-c) as a real process against the broker: its POSIX
// port simulates a device with A/B slots in a data directory, and
// --supervise restarts it after a reboot, a crash, a watchdog reset or a
// SIGKILL (a power loss), as a bootloader would. The firmware it is sent
// are simulated images whose header says how they behave once booted, so a
// bad image is genuinely bad. Everything is checked through the broker: the
// device's birth and heartbeats (device/get), its events (device/timeline)
// and the block requests the broker received.

var agentBuild struct {
	once sync.Once
	path string
	err  error
}

// agentBinary builds agent-c's otamq-agent once per test run, with the
// agent's own Makefile, into the test's binary directory.
func agentBinary(t testing.TB) string {
	t.Helper()
	needCommand(t, "make")
	needCommand(t, "gcc")
	agentBuild.once.Do(func() {
		dir := filepath.Join(binDir, "agent-c")
		agentBuild.path = filepath.Join(dir, "otamq-agent")
		cmd := exec.Command("make", "-C", filepath.Join(repoRoot(), "agent-c"), "B="+dir, agentBuild.path)
		if out, err := cmd.CombinedOutput(); err != nil {
			agentBuild.err = fmt.Errorf("make -C agent-c otamq-agent: %v (libmosquitto-dev and libmbedtls-dev come from `make deps`)\n%s", err, out)
		}
	})
	if agentBuild.err != nil {
		t.Fatal(agentBuild.err)
	}
	return agentBuild.path
}

// Behaviours of a simulated image (agent-c/README.md, "Simulated firmware
// image header").
const (
	simHealthy    = 0
	simCrash      = 1 // panics at boot
	simHealthFail = 2 // runs, its health check fails
	simHang       = 3 // hangs at boot until the watchdog resets it
)

// simFirmware is a signed release of a simulated image of size bytes:
// the 64-byte header (magic E9 "SIM", header version 1, behaviour, delay 0,
// secure version 0, the version NUL-padded to 32 bytes), then random data.
func simFirmware(t testing.TB, key *ecdsa.PrivateKey, version string, behaviour byte, size int) firmware {
	t.Helper()
	img := make([]byte, size)
	_, _ = rand.Read(img[64:])
	copy(img, []byte{0xe9, 'S', 'I', 'M', 1, behaviour})
	copy(img[16:48], version)
	n, d, err := manifest.HashImage(bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	m := manifest.Manifest{Sequence: uint64(time.Now().UnixNano()), Version: version, BuildID: "agent-e2e",
		Hardware: []string{"esp32-v2"}, ImageSize: n, ImageDigest: d, Kind: manifest.KindFirmware}
	signed, err := manifest.Sign(&m, key)
	if err != nil {
		t.Fatal(err)
	}
	return firmware{image: img, signed: signed, m: m}
}

// agentProc is a supervised otamq-agent process.
type agentProc struct {
	t   testing.TB
	cmd *exec.Cmd
	out *syncBuffer
	dir string // its data directory (the simulated flash)
}

// syncBuffer is testkit.SyncBuffer.
type syncBuffer = testkit.SyncBuffer

// agentTiming shortens the agent's timers so that every scenario takes
// seconds; the trial timeout stays long except where the test is about it.
var agentTiming = []string{
	"--heartbeat-ms", "300", "--request-timeout-ms", "1500", "--backoff-min-ms", "100",
	"--backoff-max-ms", "1000", "--trial-timeout-ms", "20000", "--probation-ms", "1500",
	"--watchdog-ms", "500",
}

// startAgent runs otamq-agent --supervise for device id with a fresh data
// directory (a factory image 1.0.0 in slot 0) and the release key keyFile,
// logging in with token (none when ""). Later flags override earlier ones.
func startAgent(t testing.TB, b *tb, id, token, keyFile string, flags ...string) *agentProc {
	t.Helper()
	return runAgent(t, b.url(), id, token, keyFile, nil, flags...)
}

// runAgent is startAgent for a broker at url, with env added to the
// agent's environment.
func runAgent(t testing.TB, url, id, token, keyFile string, env []string, flags ...string) *agentProc {
	t.Helper()
	dir := t.TempDir()
	args := []string{"--broker", url, "--id", id, "--data-dir", dir,
		"--key", keyFile, "--initial-version", "1.0.0", "--supervise", "--verbose"}
	if token != "" {
		args = append(args, "--token", token)
	}
	args = append(args, agentTiming...)
	a := &agentProc{t: t, cmd: exec.Command(agentBinary(t), append(args, flags...)...), out: &syncBuffer{}, dir: dir}
	a.cmd.Stdout, a.cmd.Stderr = a.out, a.out
	if env != nil {
		a.cmd.Env = append(os.Environ(), env...)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.stop)
	return a
}

// stop ends the supervisor with SIGTERM (it stops the device process
// first), or with SIGKILL, the device process included, if it hangs.
func (a *agentProc) stop() {
	pid := a.cmd.Process.Pid
	children := testkit.ChildProcesses(pid)
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- a.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		for _, c := range append(children, testkit.ChildProcesses(pid)...) {
			_ = syscall.Kill(c, syscall.SIGKILL)
		}
		_ = a.cmd.Process.Kill()
		<-done
	}
	if a.t.Failed() {
		a.t.Logf("otamq-agent output:\n%s", a.out.String())
	}
}

// powerLoss kills the device process (not the supervisor) with SIGKILL:
// no shutdown, no reset reason written; the supervisor starts it again.
func (a *agentProc) powerLoss() {
	a.t.Helper()
	var child int
	eventually(a.t, 10*time.Second, func() error {
		c := testkit.ChildProcesses(a.cmd.Process.Pid)
		if len(c) != 1 {
			return fmt.Errorf("supervisor has %d device processes", len(c))
		}
		child = c[0]
		return nil
	})
	if err := syscall.Kill(child, syscall.SIGKILL); err != nil {
		a.t.Fatal(err)
	}
}

// getLog records the block requests the broker reads from each device: the
// connection they came on, their offset and their block count.
type getLog struct {
	mqtt.HookBase
	mu   sync.Mutex
	reqs map[string][]blockReq
}

type blockReq struct {
	remote string
	offset uint64
	count  uint32
}

func (h *getLog) ID() string            { return "test-block-requests" }
func (h *getLog) Provides(b byte) bool  { return b == mqtt.OnPacketRead }
func (h *getLog) Init(config any) error { h.reqs = map[string][]blockReq{}; return nil }
func (h *getLog) requests(id string) []blockReq {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]blockReq(nil), h.reqs[id]...)
}

// OnPacketRead implements mqtt.Hook.
func (h *getLog) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type == packets.Publish && pk.TopicName == "dm/"+cl.ID+"/ota/get" {
		if r, err := wire.DecodeBlockRequest(pk.Payload); err == nil {
			h.mu.Lock()
			h.reqs[cl.ID] = append(h.reqs[cl.ID], blockReq{remote: cl.Net.Remote, offset: r.Offset, count: r.Count})
			h.mu.Unlock()
		}
	}
	return pk, nil
}

// agentWorld is a broker with a trusted release key and the key's file
// for the agent.
type agentWorld struct {
	*tb
	key     *ecdsa.PrivateKey
	keyFile string
	gets    *getLog
}

func newAgentWorld(t testing.TB, mods ...func(*broker.Options)) *agentWorld {
	t.Helper()
	b := startBroker(t, mods...)
	key, pub := newKey(t)
	b.trustKey(pub)
	keyFile := filepath.Join(t.TempDir(), "release.pub.pem")
	if err := os.WriteFile(keyFile, pub, 0o600); err != nil {
		t.Fatal(err)
	}
	gets := &getLog{}
	if err := b.Server().AddHook(gets, nil); err != nil {
		t.Fatal(err)
	}
	return &agentWorld{tb: b, key: key, keyFile: keyFile, gets: gets}
}

// status is the broker's view of device id (device/get).
func (w *agentWorld) status(id string) fleet.Status {
	w.t.Helper()
	var v fleet.View
	if err := w.admin().Call(context.Background(), "device/get", map[string]any{"id": id}, &v); err != nil {
		w.t.Fatal(err)
	}
	return v.Status
}

type timelineEntry struct {
	Source    string `json:"source"`
	Type      string `json:"type"`
	RolloutID string `json:"rollout_id"`
	Version   string `json:"version"`
	Progress  int    `json:"progress"`
	Error     string `json:"error"`
	Detail    string `json:"detail"`
}

// timeline returns device id's timeline, oldest entry first.
func (w *agentWorld) timeline(id string) []timelineEntry {
	w.t.Helper()
	var res struct{ Entries []timelineEntry }
	if err := w.admin().Call(context.Background(), "device/timeline", map[string]any{"id": id}, &res); err != nil {
		w.t.Fatal(err)
	}
	for i, j := 0, len(res.Entries)-1; i < j; i, j = i+1, j-1 {
		res.Entries[i], res.Entries[j] = res.Entries[j], res.Entries[i]
	}
	return res.Entries
}

// hasEvents reports the first of want (event types, each optionally with
// ":error") that the device's timeline for rollout lacks, in order.
func hasEvents(tl []timelineEntry, rollout string, want ...string) error {
	i := 0
	for _, e := range tl {
		if i == len(want) {
			break
		}
		if e.Source != "device" || e.RolloutID != rollout {
			continue
		}
		typ, errCode, _ := strings.Cut(want[i], ":")
		if e.Type == typ && (errCode == "" || e.Error == errCode) {
			i++
		}
	}
	if i < len(want) {
		var got []string
		for _, e := range tl {
			got = append(got, e.Source+":"+e.Type+":"+e.Error)
		}
		return fmt.Errorf("timeline lacks %s (in order) for %s: %v", want[i], rollout, got)
	}
	return nil
}

// noRefusals checks that the broker refused nothing the agent sent: no
// message rejected (malformed, not allowed) and no event dropped.
func (w *agentWorld) noRefusals() {
	w.t.Helper()
	out, err := httpGet("http://" + w.HTTPAddr() + "/metrics")
	if err != nil {
		w.t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "otamq_rejected_total") || strings.HasPrefix(line, "otamq_device_events_dropped_total") {
			if f := strings.Fields(line); len(f) == 2 && f[1] != "0" {
				w.t.Errorf("the broker refused some of the agent's messages: %s", line)
			}
		}
	}
}

// updateTo offers a simulated image to a device running the agent.
func (w *agentWorld) updateTo(id string, fw firmware) string {
	w.t.Helper()
	return w.offer(w.release(fw).ID, id)
}

// agent registers device id and starts the agent for it, on its factory
// image 1.0.0.
func (w *agentWorld) agent(t *testing.T, id string, flags ...string) *agentProc {
	t.Helper()
	tok := w.register(id, "device", "", map[string]any{"hardware": "esp32-v2"})
	a := startAgent(t, w.tb, id, tok, w.keyFile, flags...)
	// the factory image reports itself
	eventually(t, 20*time.Second, func() error {
		if st := w.status(id); st.Firmware != "1.0.0" || !st.Online {
			return fmt.Errorf("%s: online %v, firmware %q", id, st.Online, st.Firmware)
		}
		return nil
	})
	return a
}

func TestAgentEndToEnd(t *testing.T) {
	agentBinary(t) // build before the parallel scenarios

	t.Run("healthy", func(t *testing.T) {
		t.Parallel()
		w := newAgentWorld(t)
		w.agent(t, "agent-ok")
		rollout := w.updateTo("agent-ok", simFirmware(t, w.key, "1.1.0", simHealthy, 96*1024))
		// the new image reports itself after the OTA reboot, passes its
		// trial and is committed when probation ends
		eventually(t, 30*time.Second, func() error {
			st := w.status("agent-ok")
			if st.Firmware != "1.1.0" || st.BootReason != "ota_reboot" || st.Slot != 1 || st.OTAState != "committed" {
				return fmt.Errorf("firmware %q, boot reason %q, slot %d, state %q", st.Firmware, st.BootReason, st.Slot, st.OTAState)
			}
			return nil
		})
		eventually(t, 10*time.Second, func() error {
			return hasEvents(w.timeline("agent-ok"), rollout,
				"update.download.started", "update.download.progress", "update.download.completed",
				"update.install.started", "update.install.completed", "update.reboot.started",
				"update.reboot.completed", "update.health.ok")
		})
		for _, e := range w.timeline("agent-ok") {
			if e.Source == "device" && e.Error != "" {
				t.Errorf("healthy update reported an error: %+v", e)
			}
		}
		w.noRefusals()
	})

	// Each bad image is rolled back: the old image reports itself again,
	// with boot reason "rollback", and the agent says why.
	for _, bad := range []struct {
		name      string
		behaviour byte
		flags     []string
		events    []string
	}{
		{"crash", simCrash, nil, []string{"update.reboot.started",
			"update.rollback.triggered:boot_failure", "update.rollback.completed:boot_failure"}},
		{"hang", simHang, nil, []string{"update.reboot.started",
			"update.rollback.triggered:boot_failure", "update.rollback.completed:boot_failure"}},
		{"health-fail", simHealthFail, []string{"--trial-timeout-ms", "2000"}, []string{"update.reboot.completed",
			"update.health.failed:health_check", "update.rollback.triggered:health_check",
			"update.rollback.completed:health_check"}},
	} {
		t.Run(bad.name, func(t *testing.T) {
			t.Parallel()
			w := newAgentWorld(t)
			id := "agent-" + bad.name
			w.agent(t, id, bad.flags...)
			rollout := w.updateTo(id, simFirmware(t, w.key, "1.1.0", bad.behaviour, 48*1024))
			eventually(t, 30*time.Second, func() error {
				return hasEvents(w.timeline(id), rollout, bad.events...)
			})
			eventually(t, 10*time.Second, func() error {
				st := w.status(id)
				if st.Firmware != "1.0.0" || st.BootReason != "rollback" || st.Slot != 0 || st.OTAState != "rolled_back" {
					return fmt.Errorf("firmware %q, boot reason %q, slot %d, state %q", st.Firmware, st.BootReason, st.Slot, st.OTAState)
				}
				return nil
			})
			w.noRefusals()
		})
	}

	// A broker that serves fewer blocks per request than the agent asks
	// for (max_window 2, the agent's window is 4) says so in the offer
	// (key 6), and the agent asks for 2 at a time from the first request.
	t.Run("small-window", func(t *testing.T) {
		t.Parallel()
		w := newAgentWorld(t, func(o *broker.Options) { o.MaxWindow = 2 })
		w.agent(t, "agent-win")
		w.updateTo("agent-win", simFirmware(t, w.key, "1.1.0", simHealthy, 64*1024))
		eventually(t, 30*time.Second, func() error {
			if st := w.status("agent-win"); st.Firmware != "1.1.0" || st.OTAState != "committed" {
				return fmt.Errorf("firmware %q, state %q", st.Firmware, st.OTAState)
			}
			return nil
		})
		reqs := w.gets.requests("agent-win")
		if len(reqs) < 2 || reqs[0].count != 2 {
			t.Fatalf("block requests %+v", reqs)
		}
		for _, r := range reqs {
			if r.count > 2 {
				t.Fatalf("the agent asks for %d blocks although the broker's window is 2: %+v", r.count, reqs)
			}
		}
		w.noRefusals()
	})

	// A power loss in the middle of a download: the device process is
	// killed with SIGKILL and the download continues where the persisted
	// offset says, not from 0. The broker's per-device rate (32 KiB/s, with
	// a burst of one window of the agent's size: 4 blocks of 4 KiB) keeps
	// the download going for seconds, so it is cut well before its end.
	t.Run("power-loss", func(t *testing.T) {
		t.Parallel()
		const size = 256 * 1024
		w := newAgentWorld(t, func(o *broker.Options) {
			o.DeviceRate, o.MaxBlockSize, o.MaxWindow = 32*1024, 4096, 4
		})
		a := w.agent(t, "agent-cut")
		rollout := w.updateTo("agent-cut", simFirmware(t, w.key, "1.1.0", simHealthy, size))
		var before []blockReq
		eventually(t, 30*time.Second, func() error {
			before = w.gets.requests("agent-cut")
			if n := len(before); n == 0 || before[n-1].offset < 64*1024 {
				return fmt.Errorf("%d block requests so far", n)
			}
			return nil
		})
		cut := before[len(before)-1]
		a.powerLoss()
		// the first request on a new connection continues the download
		var resumed blockReq
		eventually(t, 30*time.Second, func() error {
			for _, r := range w.gets.requests("agent-cut") {
				if r.remote != cut.remote {
					resumed = r
					return nil
				}
			}
			return fmt.Errorf("no block request since the power loss")
		})
		if resumed.offset == 0 || resumed.offset >= size {
			t.Fatalf("after the power loss (last request at offset %d) the download went on at offset %d", cut.offset, resumed.offset)
		}
		eventually(t, 40*time.Second, func() error {
			st := w.status("agent-cut")
			if st.Firmware != "1.1.0" || st.OTAState != "committed" {
				return fmt.Errorf("firmware %q, state %q", st.Firmware, st.OTAState)
			}
			return nil
		})
		tl := w.timeline("agent-cut")
		if err := hasEvents(tl, rollout, "update.download.started", "update.download.completed", "update.health.ok"); err != nil {
			t.Fatal(err)
		}
		started := 0
		for _, e := range tl {
			if e.Source == "device" && e.Type == "update.download.started" {
				started++
			}
		}
		if started != 1 {
			t.Fatalf("download started %d times, want once (resumed, not restarted)", started)
		}
		w.noRefusals()
		t.Logf("power loss at offset %d, resumed at %d of %d", cut.offset, resumed.offset, size)
	})
}
