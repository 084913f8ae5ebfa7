package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/rollout"
)

// fleetGroups is the fleet of scenarios 1, 2 and 9: groups canary, internal,
// pilot and rest; 20 agents in the long version, 8 in the short one.
func fleetGroups() []group {
	if suite.long {
		return []group{{"canary", 2}, {"internal", 3}, {"pilot", 5}, {"rest", 10}}
	}
	return []group{{"canary", 2}, {"internal", 2}, {"pilot", 2}, {"rest", 2}}
}

// stagedSpec is the rollout of scenarios 1 and 2: a named wave per group,
// then the rest in two steps; short bakes and probation so that it takes
// seconds.
const stagedSpec = `waves:
  - {name: canary, groups: [canary]}
  - {name: internal, groups: [internal]}
  - {name: pilot, groups: [pilot]}
  - {percent: [50, 100]}
bake: 1s
probation: 2s
`

// TestHappyPath is scenario 1: a healthy release, signed and uploaded with
// otactl, goes canary → internal → pilot → the rest to every agent. Every
// agent ends committed on the new version in its other slot, and the
// rollout's status, the broker's metrics, the broker's device view and
// the agents' own flash agree.
func TestHappyPath(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "")
	groups := fleetGroups()
	rec := newRecord(t, 1, "", "")
	agents := w.fleet(1, groups, nil)
	rec.r.Setup = fmt.Sprintf("the otamq binary, %d otamq-agent --supervise processes (groups %s), otactl keygen, key add, device import, sign, release upload, rollout create/start/status",
		len(agents), groupList(groups))
	const size = 48 * 1024
	rel := w.release(1, "1.1.0", healthy, 1000, size)
	start := time.Now()
	w.rollout("happy", "release: "+rel.ID+"\n"+stagedSpec)
	v := w.waitRollout("happy", 5*time.Minute, func(v rollout.View) error {
		if v.State != "completed" {
			return fmt.Errorf("not completed")
		}
		return nil
	})
	took := time.Since(start)

	// the rollout: every device succeeded, every wave passed in order
	n := len(agents)
	if v.Devices != n || v.Counts["succeeded"] != n {
		t.Fatalf("rollout counts %v of %d devices, want %d succeeded", nonzero(v.Counts), v.Devices, n)
	}
	checkWavesInOrder(t, v)
	rec.checked("the rollout completed: %d of %d devices succeeded; waves %s: each started after the one before passed, none skipped", n, n, waveNames(v))

	// each agent's wave is its group's (the rest by percentage)
	devs := w.rolloutDevices("happy")
	for _, a := range agents {
		d := devs[a.id]
		want := a.group
		if a.group == "rest" {
			want = "50%|100%"
		}
		if d.State != "succeeded" || (a.group != "rest" && d.Wave != a.group) || (a.group == "rest" && d.Wave != "50%" && d.Wave != "100%") {
			t.Errorf("%s (group %s): wave %s, state %s; want wave %s, succeeded", a.id, a.group, d.Wave, d.State, want)
		}
	}
	rec.checked("every agent was in its group's wave (the rest in 50%% or 100%%) and succeeded (otactl rollout devices)")

	// the agents' own state: committed on 1.1.0 in slot 1, confirmed
	// (otadata VALID), the factory image still in slot 0, the replay guard
	// at the release's sequence; the broker's view of each device agrees
	bdevs := w.devices()
	for _, a := range agents {
		eventually(t, 30*time.Second, func() error {
			f, err := a.flash()
			if err != nil {
				return err
			}
			if f.Boot != 1 || f.BootState != "VALID" || f.Slots != [2]string{"1.0.0", "1.1.0"} || f.State != "committed" || f.Guard != rel.Seq {
				return fmt.Errorf("%s: flash %s, slots %v; want slot 1 (1.1.0) VALID, committed, guard %d", a.id, f, f.Slots, rel.Seq)
			}
			return nil
		})
		st := bdevs[a.id].Status
		if st.Firmware != "1.1.0" || st.Slot != 1 || st.OTAState != "committed" || st.ReplayGuard != rel.Seq || !st.Online {
			eventually(t, 10*time.Second, func() error {
				st = w.devices()[a.id].Status
				if st.Firmware != "1.1.0" || st.Slot != 1 || st.OTAState != "committed" || st.ReplayGuard != rel.Seq || !st.Online {
					return fmt.Errorf("%s: broker sees firmware %q slot %d state %q guard %d online %v", a.id, st.Firmware, st.Slot, st.OTAState, st.ReplayGuard, st.Online)
				}
				return nil
			})
		}
		if b := a.boots(1, "1.1.0"); b != 1 {
			t.Errorf("%s booted 1.1.0 %d times, want once", a.id, b)
		}
	}
	rec.checked("every agent's own flash: otadata boots slot 1 (1.1.0), VALID; slot 0 keeps 1.0.0; state record committed with replay guard %d; booted the new image once", rel.Seq)
	rec.checked("the broker's device view of every agent agrees: online, firmware 1.1.0, slot 1, committed, replay guard %d", rel.Seq)

	// each agent was offered once and reported every step, without error
	var offerToCommit []time.Duration
	for _, a := range agents {
		tl := w.timeline(a.id, "happy")
		if err := inOrder(tl, "offer", "update.download.started", "update.download.completed", "update.install.started",
			"update.install.completed", "update.reboot.started", "update.reboot.completed", "update.health.ok"); err != nil {
			t.Errorf("%s: %v", a.id, err)
			continue
		}
		if k := countOf(tl, "broker", "offer"); k != 1 {
			t.Errorf("%s was offered %d times", a.id, k)
		}
		for _, e := range tl {
			if e.Error != "" {
				t.Errorf("%s reported an error: %+v", a.id, e)
			}
		}
		offerToCommit = append(offerToCommit, first(tl, "update.health.ok").Sub(first(tl, "offer")))
	}
	rec.checked("every agent's timeline: one offer, then download, install, reboot and health ok in order, no error")

	// the metrics say the same
	m := w.metrics()
	for _, wv := range v.Waves {
		for st, k := range wv.Counts {
			if got := m.sum("otamq_rollout_devices", "rollout", "happy", "wave", wv.Name, "state", st); int(got) != k {
				t.Errorf("otamq_rollout_devices{wave=%q,state=%q} = %v, status says %d", wv.Name, st, got, k)
			}
		}
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   int
	}{
		{"otamq_rollout_state", []string{"rollout", "happy", "state", "completed"}, 1},
		{"otamq_rollout_state", []string{"rollout", "happy"}, 1},
		{"otamq_updates_total", []string{"result", "succeeded", "version", "1.1.0"}, n},
		{"otamq_updates_total", []string{"version", "1.1.0"}, n},
		{"otamq_rollbacks_total", nil, 0},
		{"otamq_update_health_failures_total", nil, 0},
		{"otamq_devices_by_version", []string{"version", "1.1.0"}, n},
		{"otamq_devices_connected", nil, n},
	} {
		if got := m.sum(c.name, c.labels...); int(got) != c.want {
			t.Errorf("%s%v = %v, want %d", c.name, c.labels, got, c.want)
		}
	}
	rec.checked("/metrics agrees: otamq_rollout_devices per wave and state equals the status counts; otamq_rollout_state completed = 1; otamq_updates_total{result=succeeded} = %d; no rollback or health failure counted; otamq_devices_by_version{version=1.1.0} = %d", n, n)

	bytesServed := m.sum("otamq_block_bytes_total")
	rec.figure("agents", "%d", n)
	rec.figure("image size", "%d bytes", size)
	rec.figure("rollout, start to completed", "%.1f s (%d waves, bake 1 s, probation 2 s)", took.Seconds(), len(v.Waves))
	rec.durations("per agent, offer to update.health.ok", offerToCommit)
	rec.figure("image bytes served / (agents × image size)", "%.3f", bytesServed/float64(n*size))
}

