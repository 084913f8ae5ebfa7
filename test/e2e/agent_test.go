package e2e

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/otamq/otamq/test/testkit"
)

// agent is an otamq-agent --supervise process: the supervisor restarts the
// device process after a reboot, a crash or a kill, as a bootloader would.
type agent struct {
	w     *world
	id    string
	group string
	dir   string // its data directory: the simulated flash
	cmd   *exec.Cmd
	out   *syncBuffer
	done  chan struct{}
}

// agentTiming shortens the agent's timers so that an update takes seconds:
// heartbeats every 300 ms, a probation of 1.5 s after the confirmation.
var agentTiming = []string{
	"--heartbeat-ms", "300", "--request-timeout-ms", "1500", "--backoff-min-ms", "100",
	"--backoff-max-ms", "1000", "--trial-timeout-ms", "20000", "--probation-ms", "1500",
	"--watchdog-ms", "500",
}

// startAgent starts device id's agent with a new data directory (the
// factory image 1.0.0 in slot 0), trusting the world's release key.
func (w *world) startAgent(id, group, token string, o agentOpts) *agent {
	w.t.Helper()
	dir := filepath.Join(w.dir, "agents", id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		w.t.Fatal(err)
	}
	tokFile := filepath.Join(w.dir, "agents", id+".token")
	if err := os.WriteFile(tokFile, []byte(token+"\n"), 0o600); err != nil {
		w.t.Fatal(err)
	}
	url := o.url
	if url == "" {
		url = "mqtt://" + w.addr
	}
	args := []string{"--broker", url, "--id", id, "--token-file", tokFile, "--data-dir", dir,
		"--key", w.pub, "--initial-version", "1.0.0", "--supervise"}
	if suite.verbose {
		args = append(args, "--verbose")
	}
	args = append(append(args, agentTiming...), o.flags...)
	a := &agent{w: w, id: id, group: group, dir: dir, out: &syncBuffer{}, done: make(chan struct{}),
		cmd: exec.Command(built(w.t, "otamq-agent"), args...)}
	a.cmd.Stdout, a.cmd.Stderr = a.out, a.out
	if err := a.cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	go func() {
		_ = a.cmd.Wait()
		close(a.done)
	}()
	w.agents = append(w.agents, a)
	w.t.Cleanup(a.stop)
	return a
}

// stop ends the supervisor with SIGTERM (it stops the device process
// first), or the supervisor and its device process with SIGKILL if it does
// not end within 10 s. Stopping a stopped agent does nothing.
func (a *agent) stop() {
	select {
	case <-a.done:
		return
	default:
	}
	children := testkit.ChildProcesses(a.cmd.Process.Pid)
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		for _, c := range append(children, testkit.ChildProcesses(a.cmd.Process.Pid)...) {
			_ = syscall.Kill(c, syscall.SIGKILL)
		}
		_ = a.cmd.Process.Kill()
		<-a.done
	}
}

// powerLoss kills the device process (not the supervisor) with SIGKILL:
// no shutdown, no reset reason written; the supervisor starts it again.
func (a *agent) powerLoss() {
	a.w.t.Helper()
	var child int
	eventually(a.w.t, 10*time.Second, func() error {
		c := testkit.ChildProcesses(a.cmd.Process.Pid)
		if len(c) != 1 {
			return fmt.Errorf("%s: the supervisor has %d device processes", a.id, len(c))
		}
		child = c[0]
		return nil
	})
	if err := syscall.Kill(child, syscall.SIGKILL); err != nil {
		a.w.t.Fatal(err)
	}
}

// boots is how many times the device started slot with version (the
// agent's "booted slot N version V" line).
func (a *agent) boots(slot int, version string) int {
	return strings.Count(a.out.String(), fmt.Sprintf("booted slot %d version %s ", slot, version))
}

