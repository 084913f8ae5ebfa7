package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/rollout"
	"github.com/otamq/otamq/test/faultproxy"
)

// healthGroups is scenario 3's fleet: agents that get an image whose health
// check fails, and agents (behind a fault proxy) whose broker is cut in
// probation.
func healthGroups() []group {
	if suite.long {
		return []group{{"health", 5}, {"probation", 5}}
	}
	return []group{{"health", 2}, {"probation", 2}}
}

// TestHealthFailures is scenario 3, two rollouts at once on two groups.
//
// health: an image that boots but whose health check fails. The agent
// does not confirm it, reports the health failure when its trial times out
// and rolls back (the bad image's otadata entry INVALID).
//
// probation: a healthy image the agents confirm; then the fault proxy
// between them and the broker cuts every connection for longer than the
// agents' no-broker trigger. Each rolls back on its own during probation,
// offline: the old image boots like a new one (esp_ota_set_boot_partition),
// the agent confirms it at once and invalidates the abandoned image. When
// the link is back it reports what happened.
//
// Both are counted as rollbacks and health failures; every agent ends on
// the old image, VALID, and a power loss afterwards boots the old image
// again, never the bad one; the rollout alert rules' expressions hold in
// Prometheus (promtool) on the scraped series exactly where the rollouts'
// rates say.
func TestHealthFailures(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "")
	groups := healthGroups()
	rec := newRecord(t, 3, "", "")
	var proxies []*faultproxy.Proxy
	agents := w.fleet(3, groups, func(id, g string) agentOpts {
		if g == "health" {
			return agentOpts{flags: []string{"--trial-timeout-ms", "2000"}}
		}
		px, url := w.proxy(id, uint64(len(proxies)))
		proxies = append(proxies, px)
		return agentOpts{url: url, flags: []string{"--probation-ms", "60000", "--no-broker-ms", "2000"}}
	})
	var hf, pb []*agent
	for _, a := range agents {
		if a.group == "health" {
			hf = append(hf, a)
		} else {
			pb = append(pb, a)
		}
	}
	rec.r.Setup = fmt.Sprintf("the otamq binary, %d otamq-agent --supervise processes: %d get an image whose health check fails (trial timeout 2 s), %d each reach the broker through a test/faultproxy of its own (probation 60 s, no-broker trigger 2 s); otactl; promtool on config/prometheus/alerts.yml",
		len(agents), len(hf), len(pb))
	rec.r.Injected = "release 1.1.0, an image whose health check fails from its first boot; and, after the agents confirmed the healthy 1.2.0, the proxy dropping every connection to the broker until the agents rolled back (longer than the 2 s no-broker trigger)"

	const size = 32 * 1024
	bad := w.release(3, "1.1.0", healthFail, 1000, size)
	good := w.release(3, "1.2.0", healthy, 2000, size)
	// the broker's own probation is long: the results come from the agents
	one := func(g string) string {
		return "selector: {groups: [" + g + "]}\nwaves:\n  - {name: canary, groups: [" + g + "]}\nprobation: 10m\n"
	}
	w.rollout("s3-health", "release: "+bad.ID+"\n"+one("health"))
	w.rollout("s3-probation", "release: "+good.ID+"\n"+one("probation"))

	// probation: every agent confirmed the image, then the link goes
	eventually(t, 2*time.Minute, func() error {
		for _, a := range pb {
			if err := inOrder(w.timeline(a.id, "s3-probation"), "update.reboot.completed", "update.health.ok"); err != nil {
				return fmt.Errorf("%s: %v", a.id, err)
			}
		}
		return nil
	})
	cut := time.Now()
	for _, px := range proxies {
		px.SetDown(true)
	}
	eventually(t, time.Minute, func() error {
		for _, a := range pb {
			f, err := a.flash()
			if err != nil {
				return err
			}
			if f.State != "rolled_back" || f.Boot != 0 || f.BootState != "VALID" {
				return fmt.Errorf("%s: %s", a.id, f)
			}
		}
		return nil
	})
	offline := time.Since(cut)
	for _, px := range proxies {
		px.SetDown(false)
	}

	vh := w.waitRollout("s3-health", 2*time.Minute, func(v rollout.View) error {
		if v.State != "paused" || v.Waves[0].Judged != len(hf) {
			return fmt.Errorf("want paused with %d results", len(hf))
		}
		return nil
	})
	vp := w.waitRollout("s3-probation", 2*time.Minute, func(v rollout.View) error {
		if v.State != "paused" || v.Waves[0].Judged != len(pb) {
			return fmt.Errorf("want paused with %d results", len(pb))
		}
		return nil
	})
	// Both thresholds are passed: which one pauses depends on what came
	// first (a probation agent's birth on the old image shows the broker
	// its rollback before its own reports say that health made it roll
	// back). Either way every result is a rollback and a health failure.
	for _, v := range []rollout.View{vh, vp} {
		if v.PausedBy != "threshold" || !strings.Contains(v.Reason, "health failures") && !strings.Contains(v.Reason, "rollbacks") {
			t.Errorf("%s paused by %s: %q; want a threshold", v.ID, v.PausedBy, v.Reason)
		}
	}
	eventually(t, 30*time.Second, func() error {
		for _, id := range []string{"s3-health", "s3-probation"} {
			wv := w.status(id).Waves[0]
			if wv.HealthFailures != wv.Judged || wv.Rollbacks != wv.Judged {
				return fmt.Errorf("%s: %d health failures and %d rollbacks of %d results", id, wv.HealthFailures, wv.Rollbacks, wv.Judged)
			}
		}
		return nil
	})
	rec.checked("both rollouts paused by a threshold (%q; %q); every result of both is a rollback and a health failure", vh.Reason, vp.Reason)

	// what each agent reported, what its flash says
	for _, a := range agents {
		r, want, behaviour := "s3-health", []string{"update.reboot.completed", "update.health.failed", "update.rollback.triggered", "update.rollback.completed"}, "1.1.0"
		if a.group == "probation" {
			r, want, behaviour = "s3-probation", []string{"update.reboot.completed", "update.health.ok", "update.health.failed", "update.rollback.triggered", "update.rollback.completed"}, "1.2.0"
		}
		eventually(t, time.Minute, func() error {
			return inOrder(w.timeline(a.id, r), append([]string{"offer"}, want...)...)
		})
		tl := w.timeline(a.id, r)
		for _, e := range tl {
			if e.Type == "update.rollback.completed" && e.Error != "health_check" {
				t.Errorf("%s: %+v, want error health_check", a.id, e)
			}
			if a.group == "probation" && e.Type == "update.health.failed" && e.Detail != "no broker" {
				t.Errorf("%s: %+v, want detail \"no broker\"", a.id, e)
			}
		}
		f, err := a.flash()
		if err != nil {
			t.Fatal(err)
		}
		if f.Boot != 0 || f.version() != "1.0.0" || f.BootState != "VALID" || f.Other == "VALID" || f.Other == "NEW" ||
			f.Other == "PENDING_VERIFY" || f.State != "rolled_back" || f.Guard != 0 || f.Slots[1] != behaviour {
			t.Errorf("%s: flash %s, slots %v; want slot 0 (1.0.0) VALID, the other entry unusable, rolled_back, guard 0", a.id, f, f.Slots)
		}
	}
	rec.checked("the health agents reported reboot completed, health failed, rollback triggered and completed (health_check); the probation agents also health ok first, and health failed \"no broker\", reported once the link was back")
	rec.checked("every agent's flash: otadata boots slot 0 (1.0.0), VALID; the bad image's entry unusable (INVALID, or erased by invalidate_other after the probation rollback); state record rolled_back, replay guard 0")

	// a power loss now: the old image boots again, never the bad one
	bootsBefore := map[string][2]int{}
	for _, a := range agents {
		bad := "1.1.0"
		if a.group == "probation" {
			bad = "1.2.0"
		}
		bootsBefore[a.id] = [2]int{a.boots(0, "1.0.0"), a.boots(1, bad)}
		a.powerLoss()
	}
	for _, a := range agents {
		bad := "1.1.0"
		if a.group == "probation" {
			bad = "1.2.0"
		}
		eventually(t, 30*time.Second, func() error {
			if n := a.boots(0, "1.0.0"); n <= bootsBefore[a.id][0] {
				return fmt.Errorf("%s: the old image did not boot again after the power loss", a.id)
			}
			f, err := a.flash()
			if err != nil {
				return err
			}
			if f.Boot != 0 || f.BootState != "VALID" || f.State != "rolled_back" {
				return fmt.Errorf("%s after the power loss: %s", a.id, f)
			}
			return nil
		})
		if n := a.boots(1, bad); n != bootsBefore[a.id][1] {
			t.Errorf("%s booted the bad image %s again after a power loss (%d boots, then %d)", a.id, bad, bootsBefore[a.id][1], n)
		}
	}
	rec.checked("a power loss (SIGKILL of each device process) afterwards: every agent booted 1.0.0 again, VALID, and never the bad image")

	w.waitFleet(agents, "1.0.0")
	m := w.metrics()
	for _, c := range []struct {
		name   string
		labels []string
		want   int
	}{
		{"otamq_rollbacks_total", []string{"version", "1.1.0"}, len(hf)},
		{"otamq_rollbacks_total", []string{"version", "1.2.0"}, len(pb)},
		{"otamq_update_health_failures_total", []string{"version", "1.1.0"}, len(hf)},
		{"otamq_update_health_failures_total", []string{"version", "1.2.0"}, len(pb)},
		{"otamq_updates_total", []string{"version", "1.1.0"}, len(hf)},
		{"otamq_updates_total", []string{"version", "1.2.0"}, len(pb)},
		{"otamq_updates_total", []string{"result", "succeeded"}, 0},
		{"otamq_rollout_health_failures", []string{"rollout", "s3-health", "wave", "canary"}, len(hf)},
		{"otamq_rollout_health_failures", []string{"rollout", "s3-probation", "wave", "canary"}, len(pb)},
		{"otamq_rollout_alarms_total", []string{"level", "pause"}, 2},
	} {
		if got := m.sum(c.name, c.labels...); int(got) != c.want {
			t.Errorf("%s%v = %v, want %d", c.name, c.labels, got, c.want)
		}
	}
	rec.checked("/metrics: otamq_rollbacks_total and otamq_update_health_failures_total = %d for 1.1.0 and %d for 1.2.0; no update succeeded; otamq_rollout_health_failures per rollout; one pause alarm per rollout", len(hf), len(pb))
	fired := w.checkWaveAlerts(m, w.status("s3-health"), w.status("s3-probation"))
	for _, want := range []string{"OtamqRolloutHealthFailureRate critical s3-health/canary 1", "OtamqRolloutHealthFailureRate critical s3-probation/canary 1"} {
		found := false
		for _, f := range fired {
			found = found || f == want
		}
		if !found {
			t.Errorf("the expression of %s is not true: %v", want, fired)
		}
	}
	rec.checked("promtool test rules on the scraped otamq_rollout_* series with config/prometheus/alerts.yml: each wave alert's expression holds exactly for the waves whose rates pass its threshold by the rollouts' status (%s)", strings.Join(fired, "; "))

	vh, vp = w.status("s3-health"), w.status("s3-probation")
	rec.figure("agents", "%d with a failing health check, %d cut off in probation", len(hf), len(pb))
	rec.figure("results in the rollouts", "s3-health: %s; s3-probation: %s", counts(vh.Counts), counts(vp.Counts))
	rec.figure("cut to every probation agent rolled back on its own flash", "%.1f s (no-broker trigger 2 s)", offline.Seconds())
	rec.figure("wave alert expressions true", "%d (4 rules × 2 rollouts)", len(fired))
}
