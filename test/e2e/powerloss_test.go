package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/otamq/otamq/ota/rollout"
)

// TestPowerLoss is scenario 6: power cuts. Every agent of the fleet loses
// power again and again while it takes the release: its whole process
// tree (the supervisor, which plays the bootloader, and the device
// process) is killed with SIGKILL at once, then started again on the same
// data directory, as a board powers up. The cuts are aimed at the phases
// of an update (the download, the slot writes, the switch of slots, the
// trial before the confirmation, the probation after it), at a seeded
// random point within each: the agent's process tree is stepped (SIGSTOP,
// read its flash, SIGCONT for a seeded random slice) until its own flash
// says it is in the phase, and the cut falls there, while it is stopped,
// so where it landed is what its flash says.
//
// After every cut, with the power off, the flash is checked the way the
// ESP-IDF bootloader reads it: the slot it would start holds a whole
// image that verifies (its SHA-256 is that of the factory image or of the
// release), never one in an aborted or invalid state; the agent then boots
// exactly that slot. A cut in the trial (the new image started, not yet
// confirmed: PENDING_VERIFY) must bring the old image back (ABORTED on
// the next boot, as ESP-IDF's bootloader does): a rollback, which the
// rollout must count as one. A device whose update did not end on the new
// image is taken by a new rollout of the same release (one round per
// rollout) until every agent committed the new version.
func TestPowerLoss(t *testing.T) {
	t.Parallel()
	// downloads throttled to 64 KiB/s per device (4 KiB blocks, window 4):
	// a 96 KiB image takes about 1.5 s, blocks arrive one by one
	w := newWorld(t, "ota:\n  device_rate: 65536\n  max_block_size: 4096\n  max_window: 4\n")
	nAgents, budget, minCuts := 3, 5, 10
	if suite.long {
		nAgents, budget, minCuts = 10, 12, 100
	}
	rec := newRecord(t, 6, "", "")
	agents := w.fleet(6, []group{{"fleet", nAgents}}, nil)
	const size = 96 * 1024
	rel := w.release(6, "1.1.0", healthy, 1000, size)
	img, err := os.ReadFile(filepath.Join(w.dir, "firmware-1.1.0.bin"))
	if err != nil {
		t.Fatal(err)
	}
	var cutters []*cutter
	for i, a := range agents {
		factory, err := os.ReadFile(filepath.Join(a.dir, "slot0.bin"))
		if err != nil {
			t.Fatal(err)
		}
		c := &cutter{a: a, size: size, rng: rand.New(rand.NewPCG(suite.seed, 600+uint64(i))),
			images: map[[32]byte]string{sha256.Sum256(factory): "1.0.0", sha256.Sum256(img): "1.1.0"}}
		c.plan = c.planCuts(budget)
		c.path, c.args = a.cmd.Path, a.cmd.Args[1:]
		cutters = append(cutters, c)
	}
	rec.r.Setup = fmt.Sprintf("the otamq binary (downloads throttled to 64 KiB/s per device, 4 KiB blocks, window 4), %d otamq-agent --supervise processes, otactl; a 96 KiB image; one rollout per round of the devices not yet committed on it, thresholds at 100 %% (never pause), success 1 %%, probation 1 s", nAgents)
	rec.r.Injected = fmt.Sprintf("%d power cuts per agent (%d in all): SIGKILL of the agent's whole process tree (supervisor and device process) at a seeded random point of a chosen phase of its update, found by stepping the stopped process tree until its flash says it is there; then the agent is started again on its data directory", budget, budget*nAgents)

	start := time.Now()
	var rounds []string
	rolledBack, failedAfterCut, byCut, byAgent, unreported := 0, 0, 0, 0, 0
	for round := 1; ; round++ {
		var todo []*cutter
		for _, c := range cutters {
			f, err := c.a.flash()
			if err != nil {
				t.Fatal(err)
			}
			if !committedNew(f) {
				todo = append(todo, c)
			}
		}
		if len(todo) == 0 {
			break
		}
		if round > 2*budget+2 {
			t.Fatalf("round %d and still %d agents not committed", round, len(todo))
		}
		id := fmt.Sprintf("pl-%d", round)
		var ids []string
		for _, c := range todo {
			ids = append(ids, c.a.id)
			c.roundCuts, c.roundMark = nil, len(c.a.out.String())
		}
		list := strings.Join(ids, ", ")
		w.rollout(id, "release: "+rel.ID+"\nselector: {devices: ["+list+"]}\nwaves:\n  - {name: all, devices: ["+list+"]}\n"+
			"success: 1%\nprobation: 1s\nthresholds: {rollback: {warn: 100%, pause: 100%}, health: {warn: 100%, pause: 100%}}\n")
		var wg sync.WaitGroup
		errs := make([]error, len(todo))
		for i, c := range todo {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if errs[i] = c.runRound(id); errs[i] != nil {
					c.a.thaw(children(c.a.cmd.Process.Pid)) // let the report stop it
				}
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		// every device of the round has its result
		v := w.waitRollout(id, 3*time.Minute, func(v rollout.View) error {
			for st, k := range v.Counts {
				if k > 0 && st != "succeeded" && st != "failed" && st != "rolled_back" {
					return fmt.Errorf("%d still %s", k, st)
				}
			}
			return nil
		})
		devs := w.rolloutDevices(id)
		wantRB, gotRB := 0, v.Counts["rolled_back"]
		for _, c := range todo {
			d := devs[c.a.id]
			// What the device went through: a revert is a start of the old
			// image after the new one ran, by the bootloader after each cut
			// in the trial (checked at the cut), or by the agent's own
			// rollback, a software reset into slot 0 (its reboot trigger
			// after repeated cuts in one trial). The agent reports the
			// round's reverts, but for one kind: a cut in the trial while
			// its state record still said installing (the cut before came
			// after esp_ota_set_boot_partition and before it persisted the
			// reboot). On the old image it takes the revert for an
			// activation that never happened and installs again, with no
			// report of a rollback.
			reverts, silent, late := 0, 0, false
			for _, m := range bootReason.FindAllStringSubmatch(c.a.out.String()[c.roundMark:], -1) {
				if m[1] == "0" && m[2] == "software" {
					reverts++
					byAgent++
				}
			}
			for _, k := range c.roundCuts {
				if k.landed == phTrial {
					reverts++
					byCut++
					if k.record == "installing" {
						silent++
					}
				}
				late = late || k.landed >= phTrial
			}
			unreported += silent
			switch {
			case reverts > silent:
				wantRB++
				if d.State != "rolled_back" {
					t.Errorf("round %d: %s went back to the old image %d times (%d unreported) and is %s in the rollout (%s)", round, c.a.id, reverts, silent, d.State, d.Reason)
				}
			case late:
				if d.State != "succeeded" && d.State != "failed" {
					t.Errorf("round %d: %s was cut in its trial or probation without a reported revert and is %s in the rollout (%s)", round, c.a.id, d.State, d.Reason)
				}
				if d.State == "failed" {
					failedAfterCut++
				}
			default:
				if d.State != "succeeded" {
					t.Errorf("round %d: %s was cut only before its trial (%v) and is %s in the rollout (%s)", round, c.a.id, c.roundCuts, d.State, d.Reason)
				}
			}
		}
		if gotRB != wantRB {
			t.Errorf("round %d: the rollout counts %d rollbacks, %d agents went back to the old image (and reported it)", round, gotRB, wantRB)
		}
		for _, c := range todo {
			t.Logf("round %d: %s: cuts %v; in the rollout %s (%s)", round, c.a.id, c.roundCuts, devs[c.a.id].State, devs[c.a.id].Reason)
			if t.Failed() {
				for _, e := range w.timeline(c.a.id, id) {
					t.Logf("  %s %s %s %s %s %s", e.Time.Format("15:04:05.000"), e.Source, e.Type, e.RolloutID, e.Error, e.Detail)
				}
			}
		}
		rolledBack += wantRB
		rounds = append(rounds, fmt.Sprintf("%s: %d devices, %s", id, len(todo), counts(v.Counts)))
		if v.State != "completed" {
			w.must("rollout", "abort", id, "--reason", "round over")
		}
		// the agents settle: committed on the new image, or back on the old
		for _, c := range todo {
			eventually(t, time.Minute, func() error {
				f, err := c.a.flash()
				if err != nil {
					return err
				}
				if committedNew(f) {
					return nil
				}
				if f.Boot != 0 || f.version() != "1.0.0" || f.BootState != "VALID" ||
					f.State != "rolled_back" && f.State != "idle" && f.State != "failed" ||
					f.Other == "NEW" || f.Other == "PENDING_VERIFY" || f.Other == "VALID" {
					return fmt.Errorf("%s: %s; want committed on 1.1.0, or on 1.0.0 with no update under way and the other entry unusable", c.a.id, f)
				}
				return nil
			})
		}
		if t.Failed() {
			t.FailNow()
		}
	}
	took := time.Since(start)

	// the end: every agent committed the new version in slot 1
	var per [phCount]int
	total, hits := 0, 0
	for _, c := range cutters {
		f, err := c.a.flash()
		if err != nil {
			t.Fatal(err)
		}
		if !committedNew(f) || f.Slots != [2]string{"1.0.0", "1.1.0"} || f.Guard != rel.Seq {
			t.Errorf("%s: %s, slots %v; want committed on 1.1.0 in slot 1", c.a.id, f, f.Slots)
		}
		for _, k := range c.cuts {
			per[k.landed]++
			total++
			if k.landed == k.aimed {
				hits++
			}
		}
	}
	trial := per[phTrial]
	w.waitFleet(agents, "1.1.0")
	if total < minCuts {
		t.Errorf("%d cuts (%d planned), want at least %d", total, budget*nAgents, minCuts)
	}
	for _, ph := range []phase{phDownload, phWrite, phSwitch, phTrial, phProbation} {
		if per[ph] == 0 {
			t.Errorf("no cut landed in phase %s: %v", phaseNames[ph], per)
		}
	}
	rec.checked("after each of the %d cuts, with the power off, the slot the bootloader would start (ESP-IDF's rules: PENDING_VERIFY becomes ABORTED, the usable entry with the highest sequence names the slot, a slot whose image does not load is passed over) holds a whole image whose SHA-256 is the factory image's or the release's, never one in an aborted or invalid state; after the power came back the agent booted exactly that slot and version", total)
	rec.checked("each of the %d cuts in the trial (the new image started, PENDING_VERIFY, not yet confirmed) made the bootloader start the old image (ABORTED on the next boot)", trial)
	rec.checked("per round, the rollout's rolled_back devices are exactly the agents that went back to the old image in that round and reported it (%d in all, %d of the reverts by the bootloader after a cut in the trial, %d by the agent's own reboot trigger after repeated cuts in one trial); agents cut only before their trial succeeded; agents cut in the probation without a revert succeeded or failed (%d failed: their Last Will fired during the trial)", rolledBack, byCut, byAgent, failedAfterCut)
	rec.checked("every agent ended committed on 1.1.0 in slot 1 (otadata VALID, state record committed, replay guard the release's sequence) after %d round(s); at the end of each round every agent not committed was on the old image, VALID, with the other otadata entry unusable; none was ever left unbootable", len(rounds))
	m := w.metrics()
	if got := m.sum("otamq_rollbacks_total", "version", "1.1.0"); int(got) != rolledBack {
		t.Errorf("otamq_rollbacks_total{version=1.1.0} = %v, the rounds counted %d", got, rolledBack)
	}
	rec.checked("/metrics: otamq_rollbacks_total{version=1.1.0} = %d, the rollbacks of every round", rolledBack)

	rec.figure("agents", "%d", nAgents)
	rec.figure("power cuts", "%d (%d planned, %d per agent)", total, budget*nAgents, budget)
	var by []string
	for _, ph := range []phase{phDownload, phWrite, phSwitch, phTrial, phProbation, phCommitted} {
		by = append(by, fmt.Sprintf("%s %d", phaseNames[ph], per[ph]))
	}
	rec.figure("cuts by the phase they landed in", "%s", strings.Join(by, ", "))
	rec.figure("cuts that landed in the phase aimed at", "%d of %d (the others landed in a later one: it went by between two steps)", hits, total)
	rec.figure("reverts to the old image", "%d by the bootloader after a cut in the trial, %d by the agent (reboot trigger), %d not reported (a cut in the trial with the state record still at installing: the agent installed again)", byCut, byAgent, unreported)
	rec.figure("devices counted rolled back by the rollouts", "%d", rolledBack)
	rec.figure("devices cut in the probation, no revert, counted failed by the broker (Last Will during the trial)", "%d", failedAfterCut)
	withdrawn := 0
	for _, c := range cutters {
		withdrawn += c.withdrawn
	}
	rec.figure("rounds (rollouts)", "%s", strings.Join(rounds, "; "))
	rec.figure("agent rounds ended by the broker's withdrawal of the offer (the member done, the agent rolled back or idle; it takes the release in the next round)", "%d", withdrawn)
	rec.figure("first rollout to every agent committed", "%.1f s", took.Seconds())
}

// TestPowerLossResetReason: a power cut of the whole board right after an
// image wrote its reset reason for a software restart, or after the next
// start read its otadata but before it consumed the reason, leaves
// DIR/reset-reason behind. The supervisor plays the chip: its own start is
// a power-on, so the device's next start must report power-on, as the
// reset reason register of a chip that lost power does. (Scenario 6 found
// it: a revert after such a cut in the trial was reported as "not
// confirmed" instead of "power lost", and the agent would not take the
// same update again.) Without --supervise the file is the reset reason, as
// documented: the control that the file is read.
func TestPowerLossResetReason(t *testing.T) {
	t.Parallel()
	bin := built(t, "otamq-agent")
	dir := t.TempDir()
	cmd := exec.Command(built(t, "otactl"), "keygen", "--out", dir, "--name", "k")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("otactl keygen: %v\n%s", err, out)
	}
	for _, c := range []struct {
		supervise bool
		want      string
	}{{false, "software"}, {true, "power-on"}} {
		data := filepath.Join(dir, fmt.Sprintf("supervise-%v", c.supervise))
		if err := os.MkdirAll(data, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(data, "reset-reason"), []byte("software"), 0o600); err != nil {
			t.Fatal(err)
		}
		args := []string{"--broker", "mqtt://" + freePort(t), "--id", "dev-1", "--token", "x", "--data-dir", data,
			"--key", filepath.Join(dir, "k.pub")}
		if c.supervise {
			args = append(args, "--supervise")
		}
		a := exec.Command(bin, args...)
		out := &syncBuffer{}
		a.Stdout, a.Stderr = out, out
		if err := a.Start(); err != nil {
			t.Fatal(err)
		}
		var m []string
		eventually(t, 30*time.Second, func() error {
			if m = regexp.MustCompile(`booted slot 0 version 1\.0\.0 .*reset reason (\S+)`).FindStringSubmatch(out.String()); m == nil {
				return fmt.Errorf("no boot line: %s", out)
			}
			return nil
		})
		_ = a.Process.Signal(syscall.SIGTERM)
		_ = a.Wait()
		if m[1] != c.want {
			t.Errorf("--supervise %v, a reset-reason file left by a cut: the device started with reset reason %s, want %s", c.supervise, m[1], c.want)
		}
	}
}

