package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/rollout"
	"github.com/otamq/otamq/test/faultproxy"
)

// TestFlakyNetwork is scenario 4: each agent reaches the broker through a
// test/faultproxy of its own that cuts its connection after about every
// 48 KiB it carries to the agent (in [36, 60) KiB, seeded), throttles it to
// 64 KiB/s, delays every chunk, and stalls every link for 3 s in the middle
// of the downloads. The image is 160 KiB: a download that started again
// from 0 after a cut could never finish, so every commit shows the
// downloads went on from their persisted offset. Every image verifies
// (no download failure, no refetch), every agent commits, and the bytes each
// agent was sent from the rollout's start stay within 1.5 × the image.
func TestFlakyNetwork(t *testing.T) {
	t.Parallel()
	// the broker's blocks and window as small as the agent's: 4 KiB, 4
	w := newWorld(t, "ota:\n  max_block_size: 4096\n  max_window: 4\n")
	groups := []group{{"canary", 1}, {"rest", 3}}
	if suite.long {
		groups = []group{{"canary", 2}, {"rest", 18}}
	}
	rec := newRecord(t, 4, "", "")
	proxies := map[string]*faultproxy.Proxy{}
	agents := w.fleet(4, groups, func(id, _ string) agentOpts {
		px, url := w.proxy(id, uint64(len(proxies)))
		proxies[id] = px
		return agentOpts{url: url, flags: []string{"--max-retries", "30"}}
	})
	n := len(agents)
	const (
		size     = 160 * 1024
		cutEvery = 48 * 1024
		throttle = 64 * 1024
	)
	rec.r.Setup = fmt.Sprintf("the otamq binary (4 KiB blocks, window 4), %d otamq-agent --supervise processes each behind its own test/faultproxy, otactl; waves canary, 100%%; a 160 KiB image", n)
	rec.r.Injected = fmt.Sprintf("on every agent's link: a cut after about every %d KiB to the agent (in [36, 60) KiB, seeded), a throttle of %d KiB/s, a 2 ms delay on every chunk, and a 3 s stall of every link once half the agents are downloading", cutEvery>>10, throttle>>10)
	rel := w.release(4, "1.1.0", healthy, 1000, size)
	base := map[string]faultproxy.Stats{}
	for id, px := range proxies {
		px.SetCutEvery(cutEvery)
		px.SetThrottle(throttle)
		px.SetDelay(2 * time.Millisecond)
		base[id] = px.Stats()
	}
	start := time.Now()
	w.rollout("flaky", "release: "+rel.ID+"\nwaves:\n  - {name: canary, groups: [canary]}\n  - {percent: [100]}\nbake: 1s\nprobation: 2s\n")

	// the stall, once half the agents are downloading
	w.waitRollout("flaky", 2*time.Minute, func(v rollout.View) error {
		if got := v.Counts["downloading"]; got < (n+1)/2 && v.Waves[0].State == "passed" {
			return fmt.Errorf("%d downloading", got)
		} else if v.Waves[0].State != "passed" {
			return fmt.Errorf("canary %s", v.Waves[0].State)
		}
		return nil
	})
	for _, px := range proxies {
		px.Stall(3 * time.Second)
	}
	v := w.waitRollout("flaky", 5*time.Minute, func(v rollout.View) error {
		if v.State != "completed" {
			return fmt.Errorf("not completed")
		}
		return nil
	})
	took := time.Since(start)
	if v.Counts["succeeded"] != n {
		t.Fatalf("counts %v, want %d succeeded", nonzero(v.Counts), n)
	}
	rec.checked("the rollout completed: %d of %d agents succeeded", n, n)

	worst, cuts := 0.0, 0
	for _, a := range agents {
		eventually(t, 30*time.Second, func() error {
			f, err := a.flash()
			if err != nil {
				return err
			}
			if f.Boot != 1 || f.BootState != "VALID" || f.Slots != [2]string{"1.0.0", "1.1.0"} || f.State != "committed" {
				return fmt.Errorf("%s: flash %s, slots %v; want slot 1 (1.1.0) VALID, committed", a.id, f, f.Slots)
			}
			return nil
		})
		st := proxies[a.id].Stats()
		sent := st.ToClient - base[a.id].ToClient
		ratio := float64(sent) / size
		worst = max(worst, ratio)
		cuts += st.Cuts - base[a.id].Cuts
		if ratio > 1.5 {
			t.Errorf("%s was sent %d bytes for a %d-byte image (%.2f ×)", a.id, sent, size, ratio)
		}
		if st.Cuts-base[a.id].Cuts < 2 {
			t.Errorf("%s: only %d cuts: the download was not cut", a.id, st.Cuts-base[a.id].Cuts)
		}
		tl := w.timeline(a.id, "flaky")
		if err := inOrder(tl, "offer", "update.download.started", "update.download.completed", "update.reboot.completed", "update.health.ok"); err != nil {
			t.Errorf("%s: %v", a.id, err)
		}
		for _, e := range tl {
			if e.Type == "update.download.failed" || e.Detail == "refetching" || e.Error != "" {
				t.Errorf("%s: %+v", a.id, e)
			}
		}
	}
	rec.checked("every agent's link was cut at least twice during its download and every agent still committed 1.1.0 in slot 1 (own flash VALID, committed): each download went on from its persisted offset, since one started again from 0 could never pass a cut")
	rec.checked("every image verified at the first try: no update.download.failed, no refetch, no error in any timeline")
	rec.checked("the bytes each agent's proxy carried to it from the rollout's start stay within 1.5 × the image size")
	rec.figure("agents", "%d", n)
	rec.figure("cuts", "%d in all, %.1f per agent", cuts, float64(cuts)/float64(n))
	rec.figure("bytes sent to an agent / image size, worst agent", "%.2f", worst)
	rec.figure("rollout, start to completed", "%.1f s", took.Seconds())
}