// checkWavesInOrder: every wave passed, each started after the one
// before it passed.
func checkWavesInOrder(t *testing.T, v rollout.View) {
	t.Helper()
	var prev time.Time
	for _, wv := range v.Waves {
		if wv.State != "passed" || wv.Passed.IsZero() {
			t.Errorf("wave %s is %s", wv.Name, wv.State)
			continue
		}
		if wv.Devices > 0 && (wv.Started.IsZero() || wv.Started.Before(prev) || wv.Passed.Before(wv.Started)) {
			t.Errorf("wave %s started %v, passed %v; the wave before passed %v", wv.Name, wv.Started, wv.Passed, prev)
		}
		prev = wv.Passed
	}
}

func waveNames(v rollout.View) string {
	var s []string
	for _, wv := range v.Waves {
		s = append(s, wv.Name)
	}
	return strings.Join(s, ", ")
}

func groupList(gs []group) string {
	var s []string
	for _, g := range gs {
		s = append(s, fmt.Sprintf("%s %d", g.name, g.n))
	}
	return strings.Join(s, ", ")
}

// counts formats the non-zero device counts of a rollout or wave, in the
// order of the device states.
func counts(c map[string]int) string {
	var s []string
	for _, st := range []string{"eligible", "offered", "downloading", "verified", "installing", "rebooting", "trial",
		"succeeded", "failed", "rolled_back", "timed_out", "skipped", "cancelled"} {
		if c[st] != 0 {
			s = append(s, fmt.Sprintf("%d %s", c[st], st))
		}
	}
	return strings.Join(s, ", ")
}

// inOrder reports the first of want (entry types, "offer" being the
// broker's) that tl lacks, in order.
func inOrder(tl []entry, want ...string) error {
	i := 0
	for _, e := range tl {
		if i < len(want) && e.Type == want[i] {
			i++
		}
	}
	if i < len(want) {
		var got []string
		for _, e := range tl {
			got = append(got, e.Source+":"+e.Type+":"+e.Error)
		}
		return fmt.Errorf("timeline lacks %s (in order): %v", want[i], got)
	}
	return nil
}

// countOf counts tl's entries from source of type typ.
func countOf(tl []entry, source, typ string) int {
	n := 0
	for _, e := range tl {
		if e.Source == source && e.Type == typ {
			n++
		}
	}
	return n
}

// first is the time of tl's first entry of type typ.
func first(tl []entry, typ string) time.Time {
	i := slices.IndexFunc(tl, func(e entry) bool { return e.Type == typ })
	if i < 0 {
		return time.Time{}
	}
	return tl[i].Time
}