// committedNew: the agent committed 1.1.0 in slot 1.
func committedNew(f flash) bool {
	return f.Boot == 1 && f.version() == "1.1.0" && f.BootState == "VALID" && f.State == "committed"
}

// phase is where an agent's update stands, read from its flash.
type phase int

const (
	phNone       phase = iota // no update under way (waiting for an offer, or finished otherwise)
	phDownload                // downloading, every block written so far persisted in the offset
	phWrite                   // downloading, blocks written to the slot whose offset is not yet persisted
	phSwitch                  // downloaded: verified, installing (otadata written NEW), rebooting
	phTrial                   // the new image started (PENDING_VERIFY), not yet confirmed
	phProbation               // the new image confirmed (VALID), probation not over
	phCommitted               // committed
	phRolledBack              // back on the old image
	phCount
)

var phaseNames = [phCount]string{"none", "download", "write", "switch", "trial", "probation", "committed", "rolled back"}

func (p phase) String() string { return phaseNames[p] }

// inDownload: the two phases a download alternates between.
func (p phase) inDownload() bool { return p == phDownload || p == phWrite }

// pfIgnoreOffer is the state record's flag that the agent will not take
// the same offer again (OTA_PF_IGNORE_OFFER).
const pfIgnoreOffer = 0x04

// odEntry is one otadata entry as stored.
type odEntry struct {
	seq, state uint32
	crcOK      bool
}

