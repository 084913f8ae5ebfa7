package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/rollout"
)

// TestBrokerKill9 is scenario 5: the broker is killed with SIGKILL in the
// middle of a wave, with agents downloading, and again while a wave bakes;
// each time it is started again on the same data and address. The
// rollout completes; every agent committed, offered exactly once (its
// timeline holds one offer); what was decided before a kill is still so
// after it (devices that had succeeded, waves that had passed, with their
// times); every wave passed, in order, none skipped.
func TestBrokerKill9(t *testing.T) {
	t.Parallel()
	// until the first kill, 16 KiB/s per device with a burst of one window
	// of 4 blocks of 4 KiB: a 128 KiB image takes about 7 s, so the kill
	// finds downloads under way; the broker restarts without the limit
	w := newWorld(t, "ota:\n  device_rate: 16384\n  max_block_size: 4096\n  max_window: 4\n")
	groups := fleetGroups()
	rec := newRecord(t, 5, "", "SIGKILL of the broker process twice: in the middle of a wave with agents downloading, and while a later wave baked; each time started again on the same data directory and address")
	agents := w.fleet(5, groups, nil)
	n := len(agents)
	const size = 128 * 1024
	rel := w.release(5, "1.1.0", healthy, 1000, size)
	spec := "release: " + rel.ID + `
waves:
  - {name: canary, groups: [canary]}
  - {name: internal, groups: [internal]}
  - {name: pilot, groups: [pilot]}
  - {percent: [50, 100]}
rate: {in_flight: 2}
bake: 4s
probation: 1s
`
	rec.r.Setup = fmt.Sprintf("the otamq binary on a data directory, %d otamq-agent --supervise processes (groups %s), otactl; until the first kill the broker throttles downloads to 16 KiB/s per device (128 KiB image, 4 KiB blocks, window 4), then runs on its defaults; at most 2 devices in flight, bake 4 s",
		n, groupList(groups))
	start := time.Now()
	w.rollout("k9", spec)

	// kill 1: in the middle of the internal wave, a download under way
	before1 := w.waitRollout("k9", 2*time.Minute, func(v rollout.View) error {
		wv := v.Waves[1]
		if wv.State != "running" || wv.Counts["downloading"] == 0 {
			return fmt.Errorf("wave %s %s: %v", wv.Name, wv.State, nonzero(wv.Counts))
		}
		return nil
	})
	w.setConfig("")
	up1, online1 := w.restart()
	at1 := fmt.Sprintf("wave %s running: %s", before1.Waves[1].Name, counts(before1.Waves[1].Counts))
	after1 := w.status("k9")
	checkKept(t, before1, after1)
	rec.checked("kill -9 in the middle of wave %s (%s): after the restart every device that had succeeded still had, every wave that had passed still had with the same times", before1.Waves[1].Name, at1)

	// kill 2: while a later wave bakes
	before2 := w.waitRollout("k9", 2*time.Minute, func(v rollout.View) error {
		for i, wv := range v.Waves {
			if i >= 2 && wv.State == "baking" {
				return nil
			}
		}
		return fmt.Errorf("no later wave baking")
	})
	baking := ""
	for _, wv := range before2.Waves {
		if wv.State == "baking" {
			baking = wv.Name
		}
	}
	up2, online2 := w.restart()
	after2 := w.status("k9")
	checkKept(t, before2, after2)
	for _, wv := range after2.Waves {
		if wv.Name == baking && wv.State != "baking" && wv.State != "passed" {
			t.Errorf("wave %s was baking before the kill, %s after it", wv.Name, wv.State)
		}
	}
	rec.checked("kill -9 while wave %s baked: after the restart the wave was still baking (or had passed at its stored bake end), nothing decided before was lost", baking)

	v := w.waitRollout("k9", 3*time.Minute, func(v rollout.View) error {
		if v.State != "completed" {
			return fmt.Errorf("not completed")
		}
		return nil
	})
	took := time.Since(start)
	if v.Counts["succeeded"] != n {
		t.Fatalf("counts %v, want %d succeeded", nonzero(v.Counts), n)
	}
	checkWavesInOrder(t, v)
	rec.checked("the rollout completed: %d of %d succeeded; waves %s: passed in order, each after the one before, none skipped", n, n, waveNames(v))

	passed := map[string]time.Time{}
	var names []string
	for _, wv := range v.Waves {
		passed[wv.Name], names = wv.Passed, append(names, wv.Name)
	}
	devs := w.rolloutDevices("k9")
	maxOffers := 0
	for _, a := range agents {
		d := devs[a.id]
		if i := slices.Index(names, d.Wave); i > 0 && d.Offered.Before(passed[names[i-1]]) {
			t.Errorf("%s of wave %s offered %v, before wave %s passed", a.id, d.Wave, d.Offered, names[i-1])
		}
		tl := w.timeline(a.id, "k9")
		k := countOf(tl, "broker", "offer")
		if k != 1 {
			t.Errorf("%s was offered %d times: %+v", a.id, k, tl)
		}
		maxOffers = max(maxOffers, k)
		if err := inOrder(tl, "offer", "update.download.completed", "update.reboot.completed", "update.health.ok"); err != nil {
			t.Errorf("%s: %v", a.id, err)
		}
		eventually(t, 30*time.Second, func() error {
			f, err := a.flash()
			if err != nil {
				return err
			}
			if f.Boot != 1 || f.BootState != "VALID" || f.Slots != [2]string{"1.0.0", "1.1.0"} || f.State != "committed" || f.Guard != rel.Seq {
				return fmt.Errorf("%s: flash %s, slots %v; want slot 1 (1.1.0) VALID, committed", a.id, f, f.Slots)
			}
			return nil
		})
	}
	w.waitFleet(agents, "1.1.0")
	rec.checked("every agent was offered exactly once (one offer in its timeline), none before the wave before its own passed, and committed 1.1.0 in slot 1 (its own otadata VALID, state record committed)")

	m := w.metrics()
	for _, wv := range v.Waves {
		for st, k := range wv.Counts {
			if got := m.sum("otamq_rollout_devices", "rollout", "k9", "wave", wv.Name, "state", st); int(got) != k {
				t.Errorf("otamq_rollout_devices{wave=%q,state=%q} = %v, status says %d", wv.Name, st, got, k)
			}
		}
	}
	if got := m.sum("otamq_rollout_state", "rollout", "k9", "state", "completed"); got != 1 {
		t.Errorf("otamq_rollout_state{state=completed} = %v", got)
	}
	rec.checked("the restarted broker's /metrics agree with the status: otamq_rollout_devices per wave and state, otamq_rollout_state completed = 1")

	rec.figure("agents", "%d", n)
	rec.figure("kill 1", "%s", at1)
	rec.figure("kill 2", "wave %s baking", baking)
	rec.figure("kill -9 to the new broker's \"otamq started\"", "%.2f s, %.2f s", up1.Seconds(), up2.Seconds())
	rec.figure("kill -9 to every agent connected again", "%.1f s, %.1f s", online1.Seconds(), online2.Seconds())
	rec.figure("rollout, start to completed (two kills included)", "%.1f s", took.Seconds())
	rec.figure("most offers an agent saw", "%d", maxOffers)
}

