package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/rollout"
)

// TestCrashOnBootAndRecovery is scenario 2, then scenario 9 on the same
// fleet.
//
// Scenario 2: a release whose image crashes at boot. The canary agents
// install it, reboot into it, crash before confirming it, and the
// bootloader (ESP-IDF's otadata rules, simulated) takes them back to the
// old slot; they report the rollback, the rollout pauses at the canary by
// its rollback threshold, and no agent outside the canary is offered the
// release.
//
// Scenario 9: the operator aborts the bad rollout, rolls out the good
// release signed before the bad one (a lower sequence number: the rolled
// back agents' replay guard did not move, so they accept it), then a fixed
// release as a new rollout; the fleet converges on it.
func TestCrashOnBootAndRecovery(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "")
	groups := fleetGroups()
	agents := w.fleet(2, groups, nil)
	n := len(agents)
	const size = 40 * 1024
	// signed in this order: the good release, then the bad one
	good := w.release(2, "1.1.0", healthy, 1000, size)
	bad := w.release(2, "1.2.0", crashAtBoot, 2000, size)
	var canary, others []*agent
	for _, a := range agents {
		if a.group == "canary" {
			canary = append(canary, a)
		} else {
			others = append(others, a)
		}
	}

	// ---- scenario 2
	rec := newRecord(t, 2, fmt.Sprintf("the otamq binary, %d otamq-agent --supervise processes (groups %s), otactl; the rollout of scenario 1 (canary, internal, pilot, 50%%, 100%%) with the default thresholds",
		n, groupList(groups)), "release 1.2.0, an image that crashes (panics, exit 21) every time it boots, before the agent can confirm it")
	start := time.Now()
	w.rollout("bad", "release: "+bad.ID+"\n"+stagedSpec)
	v := w.waitRollout("bad", 2*time.Minute, func(v rollout.View) error {
		if v.State != "paused" {
			return fmt.Errorf("not paused")
		}
		return nil
	})
	paused := time.Since(start)
	if v.PausedBy != "threshold" || !strings.Contains(v.Reason, "wave canary") || !strings.Contains(v.Reason, "rollbacks") {
		t.Errorf("paused by %q: %q; want the canary's rollback threshold", v.PausedBy, v.Reason)
	}
	if v.Waves[0].Name != "canary" || v.Waves[0].Counts["rolled_back"] != len(canary) || v.Counts["rolled_back"] != len(canary) {
		t.Errorf("canary counts %v, all %v; want %d rolled back", nonzero(v.Waves[0].Counts), nonzero(v.Counts), len(canary))
	}
	for _, wv := range v.Waves[1:] {
		if wv.State != "pending" || wv.Counts["eligible"] != wv.Devices {
			t.Errorf("wave %s is %s with %v: started although the canary failed", wv.Name, wv.State, nonzero(wv.Counts))
		}
	}
	rec.checked("the rollout paused by its rollback threshold at the canary (%q); every later wave still pending, all its devices eligible", v.Reason)

	// the canary agents reverted on their own and said so
	devs := w.rolloutDevices("bad")
	for _, a := range canary {
		if d := devs[a.id]; d.State != "rolled_back" {
			t.Errorf("%s: %s (%s), want rolled_back", a.id, d.State, d.Reason)
		}
		tl := w.timeline(a.id, "bad")
		if err := inOrder(tl, "offer", "update.download.completed", "update.install.completed", "update.reboot.started",
			"update.rollback.triggered", "update.rollback.completed"); err != nil {
			t.Errorf("%s: %v", a.id, err)
		}
		for _, e := range tl {
			if e.Type == "update.rollback.completed" && e.Error != "boot_failure" {
				t.Errorf("%s: rollback %+v, want error boot_failure", a.id, e)
			}
			if e.Type == "update.health.ok" || e.Type == "update.reboot.completed" {
				t.Errorf("%s: the crashing image reported %s", a.id, e.Type)
			}
		}
		eventually(t, 30*time.Second, func() error {
			f, err := a.flash()
			if err != nil {
				return err
			}
			// the crashed image's otadata entry is no longer usable
			// (ABORTED by the bootloader); the old slot is confirmed
			if f.Boot != 0 || f.version() != "1.0.0" || f.BootState != "VALID" || f.Other == "VALID" || f.Other == "NEW" ||
				f.Other == "PENDING_VERIFY" || f.Slots[1] != "1.2.0" || f.State != "rolled_back" || f.Guard != 0 {
				return fmt.Errorf("%s: flash %s, slots %v; want slot 0 (1.0.0) VALID, the other unusable, rolled_back, guard 0", a.id, f, f.Slots)
			}
			return nil
		})
		if b := a.boots(1, "1.2.0"); b != 1 {
			t.Errorf("%s booted the bad image %d times, want once", a.id, b)
		}
	}
	eventually(t, 20*time.Second, func() error {
		bdevs := w.devices()
		for _, a := range canary {
			st := bdevs[a.id].Status
			if st.Firmware != "1.0.0" || st.Slot != 0 || st.BootReason != "rollback" || st.OTAState != "rolled_back" || st.ReplayGuard != 0 {
				return fmt.Errorf("%s: broker sees firmware %q slot %d boot reason %q state %q guard %d", a.id, st.Firmware, st.Slot, st.BootReason, st.OTAState, st.ReplayGuard)
			}
		}
		return nil
	})
	rec.checked("each canary agent booted 1.2.0 once, crashed, was started on slot 0 (1.0.0) by the simulated bootloader, reported update.rollback.triggered and update.rollback.completed with boot_failure, never health ok")
	rec.checked("each canary agent's flash: otadata boots slot 0 (1.0.0), VALID, the bad image's entry unusable; state record rolled_back, replay guard still 0; the broker sees firmware 1.0.0, boot reason rollback, rolled_back")

	// nobody outside the canary heard of the release: not in the
	// rollout's devices, not in the timelines, not in the agents' state
	offeredOutside := 0
	for _, a := range others {
		if d := devs[a.id]; d.State != "eligible" || !d.Offered.IsZero() {
			t.Errorf("%s (group %s): %s, offered %v", a.id, a.group, d.State, d.Offered)
		}
		if tl := w.timeline(a.id, "bad"); len(tl) != 0 {
			offeredOutside++
			t.Errorf("%s (group %s) has timeline entries about the bad rollout: %+v", a.id, a.group, tl)
		}
		f, err := a.flash()
		if err != nil {
			t.Fatal(err)
		}
		if f.Rollout != "" || f.State != "idle" || f.version() != "1.0.0" {
			t.Errorf("%s (group %s): flash %s", a.id, a.group, f)
		}
	}
	rec.checked("no agent outside the canary was offered the release: no timeline entry about the rollout, still eligible in it, its own state record idle with no rollout, on 1.0.0")

	m := w.metrics()
	for _, c := range []struct {
		name   string
		labels []string
		want   int
	}{
		{"otamq_rollout_state", []string{"rollout", "bad", "state", "paused"}, 1},
		{"otamq_rollout_devices", []string{"rollout", "bad", "wave", "canary", "state", "rolled_back"}, len(canary)},
		{"otamq_rollout_devices", []string{"rollout", "bad", "state", "eligible"}, len(others)},
		{"otamq_updates_total", []string{"result", "rolled_back", "version", "1.2.0"}, len(canary)},
		{"otamq_updates_total", []string{"version", "1.2.0"}, len(canary)},
		{"otamq_rollbacks_total", []string{"version", "1.2.0"}, len(canary)},
		{"otamq_rollout_alarms_total", []string{"kind", "rollback", "level", "pause"}, 1},
		{"otamq_devices_by_version", []string{"version", "1.0.0"}, n},
	} {
		if got := m.sum(c.name, c.labels...); int(got) != c.want {
			t.Errorf("%s%v = %v, want %d", c.name, c.labels, got, c.want)
		}
	}
	rec.checked("/metrics agrees: rollout paused = 1; %d rolled back in wave canary; otamq_updates_total{result=rolled_back} = otamq_rollbacks_total = %d; one rollback pause alarm; all %d devices on 1.0.0", len(canary), len(canary), n)
	rec.figure("agents", "%d (%d in the canary)", n, len(canary))
	rec.figure("canary agents rolled back on their own", "%d of %d", len(canary), len(canary))
	rec.figure("agents outside the canary offered the release", "%d of %d", offeredOutside, len(others))
	rec.figure("rollout start to pause", "%.1f s", paused.Seconds())
	rec.finish()
	if t.Failed() {
		return
	}

	// ---- scenario 9
	rec = newRecord(t, 9, fmt.Sprintf("the fleet of scenario 2 right after it: %d agents, %d of them rolled back from 1.2.0", n, len(canary)),
		"nothing new: the recovery of the operator after the bad release (abort it, the previous good release again, then a fixed one)")
	w.must("rollout", "abort", "bad", "--reason", "1.2.0 crashes at boot")
	if v := w.status("bad"); v.State != "aborted" || v.Counts["cancelled"] != len(others) {
		t.Fatalf("after the abort: %s, %v", v.State, nonzero(v.Counts))
	}
	recovery := "waves:\n  - {name: canary, groups: [canary]}\n  - {percent: [100]}\nbake: 1s\nprobation: 2s\n"
	start = time.Now()
	w.rollout("good-again", "release: "+good.ID+"\n"+recovery)
	w.waitRollout("good-again", 3*time.Minute, func(v rollout.View) error {
		if v.State != "completed" || v.Counts["succeeded"] != n {
			return fmt.Errorf("not completed with %d succeeded", n)
		}
		return nil
	})
	tookGood := time.Since(start)
	for _, a := range agents {
		eventually(t, 30*time.Second, func() error {
			f, err := a.flash()
			if err != nil {
				return err
			}
			if f.Boot != 1 || f.version() != "1.1.0" || f.BootState != "VALID" || f.State != "committed" || f.Guard != good.Seq {
				return fmt.Errorf("%s: flash %s; want slot 1 (1.1.0) VALID, committed, guard %d", a.id, f, good.Seq)
			}
			return nil
		})
		for _, e := range w.timeline(a.id, "good-again") {
			if e.Type == "update.rejected" || e.Error != "" {
				t.Errorf("%s: %+v", a.id, e)
			}
		}
	}
	rec.checked("the rolled-back canary agents accepted 1.1.0 (sequence %d, below the bad release's %d: a rollback does not raise the replay guard) and committed it, as did the rest; no rejection", good.Seq, bad.Seq)

	fixed := w.release(9, "1.2.1", healthy, 3000, size)
	start = time.Now()
	w.rollout("fixed", "release: "+fixed.ID+"\n"+recovery)
	w.waitRollout("fixed", 3*time.Minute, func(v rollout.View) error {
		if v.State != "completed" || v.Counts["succeeded"] != n {
			return fmt.Errorf("not completed with %d succeeded", n)
		}
		return nil
	})
	tookFixed := time.Since(start)
	for _, a := range agents {
		eventually(t, 30*time.Second, func() error {
			f, err := a.flash()
			if err != nil {
				return err
			}
			if f.Boot != 0 || f.Slots != [2]string{"1.2.1", "1.1.0"} || f.BootState != "VALID" || f.State != "committed" || f.Guard != fixed.Seq {
				return fmt.Errorf("%s: flash %s, slots %v; want slot 0 (1.2.1) VALID, committed, guard %d", a.id, f, f.Slots, fixed.Seq)
			}
			return nil
		})
		want := 0
		if a.group == "canary" {
			want = 1
		}
		if b := a.boots(1, "1.2.0"); b != want {
			t.Errorf("%s booted the bad image %d times, want %d", a.id, b, want)
		}
	}
	w.waitFleet(agents, "1.2.1")
	m = w.metrics()
	for _, c := range []struct {
		name   string
		labels []string
		want   int
	}{
		{"otamq_rollout_state", []string{"rollout", "good-again", "state", "completed"}, 1},
		{"otamq_rollout_state", []string{"rollout", "fixed", "state", "completed"}, 1},
		{"otamq_updates_total", []string{"result", "succeeded", "version", "1.1.0"}, n},
		{"otamq_updates_total", []string{"result", "succeeded", "version", "1.2.1"}, n},
		{"otamq_updates_total", []string{"result", "cancelled", "version", "1.2.0"}, len(others)},
		{"otamq_rollbacks_total", nil, len(canary)},
		{"otamq_devices_by_version", []string{"version", "1.2.1"}, n},
	} {
		if got := m.sum(c.name, c.labels...); int(got) != c.want {
			t.Errorf("%s%v = %v, want %d", c.name, c.labels, got, c.want)
		}
	}
	rec.checked("then the fixed release 1.2.1 (a new rollout): every agent committed it in slot 0 (otadata VALID, replay guard %d), the broker sees all %d on 1.2.1; the bad image never booted again", fixed.Seq, n)
	rec.checked("/metrics: both recovery rollouts completed; otamq_updates_total{result=succeeded} = %d for 1.1.0 and for 1.2.1; %d cancelled by the abort; rollbacks still %d", n, len(others), len(canary))
	rec.figure("agents converged on 1.2.1", "%d of %d", n, n)
	rec.figure("rollout of the previous good release 1.1.0, start to completed", "%.1f s", tookGood.Seconds())
	rec.figure("rollout of the fixed release 1.2.1, start to completed", "%.1f s", tookFixed.Seconds())
}