// usable is ESP-IDF's bootloader_common_ota_select_valid.
func (e odEntry) usable() bool {
	return e.seq != odErased && e.state != odInvalid && e.state != odAborted && e.crcOK
}

func (e odEntry) slot() int { return int((e.seq - 1) % 2) }

// flashState is what an agent's data directory holds, for the phase and
// the bootloader's choice.
type flashState struct {
	od      [2]odEntry
	state   string // the agent's persisted OTA state
	offset  uint64 // its persisted download offset (key 6)
	part    int64  // bytes in slot1.part, the slot being written (-1: none)
	flags   uint64 // the record's flags (key 14)
	rollout string // the update's rollout (key 2)
	loads   [2]bool
}

// active is the index of the otadata entry in use (highest usable
// sequence), -1 for none.
func active(od [2]odEntry) int {
	a := -1
	for i, e := range od {
		if e.usable() && (a < 0 || e.seq > od[a].seq) {
			a = i
		}
	}
	return a
}

// bootSlot is the slot ESP-IDF's bootloader starts from this flash (two
// OTA slots, no factory app, rollback enabled): every PENDING_VERIFY
// entry becomes ABORTED (its one start went unconfirmed); the active entry
// names the slot, ota_0 without one; a slot whose image does not load is
// passed over for the other. -1: neither loads.
func bootSlot(od [2]odEntry, loads [2]bool) int {
	for i := range od {
		if od[i].state == odPendingVerify {
			od[i].state = odAborted
		}
	}
	s := 0
	if a := active(od); a >= 0 {
		s = od[a].slot()
	}
	for i := range 2 {
		if loads[s^i] {
			return s ^ i
		}
	}
	return -1
}

