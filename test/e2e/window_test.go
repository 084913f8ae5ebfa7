package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/rollout"
)

// TestMaintenanceWindow is scenario 8: a rollout with a maintenance window
// (install: in_window) whose window, in each device's local time, is open
// now for some agents (tz tag Etc/GMT-2, UTC+2) and opens 30 to 90 s
// from now for the others (tz UTC). Every agent downloads and verifies at
// once; the open ones install and commit; the closed ones wait, verified,
// on their old image, and install only once their window opens.
func TestMaintenanceWindow(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "")
	groups := []group{{"open", 2}, {"closed", 2}}
	if suite.long {
		groups = []group{{"open", 5}, {"closed", 5}}
	}
	rec := newRecord(t, 8, "", "")
	agents := w.fleet(8, groups, nil)
	zone := map[string]string{"open": "Etc/GMT-2", "closed": "UTC"}
	for _, a := range agents {
		w.must("device", "update", a.id, "--tag", "tz="+zone[a.group])
	}
	rel := w.release(8, "1.1.0", healthy, 1000, 32*1024)

	// the window opens at the start of a minute 30 to 90 s from now, in
	// UTC, and lasts 3 hours: open now at UTC+2, closed for now at UTC
	opens := time.Now().UTC().Add(30 * time.Second).Truncate(time.Minute).Add(time.Minute)
	window := fmt.Sprintf(`{start: "%s", end: "%s"}`, opens.Format("15:04"), opens.Add(3*time.Hour).Format("15:04"))
	rec.r.Setup = fmt.Sprintf("the otamq binary, %d otamq-agent --supervise processes, otactl (device update --tag tz=..., rollout create/start); window %s in each device's local time, install in_window", len(agents), window)
	rec.r.Injected = fmt.Sprintf("local times on both sides of the window: %d agents at UTC+2 (tz Etc/GMT-2, inside it), %d at UTC (tz UTC, before it opens at %s UTC)", groups[0].n, groups[1].n, opens.Format("15:04"))
	w.rollout("window", "release: "+rel.ID+"\nwaves:\n  - {percent: [100]}\nwindow: "+window+"\nprobation: 2s\n")

	// the open agents commit; the closed ones downloaded and wait
	eventually(t, 2*time.Minute, func() error {
		for _, a := range agents {
			f, err := a.flash()
			if err != nil {
				return err
			}
			if a.group == "open" && (f.State != "committed" || f.version() != "1.1.0") {
				return fmt.Errorf("%s (open): %s", a.id, f)
			}
			if a.group == "closed" && f.State != "verified" {
				return fmt.Errorf("%s (closed): %s", a.id, f)
			}
		}
		return nil
	})
	var waited []time.Duration
	devs := w.rolloutDevices("window")
	for _, a := range agents {
		if a.group != "closed" {
			continue
		}
		tl := w.timeline(a.id, "window")
		done := first(tl, "update.download.completed")
		if done.IsZero() || !done.Before(opens) {
			t.Fatalf("%s finished its download at %v, not before its window opened at %v: the closed window was not tested", a.id, done, opens)
		}
		if time.Now().Before(opens) {
			if d := devs[a.id]; d.State != "verified" {
				t.Errorf("%s before its window: %s (%s)", a.id, d.State, d.Reason)
			}
			if f, _ := a.flash(); f.Boot != 0 || f.version() != "1.0.0" {
				t.Errorf("%s before its window: %s", a.id, f)
			}
		}
	}
	rec.checked("every agent downloaded and verified at once; the agents inside their window installed and committed 1.1.0; the others waited verified on 1.0.0 (own flash: state verified, otadata still boots slot 0)")

	v := w.waitRollout("window", 4*time.Minute, func(v rollout.View) error {
		if v.State != "completed" {
			return fmt.Errorf("not completed")
		}
		return nil
	})
	if v.Counts["succeeded"] != len(agents) {
		t.Fatalf("counts %v", nonzero(v.Counts))
	}
	for _, a := range agents {
		tl := w.timeline(a.id, "window")
		inst := first(tl, "update.install.started")
		if a.group == "closed" {
			if inst.Before(opens) {
				t.Errorf("%s (closed) began to install at %v, before its window opened at %v", a.id, inst, opens)
			}
			waited = append(waited, inst.Sub(first(tl, "update.download.completed")))
		} else if !inst.Before(opens) {
			t.Errorf("%s (open) began to install at %v, only after %v", a.id, inst, opens)
		}
		eventually(t, 30*time.Second, func() error {
			f, err := a.flash()
			if err != nil {
				return err
			}
			if f.Boot != 1 || f.BootState != "VALID" || f.version() != "1.1.0" || f.State != "committed" {
				return fmt.Errorf("%s: %s", a.id, f)
			}
			return nil
		})
	}
	rec.checked("once the window opened in UTC, the waiting agents got their install command: each began to install after %s UTC (its timeline), committed 1.1.0, and the rollout completed with every agent succeeded; the open agents had begun before", opens.Format("15:04"))
	rec.figure("agents", "%d inside the window, %d outside", groups[0].n, groups[1].n)
	rec.durations("closed agents, download completed to install started", waited)
}