// ESP-IDF's otadata states (esp_ota_img_states_t), as the simulator
// stores them (agent-c/port/posix/sim.h).
const (
	odNew           = 0
	odPendingVerify = 1
	odValid         = 2
	odInvalid       = 3
	odAborted       = 4
	odErased        = 0xFFFFFFFF
)

var odNames = map[uint32]string{odNew: "NEW", odPendingVerify: "PENDING_VERIFY", odValid: "VALID",
	odInvalid: "INVALID", odAborted: "ABORTED", odErased: "UNDEFINED"}

// The agent's persisted OTA states (DESIGN §3, agent-c ota_msg.h).
var otaStates = []string{"idle", "downloading", "verified", "installing", "rebooting", "trial",
	"committed", "rolled_back", "failed"}

// flash is what the device's own flash says, read from its data directory
// (agent-c/README.md, "Data directory"): what the bootloader starts next,
// the versions in the slots and the agent's persisted state record.
type flash struct {
	Boot      int       // the slot the bootloader starts next (-1: none)
	BootState string    // its otadata state (VALID once confirmed)
	Other     string    // the other otadata entry's state
	Slots     [2]string // the firmware version in each slot ("" none)
	State     string    // the agent's OTA state (kv-otamq.state key 1)
	Rollout   string    // the update it knows of (key 2)
	Guard     uint64    // the firmware's replay guard (key 22)
}

// version is the version the bootloader starts next.
func (f flash) version() string {
	if f.Boot < 0 {
		return ""
	}
	return f.Slots[f.Boot]
}

func (f flash) String() string {
	return fmt.Sprintf("boots slot %d (%s, otadata %s, other %s), state %s, rollout %q, guard %d",
		f.Boot, f.version(), f.BootState, f.Other, f.State, f.Rollout, f.Guard)
}

// flash reads the agent's data directory. The files are replaced
// atomically by the agent, so a read sees a whole file.
func (a *agent) flash() (flash, error) {
	f := flash{Boot: -1}
	od, err := os.ReadFile(filepath.Join(a.dir, "otadata"))
	if err != nil || len(od) != 64 {
		return f, fmt.Errorf("%s: otadata: %v (%d bytes)", a.id, err, len(od))
	}
	// each entry: ota_seq u32, seq_label [20], ota_state u32, crc u32; the
	// active one is the usable entry with the highest sequence, naming slot
	// (seq-1) % 2 (ESP-IDF's bootloader_common_get_active_otadata)
	var seq, st [2]uint32
	active := -1
	for i := range 2 {
		e := od[32*i:]
		seq[i], st[i] = binary.LittleEndian.Uint32(e[0:]), binary.LittleEndian.Uint32(e[24:])
		if seq[i] == odErased || st[i] == odInvalid || st[i] == odAborted {
			continue
		}
		if active < 0 || seq[i] > seq[active] {
			active = i
		}
	}
	if active >= 0 {
		f.Boot = int((seq[active] - 1) % 2)
		f.BootState, f.Other = odNames[st[active]], odNames[st[1-active]]
	}
	for s := range 2 {
		img, err := os.ReadFile(filepath.Join(a.dir, fmt.Sprintf("slot%d.bin", s)))
		if err != nil || len(img) < 48 || !bytes.Equal(img[:4], []byte{0xe9, 'S', 'I', 'M'}) {
			continue
		}
		f.Slots[s] = string(bytes.TrimRight(img[16:48], "\x00"))
	}
	rec, err := os.ReadFile(filepath.Join(a.dir, "kv-otamq.state"))
	if err != nil {
		return f, fmt.Errorf("%s: state record: %w", a.id, err)
	}
	var m map[uint64]any
	if err := cbor.Unmarshal(rec, &m); err != nil {
		return f, fmt.Errorf("%s: state record: %w", a.id, err)
	}
	if s, ok := m[1].(uint64); ok && s < uint64(len(otaStates)) {
		f.State = otaStates[s]
	}
	f.Rollout, _ = m[2].(string)
	f.Guard, _ = m[22].(uint64)
	return f, nil
}