func (s flashState) phase() phase {
	a := active(s.od)
	onNew := a >= 0 && s.od[a].slot() == 1
	switch {
	case onNew && s.od[a].state == odPendingVerify:
		return phTrial
	case onNew && s.od[a].state == odValid && s.state == "trial":
		return phProbation
	case s.state == "committed":
		return phCommitted
	case s.state == "downloading":
		if s.part > int64(s.offset) {
			return phWrite
		}
		return phDownload
	case s.state == "verified" || s.state == "installing" || s.state == "rebooting":
		return phSwitch
	case s.state == "rolled_back":
		return phRolledBack
	}
	return phNone
}

// readFlash reads the agent's data directory (its files are replaced
// atomically, but the otadata and the state record are two files: a read
// of a running agent may see one older than the other).
func readFlash(dir string) (flashState, error) {
	s := flashState{part: -1}
	od, err := os.ReadFile(filepath.Join(dir, "otadata"))
	switch {
	case errors.Is(err, os.ErrNotExist):
		od = bytes.Repeat([]byte{0xff}, 64) // never written: erased
	case err != nil:
		return s, err
	case len(od) != 64:
		return s, fmt.Errorf("otadata of %d bytes", len(od))
	}
	for i := range 2 {
		e := od[32*i:]
		seq := binary.LittleEndian.Uint32(e[0:])
		s.od[i] = odEntry{seq: seq, state: binary.LittleEndian.Uint32(e[24:]),
			crcOK: binary.LittleEndian.Uint32(e[28:]) == crc32.ChecksumIEEE(e[0:4])}
		if st := s.od[i].state; seq != odErased && st > odAborted {
			return s, fmt.Errorf("otadata entry %d: state %#x is none of ESP-IDF's", i, st)
		}
	}
	for i := range 2 {
		h, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("slot%d.bin", i)))
		s.loads[i] = err == nil && len(h) >= 64 && bytes.Equal(h[:5], []byte{0xe9, 'S', 'I', 'M', 1}) && h[16] != 0
	}
	rec, err := os.ReadFile(filepath.Join(dir, "kv-otamq.state"))
	if err != nil {
		return s, fmt.Errorf("state record: %w", err)
	}
	var m map[uint64]any
	if err := cbor.Unmarshal(rec, &m); err != nil {
		return s, fmt.Errorf("state record: %w", err)
	}
	if v, ok := m[1].(uint64); ok && v < uint64(len(otaStates)) {
		s.state = otaStates[v]
	}
	s.offset, _ = m[6].(uint64)
	s.flags, _ = m[14].(uint64)
	s.rollout, _ = m[2].(string)
	if fi, err := os.Stat(filepath.Join(dir, "slot1.part")); err == nil {
		s.part = fi.Size()
	}
	return s, nil
}