// setConfig replaces the broker's configuration file for its next start.
func (w *world) setConfig(config string) {
	w.t.Helper()
	if w.config == "" {
		w.config = filepath.Join(w.dir, "otamq.yaml")
	}
	if err := os.WriteFile(w.config, []byte(config), 0o600); err != nil {
		w.t.Fatal(err)
	}
}

// restart kills the broker with SIGKILL and starts it again on the same
// data and address. It returns how long from the kill the new broker took
// to say it started, and until every agent was connected to it again.
func (w *world) restart() (started, online time.Duration) {
	w.t.Helper()
	t0 := time.Now()
	w.broker.kill()
	w.start()
	started = time.Since(t0)
	eventually(w.t, time.Minute, func() error {
		devs := w.devices()
		for _, a := range w.agents {
			if st := devs[a.id].Status; !st.Online || !st.ConnectedAt.After(t0) {
				return fmt.Errorf("%s: online %v, connected at %v: not since the kill", a.id, st.Online, st.ConnectedAt)
			}
		}
		return nil
	})
	return started, time.Since(t0)
}

// checkKept: what before showed as decided is so in after: devices that
// had a result keep it, waves that had passed keep their times.
func checkKept(t *testing.T, before, after rollout.View) {
	t.Helper()
	if after.State != "running" && after.State != "completed" {
		t.Errorf("after the restart the rollout is %s (%s)", after.State, after.Reason)
	}
	for i, wb := range before.Waves {
		wa := after.Waves[i]
		if wa.Counts["succeeded"] < wb.Counts["succeeded"] {
			t.Errorf("wave %s: %d succeeded before the kill, %d after", wb.Name, wb.Counts["succeeded"], wa.Counts["succeeded"])
		}
		if wb.State == "passed" && (wa.State != "passed" || !wa.Passed.Equal(wb.Passed) || !wa.Started.Equal(wb.Started)) {
			t.Errorf("wave %s passed %v before the kill; after it %s, passed %v", wb.Name, wb.Passed, wa.State, wa.Passed)
		}
		if !wb.Started.IsZero() && !wa.Started.Equal(wb.Started) {
			t.Errorf("wave %s started %v before the kill, %v after", wb.Name, wb.Started, wa.Started)
		}
	}
}