// cut is one power cut: the phase it was aimed at and the one it landed
// in, and what the bootloader would start then.
type cut struct {
	aimed   phase
	landed  phase
	slot    int
	version string
	record  string // the agent's persisted state at the cut
}

func (k cut) String() string { return fmt.Sprintf("%s (aimed %s)", k.landed, k.aimed) }

// cutter cuts one agent's power, round after round.
type cutter struct {
	a      *agent
	rng    *rand.Rand
	size   int                 // the release's image size
	images map[[32]byte]string // the images that verify: SHA-256 -> version

	path      string   // the agent's binary
	args      []string // and its arguments
	plan      []phase  // the phases still to aim at, in order
	held      bool     // powered on, not yet let run
	mark      int      // the agent's log up to the last cut
	roundMark int      // and up to the round's start
	boot      *cut     // the last cut, until the boot after it was seen (then nil)
	roundCuts []cut
	cuts      []cut
	withdrawn int // rounds that ended with the offer withdrawn before the agent took it again
}

// planCuts draws the phases to aim at, budget of them, in the order
// updates pass them. The first attempt has cuts in the download (and in
// the slot writes), then maybe one in the switch, then one in the trial,
// which rolls the update back; after a power cut the agent takes the same
// offer again, and as its download is whole in the slot, it verifies it
// again and installs: the attempts after the first have maybe a cut in the
// switch and one in the trial. The last attempt ends with one or two cuts
// in the probation (more would pass the reboot trigger, 3 in 5 minutes,
// and roll the update back).
func (c *cutter) planCuts(budget int) []phase {
	p := []phase{phDownload, phWrite}
	if c.rng.IntN(2) == 0 {
		p[0], p[1] = phWrite, phDownload
	}
	if budget > 8 {
		p = append(p, []phase{phDownload, phWrite}[c.rng.IntN(2)])
	}
	last := []phase{phProbation}
	if budget > 8 && c.rng.IntN(2) == 0 {
		last = append(last, phProbation)
	}
	p = append(p, phSwitch, phTrial)
	for len(p)+len(last) < budget {
		if c.rng.IntN(2) == 0 && len(p)+len(last)+2 <= budget {
			p = append(p, phSwitch)
		}
		p = append(p, phTrial)
	}
	p = append(p, last...)
	return p[len(p)-budget:]
}

// runRound aims, cuts and checks the next phases of the plan in rollout
// id; it ends when the plan does, when the update is committed, or when it
// was rolled back and the agent will not take the same offer again.
func (c *cutter) runRound(id string) error {
	defer func() {
		if c.held {
			c.a.thaw(nil)
			c.held = false
		}
	}()
	for len(c.plan) > 0 {
		target := c.plan[0]
		landed, at, kids, err := c.aim(target, id)
		if err != nil {
			return fmt.Errorf("%s: aiming at %s: %w", c.a.id, target, err)
		}
		if kids == nil {
			break // the update ended before the phase came: no cut
		}
		c.plan = c.plan[1:]
		k := cut{aimed: target, landed: landed, record: at.state}
		if err := c.a.cutPower(kids); err != nil {
			return err
		}
		// power off: what would the bootloader start?
		s, err := readFlash(c.a.dir)
		if err != nil {
			return fmt.Errorf("%s: after the cut in %s: %w", c.a.id, landed, err)
		}
		k.slot = bootSlot(s.od, s.loads)
		if k.slot < 0 {
			return fmt.Errorf("%s: unbootable after a cut in %s: otadata %+v, images load %v", c.a.id, landed, s.od, s.loads)
		}
		body, err := os.ReadFile(filepath.Join(c.a.dir, fmt.Sprintf("slot%d.bin", k.slot)))
		if err != nil {
			return err
		}
		v, ok := c.images[sha256.Sum256(body)]
		if !ok {
			return fmt.Errorf("%s: after a cut in %s the bootloader would start slot %d, whose %d bytes are no image that verifies", c.a.id, landed, k.slot, len(body))
		}
		k.version = v
		if landed == phTrial && (k.slot != 0 || v != "1.0.0") {
			return fmt.Errorf("%s: a cut in the trial, before the confirmation, would start slot %d (%s), not the old image", c.a.id, k.slot, v)
		}
		c.roundCuts = append(c.roundCuts, k)
		c.cuts = append(c.cuts, k)
		c.mark, c.boot = len(c.a.out.String()), &k
		if err := c.a.powerOn(c.path, c.args); err != nil {
			return err
		}
		c.held = true
	}
	if c.held {
		c.a.thaw(nil)
		c.held = false
	}
	// the last power-on boots what the bootloader would, too
	return within(time.Minute, func() error {
		if booted, err := c.booted(); err != nil {
			return errStop(err)
		} else if !booted {
			return fmt.Errorf("%s: no boot since the last cut", c.a.id)
		}
		return nil
	})
}

var (
	bootLine   = regexp.MustCompile(`booted slot (\d) version (\S+) `)
	bootReason = regexp.MustCompile(`booted slot (\d) version \S+ \(simulated behaviour \d+\), reset reason (\S+)`)
)

// booted reports whether the agent booted since the last cut, and fails
// when it booted another slot or version than the bootloader's rules say.
func (c *cutter) booted() (bool, error) {
	if c.boot == nil {
		return true, nil
	}
	m := bootLine.FindStringSubmatch(c.a.out.String()[c.mark:])
	if m == nil {
		return false, nil
	}
	k := c.boot
	if m[1] != strconv.Itoa(k.slot) || m[2] != k.version {
		return false, fmt.Errorf("%s: after the cut in %s it booted slot %s (%s), the bootloader's rules say slot %d (%s)", c.a.id, k.landed, m[1], m[2], k.slot, k.version)
	}
	c.boot = nil
	return true, nil
}

// aim follows the agent until its flash says it is in phase target (for a
// download: with at least a seeded random share of the image written; for
// the probation: after a seeded random number of steps in it) and returns
// with its process tree stopped there, or past it when the phase went by
// between two steps; never before the agent booted since the last cut.
// It returns no processes when the update ended before (committed, rolled
// back, or idle again after it was seen under way). Far from the phase it
// polls the running agent; near it, it steps: stops the tree, reads the
// flash, and lets it run on for a seeded random slice of 20 to 300 µs. An
// agent just powered on is held before it runs: for a phase that comes
// soon after a boot (the switch, the trial, the probation) the steps
// begin there.
func (c *cutter) aim(target phase, id string) (phase, flashState, []int, error) {
	share := int64(float64(c.size) * (0.05 + 0.85*c.rng.Float64()))
	extra := c.rng.IntN(20)
	seen := false
	over := func(p phase, s flashState) bool {
		// rolled back after a power cut, the agent takes the same offer
		// again (its flags are clear; see withdrawn); otherwise not
		// before a new rollout
		return p == phCommitted || p == phNone && seen ||
			p == phRolledBack && s.flags&pfIgnoreOffer != 0 && strings.HasPrefix(s.rollout, id)
	}
	// withdrawn: rolled back after a power cut, the agent would take the
	// same offer again, but the broker withdraws the offer of a member it
	// counts rolled back. The agent gets it again only if the retained
	// offer reached it before the withdrawal, and then the empty offer
	// that follows may end that download (the agent idle again, maybe
	// between two looks at its flash). Once the rollout has the member
	// done, with the agent rolled back or idle, the round is over for it.
	// Asked at most every 100 ms, never with the agent stopped (otactl
	// takes a while).
	var asked time.Time
	withdrawn := func(p phase, s flashState) bool {
		idle := p == phNone || p == phRolledBack && s.flags&pfIgnoreOffer == 0 && strings.HasPrefix(s.rollout, id)
		if !idle || time.Since(asked) < 100*time.Millisecond {
			return false
		}
		asked = time.Now()
		if !c.memberDone(id) {
			return false
		}
		c.withdrawn++
		return true
	}
	hit := func(p phase, s flashState) bool {
		switch {
		case target.inDownload():
			return p == target && s.part >= share
		case target == phProbation && p == phProbation:
			extra--
			return extra < 0
		}
		return p == target
	}
	past := func(p phase) bool {
		return p > target && p < phCommitted && !(p.inDownload() && target.inDownload())
	}
	near := func(p phase, s flashState) bool {
		switch target {
		case phDownload, phWrite:
			return p.inDownload() && s.part >= share || past(p)
		case phSwitch:
			return p.inDownload() && s.part >= int64(c.size)*3/4 || p >= phSwitch
		case phTrial:
			return p >= phSwitch
		}
		return p >= phTrial
	}
	stepping := c.held && target >= phSwitch
	if c.held && !stepping {
		c.a.thaw(nil)
		c.held = false
	}
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		if !stepping {
			s, err := readFlash(c.a.dir)
			if err != nil {
				return 0, s, nil, err
			}
			p := s.phase()
			booted, err := c.booted()
			if err != nil {
				return 0, s, nil, err
			}
			if !booted {
				// what the flash says from before the cut
				time.Sleep(time.Millisecond)
				continue
			}
			seen = seen || p > phNone && p < phCommitted
			if over(p, s) || withdrawn(p, s) {
				return p, s, nil, nil
			}
			if !near(p, s) {
				time.Sleep(3 * time.Millisecond)
				continue
			}
			stepping = true
		}
		kids, err := c.a.freeze()
		if err != nil {
			return 0, flashState{}, nil, err
		}
		c.held = false
		s, err := readFlash(c.a.dir)
		if err != nil {
			c.a.thaw(kids)
			return 0, s, nil, err
		}
		p := s.phase()
		booted, err := c.booted()
		if err != nil {
			c.a.thaw(kids)
			return 0, s, nil, err
		}
		seen = seen || booted && p > phNone && p < phCommitted
		switch {
		case booted && (hit(p, s) || past(p)):
			return p, s, kids, nil
		case booted && over(p, s):
			c.a.thaw(kids)
			return p, s, nil, nil
		}
		c.a.thaw(kids)
		if booted && withdrawn(p, s) {
			return p, s, nil, nil
		}
		time.Sleep(time.Duration(20+c.rng.IntN(280)) * time.Microsecond)
	}
	last, err := readFlash(c.a.dir)
	return 0, flashState{}, nil, fmt.Errorf("not there within 3 minutes (its flash: phase %s, state record %s, flags %#x, rollout %q, offset %d, slot1.part %d bytes; read: %v)",
		last.phase(), last.state, last.flags, last.rollout, last.offset, last.part, err)
}

// memberDone reports whether the agent's member of rollout id is in a
// final state (false when otactl fails: the caller asks again).
func (c *cutter) memberDone(id string) bool {
	out, _, code := c.a.w.otactl("--json", "rollout", "devices", id)
	if code != 0 {
		return false
	}
	var ds []rollout.DeviceView
	if json.Unmarshal([]byte(out), &ds) != nil {
		return false
	}
	for _, d := range ds {
		if d.Device == c.a.id {
			st, ok := rollout.ParseState(d.State)
			return ok && st.Done()
		}
	}
	return false
}

// freeze stops the agent's process tree with SIGSTOP and waits until each
// process of it is stopped: the device process first (the one whose
// progress counts), then the supervisor (stopped, it starts no device
// process), then any device process it started in between. It returns
// the device processes.
func (a *agent) freeze() ([]int, error) {
	sup := a.cmd.Process.Pid
	kids := children(sup)
	for _, k := range kids {
		_ = syscall.Kill(k, syscall.SIGSTOP)
	}
	if err := syscall.Kill(sup, syscall.SIGSTOP); err != nil {
		return nil, fmt.Errorf("%s: stop the supervisor: %w", a.id, err)
	}
	if err := waitStopped(sup); err != nil {
		return nil, fmt.Errorf("%s: %w", a.id, err)
	}
	all := []int{}
	for _, k := range children(sup) {
		if !slices.Contains(kids, k) {
			_ = syscall.Kill(k, syscall.SIGSTOP)
		}
		if err := waitStopped(k); err != nil {
			return nil, fmt.Errorf("%s: %w", a.id, err)
		}
		all = append(all, k)
	}
	return all, nil
}

// thaw lets a frozen tree run on.
func (a *agent) thaw(kids []int) {
	for _, k := range kids {
		_ = syscall.Kill(k, syscall.SIGCONT)
	}
	_ = syscall.Kill(a.cmd.Process.Pid, syscall.SIGCONT)
}

// cutPower kills the frozen tree with SIGKILL: the board loses power
// (nothing runs after the point where it was stopped), and waits until
// every process of it is gone.
func (a *agent) cutPower(kids []int) error {
	_ = syscall.Kill(a.cmd.Process.Pid, syscall.SIGKILL)
	for _, k := range kids {
		_ = syscall.Kill(k, syscall.SIGKILL)
	}
	select {
	case <-a.done:
	case <-time.After(30 * time.Second):
		return fmt.Errorf("%s: the supervisor did not end after SIGKILL", a.id)
	}
	for _, k := range kids {
		if err := within(30*time.Second, func() error {
			if st := procState(k); st != 0 && st != 'Z' && st != 'X' {
				return fmt.Errorf("%s: device process %d still there (%c) after SIGKILL", a.id, k, st)
			}
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// powerOn starts the agent again on its data directory with its command
// line (path and args): the board powers up. The process starts held: a
// shell that stops itself and, once continued (thaw), executes the agent
// in its place, so the first steps of aim see it before it ran.
func (a *agent) powerOn(path string, args []string) error {
	cmd := exec.Command("sh", append([]string{"-c", `kill -STOP $$; exec "$0" "$@"`, path}, args...)...)
	cmd.Stdout, cmd.Stderr = a.out, a.out
	fmt.Fprintf(a.out, "---- power on\n")
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: power on: %w", a.id, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	a.cmd, a.done = cmd, done
	return waitStopped(cmd.Process.Pid)
}

// children are pid's child processes (/proc/PID/task/PID/children: the
// supervisor has one thread).
func children(pid int) []int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// procState is the state letter of process pid (/proc/PID/stat), 0 when
// it is gone.
func procState(pid int) byte {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0
	}
	return b[i+2]
}

// waitStopped waits until process pid is stopped (or gone: a device
// process that ended on its own).
func waitStopped(pid int) error {
	return within(10*time.Second, func() error {
		switch procState(pid) {
		case 'T', 't', 'Z', 'X', 0:
			return nil
		}
		return fmt.Errorf("process %d did not stop", pid)
	})
}

// stopErr ends within at once.
type stopErr struct{ error }

func errStop(err error) error { return stopErr{err} }

// within polls cond until it returns nil, or returns its last error after
// d (at once for an error from errStop). For goroutines, where eventually
// cannot fail the test.
func within(d time.Duration, cond func() error) error {
	deadline := time.Now().Add(d)
	delay := 100 * time.Microsecond
	for {
		err := cond()
		if err == nil {
			return nil
		}
		var s stopErr
		if errors.As(err, &s) {
			return s.error
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(delay)
		delay = min(2*delay, 100*time.Millisecond)
	}
}
