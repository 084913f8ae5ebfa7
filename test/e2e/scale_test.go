package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/otamq/otamq/ota/rollout"
)

// scaleGroup is a group of scenario 10's fleet: how many real agents and
// how many devsim devices it has.
type scaleGroup struct {
	name         string
	agents, sims int
}

// scaleGroups is scenario 10's fleet: 20 agents and 1,000 devsim devices
// in the long version, 3 and 100 in the short one.
func scaleGroups() []scaleGroup {
	if suite.long {
		return []scaleGroup{{"canary", 2, 20}, {"internal", 3, 30}, {"pilot", 5, 100}, {"rest", 10, 850}}
	}
	return []scaleGroup{{"canary", 1, 4}, {"internal", 0, 6}, {"pilot", 1, 10}, {"rest", 1, 80}}
}

// Leak-check bounds of scenario 10 (the reasoning is in the test's
// comment and on docs/RELIABILITY.md).
const (
	// goroutineSlack: goroutines that belong to no connection and may be
	// alive at a reading: the broker's periodic status flush, a rollout
	// pass, a store commit, the server side of an HTTP connection that
	// just closed. Each device holds 2 (mochi's reader and writer).
	goroutineSlack = 4
	// heapSlackFixed + heapSlackPerDevice: the live heap (after a forced
	// GC) the broker that ran the rollout may hold over a fresh process on
	// the same data with the same fleet connected, without a leak. A fresh
	// process itself varies by about 300 KiB from one start to the next
	// (1,000 devices); the process that ran a rollout keeps what a process
	// that loaded it from the store does not (measured by hand: 0.3 to 0.7
	// KiB per device and rollout, 1,000 devices). A block window (16 KiB)
	// or a few KiB of download state leaked per device updated exceeds it
	// in the long version; the short one (about 50 devices updated by the
	// second process) only catches leaks of about 7 KiB per device or
	// more. Leaked goroutines show in the goroutine count, whatever size.
	heapSlackFixed     = 256 << 10
	heapSlackPerDevice = 1 << 10
	// settleSlack*: two readings in a row of a settled idle broker (1,000
	// devices heartbeating every 2 s) differ by a few KiB.
	settleSlackFixed     = 32 << 10
	settleSlackPerDevice = 32
)

// TestScaleSoak is scenario 10: devsim devices (one devsim process) and
// real agents in one rollout (waves canary, internal, pilot, 50 %, 100 %;
// each wave must succeed entirely; at most a fifth of the fleet in
// flight), the broker restarted gracefully (SIGTERM, then started again on
// the same data and address) in the middle of the 50 % wave. Graceful,
// because scenario 5 (TestBrokerKill9) covers SIGKILL: this one takes the
// operator's restart, the shutdown with the whole fleet connected and its
// reconnection. The rollout completes with every device succeeded. Then
// the leak check, on the broker's goroutines (/metrics
// go_goroutines) and its live heap after a forced GC (/debug/pprof/heap
// ?gc=1, runtime.MemStats HeapAlloc):
//
//   - baseline: the first broker process, the fleet connected and idle,
//     the release uploaded, before the rollout;
//   - after: the second process (the one restarted mid-wave), the rollout
//     completed and the fleet idle again;
//   - fresh: a third process, started (graceful restart) on the same data
//     once the rollout completed, with the same fleet connected again.
//
// Goroutines after must equal the baseline within goroutineSlack: the same
// devices are connected and goroutines do not depend on stored state. The
// live heap cannot be compared across processes that hold different data
// (the baseline had no rollout and every device on 1.0.0), so after is
// compared with fresh: the same data and the same connections in a process
// that did not go through the rollout; after may exceed it by at most
// heapSlackFixed + heapSlackPerDevice per device. RSS is reported, not
// checked: the Go runtime returns freed pages to the kernel lazily.
func TestScaleSoak(t *testing.T) {
	t.Parallel()
	t0 := time.Now()
	phase := func(what string) { t.Logf("%.1f s: %s", time.Since(t0).Seconds(), what) }
	w := newWorld(t, "http:\n  pprof: true\n")
	rec := newRecord(t, 10, "", "")
	groups := scaleGroups()
	f := w.scaleFleet(10, groups)
	n := len(f.agents) + len(f.sims)
	per := make([]string, 0, len(groups))
	for _, g := range groups {
		per = append(per, fmt.Sprintf("%s %d+%d", g.name, g.agents, g.sims))
	}
	rec.r.Setup = fmt.Sprintf("the otamq binary (pprof on), %d otamq-agent --supervise processes and one devsim process simulating %d devices (groups, agents+devsim: %s), otactl; waves canary, internal, pilot, 50%%, 100%%; success 100 %%, at most %d devices in flight, bake 1 s, probation 1 s",
		len(f.agents), len(f.sims), strings.Join(per, ", "), inFlight(n))
	rec.r.Injected = "a graceful restart of the broker (SIGTERM, then started again on the same data directory and address) in the middle of the 50% wave; after the rollout another graceful restart, to measure a fresh process on the same data"

	const size = 64 * 1024
	rel := w.release(10, "1.1.0", healthy, 1000, size)
	base := w.idleMemory(f.ids(), nil)
	phase("baseline: " + base.String())

	spec := fmt.Sprintf(`release: %s
waves:
  - {name: canary, groups: [canary]}
  - {name: internal, groups: [internal]}
  - {name: pilot, groups: [pilot]}
  - {percent: [50, 100]}
success: 100%%
rate: {in_flight: %d}
bake: 1s
probation: 1s
`, rel.ID, inFlight(n))
	start := time.Now()
	w.rollout("soak", spec)

	// the restart: the 50 % wave has devices that succeeded and devices
	// in flight
	before := w.waitRollout("soak", 5*time.Minute, func(v rollout.View) error {
		wv := v.Waves[3]
		if wv.State != "running" || wv.Counts["succeeded"] == 0 || inFlightOf(wv.Counts) == 0 {
			return fmt.Errorf("wave %s %s: %v", wv.Name, wv.State, nonzero(wv.Counts))
		}
		return nil
	})
	at := fmt.Sprintf("wave %s running: %s", before.Waves[3].Name, counts(before.Waves[3].Counts))
	phase("restart at " + at)
	r1 := w.gracefulRestart(f.ids())
	phase("restarted")
	checkKept(t, before, w.status("soak"))
	rec.checked("graceful restart in the middle of wave %s (%s): the old process exited 0 after SIGTERM; every device reconnected to the new one; every device that had succeeded still had, every wave that had passed still had with the same times", before.Waves[3].Name, at)

	v := w.waitRollout("soak", 5*time.Minute, func(v rollout.View) error {
		if v.State != "completed" {
			return fmt.Errorf("not completed")
		}
		return nil
	})
	took := time.Since(start)
	phase("completed")
	if v.Devices != n || v.Counts["succeeded"] != n {
		t.Fatalf("rollout counts %v of %d devices, want %d succeeded", nonzero(v.Counts), v.Devices, n)
	}
	checkWavesInOrder(t, v)
	rec.checked("the rollout completed: %d of %d devices succeeded (%d agents, %d devsim devices); waves %s passed in order, none skipped", n, n, len(f.agents), len(f.sims), waveNames(v))

	// the leak check: the process that ran the rollout, idle again, then a
	// fresh one on the same data
	after := w.idleMemory(f.ids(), &base)
	phase("after: " + after.String())
	r2 := w.gracefulRestart(f.ids())
	fresh := w.idleMemory(f.ids(), &base)
	phase("fresh: " + fresh.String())
	if d := after.goroutines - base.goroutines; d < -goroutineSlack || d > goroutineSlack {
		t.Errorf("goroutines: %d after the rollout, %d before it (baseline): %+d, beyond ±%d", after.goroutines, base.goroutines, d, goroutineSlack)
	}
	rec.checked("goroutines returned to the baseline: %d before the rollout (first process), %d after it (second process), %d in a fresh third process; within ±%d of the baseline (the same %d devices connected, 2 goroutines each)",
		base.goroutines, after.goroutines, fresh.goroutines, goroutineSlack, n)
	bound := heapSlackFixed + heapSlackPerDevice*uint64(n)
	if after.heapAlloc > fresh.heapAlloc+bound {
		t.Errorf("live heap after the rollout %s, in a fresh process on the same data %s: %s more, beyond %s (leak?)",
			kib(after.heapAlloc), kib(fresh.heapAlloc), kib(after.heapAlloc-fresh.heapAlloc), kib(bound))
	}
	rec.checked("live heap after a forced GC returned to what the same data needs: %s after the rollout, %s in a fresh process on the same data with the same fleet connected; within %s (256 KiB + 1 KiB per device) of it",
		kib(after.heapAlloc), kib(fresh.heapAlloc), kib(bound))

	// each device: offered once, every step in order; offer to
	// update.health.ok (the commit of ROLLOUTS.md: the device confirmed the
	// image) and offer to succeeded (the rollout's verdict, its probation
	// after the commit), agents and devsim devices apart
	devs := w.rolloutDevices("soak")
	tls := w.timelines(f.ids(), "soak")
	phase("timelines read")
	agentTimes, simTimes, agentDone, simDone := &spans{}, &spans{}, &spans{}, &spans{}
	bad := 0
	for _, id := range f.ids() {
		tl := tls[id]
		d := devs[id]
		err := inOrder(tl, "offer", "update.download.completed", "update.install.completed", "update.reboot.completed", "update.health.ok")
		if k := countOf(tl, "broker", "offer"); err == nil && k != 1 {
			err = fmt.Errorf("offered %d times", k)
		}
		if err == nil && d.State != "succeeded" {
			err = fmt.Errorf("rollout state %s", d.State)
		}
		if err != nil {
			if bad++; bad <= 10 {
				t.Errorf("%s: %v", id, err)
			}
			continue
		}
		toCommit, toSuccess := simTimes, simDone
		if f.isAgent[id] {
			toCommit, toSuccess = agentTimes, agentDone
		}
		toCommit.add(first(tl, "offer"), first(tl, "update.health.ok"), r1.at)
		toSuccess.add(d.Offered, d.Since, r1.at)
	}
	if bad > 10 {
		t.Errorf("and %d more devices", bad-10)
	}
	rec.checked("every device's timeline (%d, otactl device timeline): one offer, then download, install, reboot and health ok in order; its rollout state succeeded", n)

	for _, a := range f.agents {
		eventually(t, 30*time.Second, func() error {
			fl, err := a.flash()
			if err != nil {
				return err
			}
			if fl.Boot != 1 || fl.BootState != "VALID" || fl.Slots != [2]string{"1.0.0", "1.1.0"} || fl.State != "committed" || fl.Guard != rel.Seq {
				return fmt.Errorf("%s: flash %s, slots %v; want slot 1 (1.1.0) VALID, committed", a.id, fl, fl.Slots)
			}
			return nil
		})
	}
	rec.checked("every agent committed 1.1.0 in slot 1 (its own otadata VALID, state record committed, replay guard %d)", rel.Seq)

	sum, err := f.sim.stop()
	if err != nil {
		t.Error(err)
	} else if sum.Devices != len(f.sims) || sum.States["committed"] != len(f.sims) || sum.Versions["1.1.0"] != len(f.sims) ||
		sum.EventsLost != 0 || sum.Rejected != 0 || sum.Rollbacks != 0 || sum.Refused != 0 {
		t.Errorf("devsim's summary: %+v; want all %d committed on 1.1.0, nothing lost, rejected, refused or rolled back", sum, len(f.sims))
	}
	rec.checked("devsim's own summary: all %d devices committed on 1.1.0, no event lost, no offer rejected, no connection refused, no rollback; it stopped cleanly (exit 0)", len(f.sims))

	rec.figure("devices", "%d (%d otamq-agent, %d devsim)", n, len(f.agents), len(f.sims))
	rec.figure("image size", "%d bytes", size)
	rec.figure("restart", "graceful (SIGTERM) at %s", at)
	rec.figure("SIGTERM to the old broker's exit, to the new one's \"otamq started\", to every device connected again",
		"%.2f s, %.2f s, %.1f s (mid-wave); %.2f s, %.2f s, %.1f s (after the rollout)",
		r1.exited.Seconds(), r1.started.Seconds(), r1.online.Seconds(), r2.exited.Seconds(), r2.started.Seconds(), r2.online.Seconds())
	rec.figure("rollout, start to completed (restart included)", "%.1f s", took.Seconds())
	rec.figure("offer to update.health.ok, devsim devices", "%s", simTimes)
	rec.figure("offer to update.health.ok, agents", "%s", agentTimes)
	rec.figure("offer to succeeded (the rollout's verdict, after its 1 s probation), devsim devices", "%s", simDone)
	rec.figure("offer to succeeded, agents", "%s", agentDone)
	rec.figure("broker goroutines: baseline, after, fresh", "%d, %d, %d", base.goroutines, after.goroutines, fresh.goroutines)
	rec.figure("broker live heap after a forced GC (HeapAlloc): baseline, after, fresh", "%s, %s, %s",
		kib(base.heapAlloc), kib(after.heapAlloc), kib(fresh.heapAlloc))
	rec.figure("broker heap in use after a forced GC (HeapInuse): baseline, after, fresh", "%s, %s, %s",
		kib(base.heapInuse), kib(after.heapInuse), kib(fresh.heapInuse))
	rec.figure("broker RSS (anon + file, /proc status): baseline, after, fresh", "%s, %s, %s", base.rss(), after.rss(), fresh.rss())
}

// inFlight is the rollout's rate.in_flight for n devices: a fifth of them,
// so that the 50 % wave goes in batches and the restart finds it with
// devices done and devices under way.
func inFlight(n int) int { return max(n/5, 2) }

func inFlightOf(c map[string]int) int {
	return c["offered"] + c["downloading"] + c["verified"] + c["installing"] + c["rebooting"] + c["trial"]
}

// scaleFleet is scenario 10's fleet: the real agents and one devsim process.
type scaleFleet struct {
	agents  []*agent
	sims    []string // devsim's device IDs
	isAgent map[string]bool
	sim     *devsimProc
}

func (f *scaleFleet) ids() []string {
	out := slices.Clone(f.sims)
	for _, a := range f.agents {
		out = append(out, a.id)
	}
	return out
}

// scaleFleet registers groups' devices with otactl device import (agents
// dev-01..., devsim devices sim-0001..., shuffled into the groups by the
// seed), starts an agent for each agent device and one devsim process for
// the others, and waits until all are online on 1.0.0.
func (w *world) scaleFleet(seed uint64, groups []scaleGroup) *scaleFleet {
	w.t.Helper()
	var agentGroups, simGroups []string
	for _, g := range groups {
		for range g.agents {
			agentGroups = append(agentGroups, g.name)
		}
		for range g.sims {
			simGroups = append(simGroups, g.name)
		}
	}
	r := rng(seed)
	r.Shuffle(len(agentGroups), func(i, j int) { agentGroups[i], agentGroups[j] = agentGroups[j], agentGroups[i] })
	r.Shuffle(len(simGroups), func(i, j int) { simGroups[i], simGroups[j] = simGroups[j], simGroups[i] })
	var csv strings.Builder
	csv.WriteString("id,hardware,groups\n")
	f := &scaleFleet{isAgent: map[string]bool{}}
	for i, g := range agentGroups {
		id := fmt.Sprintf("dev-%02d", i+1)
		f.isAgent[id] = true
		fmt.Fprintf(&csv, "%s,esp32-v2,%s\n", id, g)
	}
	for i, g := range simGroups {
		id := fmt.Sprintf("sim-%04d", i+1)
		f.sims = append(f.sims, id)
		fmt.Fprintf(&csv, "%s,esp32-v2,%s\n", id, g)
	}
	tok := w.importDevices(csv.String())
	simTokens := "id,token\n"
	for _, id := range f.sims {
		simTokens += id + "," + tok[id] + "\n"
	}
	simFile := filepath.Join(w.dir, "devsim.tokens")
	if err := os.WriteFile(simFile, []byte(simTokens), 0o600); err != nil {
		w.t.Fatal(err)
	}
	for i, g := range agentGroups {
		id := fmt.Sprintf("dev-%02d", i+1)
		f.agents = append(f.agents, w.startAgent(id, g, tok[id], agentOpts{}))
	}
	f.sim = w.startDevsim(simFile)
	w.waitDevices(f.ids(), "1.0.0", time.Time{})
	return f
}

// waitDevices waits until every device of ids is online on version, by the
// broker's device list, connected after since.
func (w *world) waitDevices(ids []string, version string, since time.Time) {
	w.t.Helper()
	eventually(w.t, 2*time.Minute, func() error {
		devs := w.devices()
		for _, id := range ids {
			st := devs[id].Status
			if !st.Online || (version != "" && st.Firmware != version) || !st.ConnectedAt.After(since) {
				return fmt.Errorf("%s: online %v, firmware %q, connected at %v; want online on %s since %v",
					id, st.Online, st.Firmware, st.ConnectedAt, version, since)
			}
		}
		return nil
	})
}

// devsimProc is a devsim process simulating many devices.
type devsimProc struct {
	cmd  *exec.Cmd
	out  bytes.Buffer // its summary (--json), written when it stops
	log  *syncBuffer  // its progress lines and errors
	done chan struct{}
}

// devsimTiming matches the agents' timers (agentTiming) where devsim has
// the same one.
var devsimTiming = []string{
	"--heartbeat", "2s", "--request-timeout", "1500ms", "--backoff-min", "100ms", "--backoff-max", "1s",
	"--trial-timeout", "20s", "--probation", "1500ms", "--boot-time", "200ms",
}

// startDevsim runs devsim on the devices of the tokens file, trusting the
// world's release key. On failure its log is printed.
func (w *world) startDevsim(tokens string) *devsimProc {
	w.t.Helper()
	args := append([]string{"--url", "mqtt://" + w.addr, "--tokens", tokens, "--key", w.pub,
		"--seed", strconv.FormatUint(suite.seed, 10), "--json", "--progress", "5s"}, devsimTiming...)
	p := &devsimProc{cmd: exec.Command(built(w.t, "devsim"), args...), log: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = &p.out, p.log
	if err := p.cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	w.t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if w.t.Failed() {
			w.t.Logf("devsim log:\n%s", p.log.String())
		}
	})
	return p
}

// devsimSummary is the part of devsim's --json summary the scenario
// checks (docs/DEVSIM.md, "Output").
type devsimSummary struct {
	Devices    int            `json:"devices"`
	States     map[string]int `json:"states"`
	Versions   map[string]int `json:"versions"`
	Refused    int            `json:"refused"`
	EventsLost int            `json:"events_lost"`
	Rejected   int            `json:"rejected"`
	Commits    int            `json:"commits"`
	Rollbacks  int            `json:"rollbacks"`
}

// stop ends devsim with SIGTERM and returns its summary, or why there is
// none: it did not stop within a minute, exited other than 0 (not a clean
// stop), or printed no summary.
func (p *devsimProc) stop() (devsimSummary, error) {
	var s devsimSummary
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(time.Minute):
		_ = p.cmd.Process.Kill()
		<-p.done
		return s, fmt.Errorf("devsim did not stop within a minute of SIGTERM")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		return s, fmt.Errorf("devsim exited %d after SIGTERM (a clean stop is 0)", code)
	}
	if err := json.Unmarshal(p.out.Bytes(), &s); err != nil {
		return s, fmt.Errorf("devsim's summary: %w\n%s", err, p.out.String())
	}
	return s, nil
}

// restartTimes are the durations of a graceful restart, from the SIGTERM.
type restartTimes struct {
	at                      time.Time // the SIGTERM
	exited, started, online time.Duration
}

// gracefulRestart stops the broker with SIGTERM, checks it exited 0, starts
// it again on the same data and address and waits until every device of
// ids is connected to the new process.
func (w *world) gracefulRestart(ids []string) restartTimes {
	w.t.Helper()
	t0 := time.Now()
	r := restartTimes{at: t0}
	p := w.broker
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(time.Minute):
		w.t.Fatalf("otamq did not end within a minute of SIGTERM")
	}
	r.exited = time.Since(t0)
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		w.t.Errorf("otamq exited %d after SIGTERM (a graceful stop is 0)", code)
	}
	w.start()
	r.started = time.Since(t0)
	eventually(w.t, 2*time.Minute, func() error {
		devs := w.devices()
		for _, id := range ids {
			if st := devs[id].Status; !st.Online || !st.ConnectedAt.After(t0) {
				return fmt.Errorf("%s: online %v, connected at %v: not since the restart", id, st.Online, st.ConnectedAt)
			}
		}
		return nil
	})
	r.online = time.Since(t0)
	return r
}

// memory is the broker process's memory at one moment.
type memory struct {
	goroutines           int    // go_goroutines
	heapAlloc, heapInuse uint64 // bytes, after a forced GC
	vmRSS, anon, file    uint64 // KiB, /proc/PID/status
}

func (m memory) String() string {
	return fmt.Sprintf("%d goroutines, heap live %s, in use %s, RSS %s", m.goroutines, kib(m.heapAlloc), kib(m.heapInuse), m.rss())
}

func (m memory) rss() string {
	return fmt.Sprintf("%d KiB (%d + %d)", m.vmRSS, m.anon, m.file)
}

func kib(b uint64) string { return fmt.Sprintf("%d KiB", b/1024) }

// idleMemory waits until every device of ids is online, then until the
// broker's memory settles: the live heap of two readings in a row within
// settleSlack of each other (right after a wave of connections or a
// rollout it is higher for a few seconds, until the last requests'
// buffers are garbage) and, when base is not nil, the goroutines within
// goroutineSlack of base's (the last connections' and requests'
// goroutines end; leaked ones never do). Each reading is the least of
// three: anything transient only adds.
func (w *world) idleMemory(ids []string, base *memory) memory {
	w.t.Helper()
	w.waitDevices(ids, "", time.Time{})
	settle := settleSlackFixed + settleSlackPerDevice*uint64(len(ids))
	var m, prev memory
	eventually(w.t, 2*time.Minute, func() error {
		var err error
		prev, m = m, memory{}
		if m, err = w.readMemory(3); err != nil {
			return err
		}
		if base != nil && (m.goroutines > base.goroutines+goroutineSlack || m.goroutines < base.goroutines-goroutineSlack) {
			return fmt.Errorf("%d goroutines, baseline %d (±%d):\n%s", m.goroutines, base.goroutines, goroutineSlack, w.goroutineProfile())
		}
		if prev.heapAlloc == 0 || max(m.heapAlloc, prev.heapAlloc)-min(m.heapAlloc, prev.heapAlloc) > settle {
			return fmt.Errorf("live heap %s, %s before: not settled (within %s)", kib(m.heapAlloc), kib(prev.heapAlloc), kib(settle))
		}
		return nil
	})
	return m
}

// noKeepAlive makes each request a connection of its own, so that no idle
// HTTP connection holds a goroutine in the broker between readings.
var noKeepAlive = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}

func (w *world) get(path string) ([]byte, error) {
	resp, err := noKeepAlive.Get("http://" + w.broker.http + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(resp.Body); err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return b.Bytes(), nil
}

// readMemory reads the broker's memory k times and keeps the least of
// each figure. Each reading forces a GC (net/http/pprof's heap?gc=1) and
// takes HeapAlloc and HeapInuse from the runtime.MemStats the profile
// prints, go_goroutines from /metrics, the RSS from /proc.
func (w *world) readMemory(k int) (memory, error) {
	m := memory{goroutines: math.MaxInt, heapAlloc: math.MaxUint64, heapInuse: math.MaxUint64,
		vmRSS: math.MaxUint64, anon: math.MaxUint64, file: math.MaxUint64}
	for range k {
		prof, err := w.get("/debug/pprof/heap?gc=1&debug=1")
		if err != nil {
			return m, err
		}
		stats := map[string]uint64{}
		sc := bufio.NewScanner(bytes.NewReader(prof))
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		for sc.Scan() {
			if name, v, ok := strings.Cut(strings.TrimPrefix(sc.Text(), "# "), " = "); ok {
				if n, err := strconv.ParseUint(v, 10, 64); err == nil {
					stats[name] = n
				}
			}
		}
		if stats["HeapAlloc"] == 0 || stats["HeapInuse"] == 0 {
			return m, fmt.Errorf("no HeapAlloc or HeapInuse in the heap profile")
		}
		m.heapAlloc, m.heapInuse = min(m.heapAlloc, stats["HeapAlloc"]), min(m.heapInuse, stats["HeapInuse"])
		body, err := w.get("/metrics")
		if err != nil {
			return m, err
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		mf, err := parser.TextToMetricFamilies(bytes.NewReader(body))
		if err != nil {
			return m, err
		}
		g := metrics(mf).sum("go_goroutines")
		if g == 0 {
			return m, fmt.Errorf("/metrics has no go_goroutines")
		}
		m.goroutines = min(m.goroutines, int(g))
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", w.broker.cmd.Process.Pid))
		if err != nil {
			return m, err
		}
		kb := map[string]uint64{}
		for line := range strings.SplitSeq(string(st), "\n") {
			if name, v, ok := strings.Cut(line, ":"); ok {
				if n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64); err == nil {
					kb[name] = n
				}
			}
		}
		m.vmRSS, m.anon, m.file = min(m.vmRSS, kb["VmRSS"]), min(m.anon, kb["RssAnon"]), min(m.file, kb["RssFile"])
	}
	return m, nil
}

// goroutineProfile is the broker's goroutines grouped by stack, for a
// failed leak check.
func (w *world) goroutineProfile() string {
	b, err := w.get("/debug/pprof/goroutine?debug=1")
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// timelines are the timelines of ids about rollout r, read with otactl
// device timeline by a few workers at once.
func (w *world) timelines(ids []string, r string) map[string][]entry {
	w.t.Helper()
	var (
		mu   sync.Mutex
		out  = map[string][]entry{}
		errs []string
		wg   sync.WaitGroup
	)
	next := make(chan string)
	for range 4 {
		wg.Go(func() {
			for id := range next {
				o, e, code := w.otactl("--json", "device", "timeline", id, "--limit", "100")
				var all []entry
				err := json.Unmarshal([]byte(o), &all)
				mu.Lock()
				switch {
				case code != 0:
					errs = append(errs, fmt.Sprintf("otactl device timeline %s: exit %d: %s", id, code, e))
				case err != nil:
					errs = append(errs, fmt.Sprintf("otactl device timeline %s: %v", id, err))
				default:
					var tl []entry
					for i := len(all) - 1; i >= 0; i-- {
						if all[i].RolloutID == r || strings.HasPrefix(all[i].RolloutID, r+"~") {
							tl = append(tl, all[i])
						}
					}
					out[id] = tl
				}
				mu.Unlock()
			}
		})
	}
	for _, id := range ids {
		next <- id
	}
	close(next)
	wg.Wait()
	if len(errs) > 0 {
		w.t.Fatalf("%d timelines unread: %s", len(errs), strings.Join(errs[:min(len(errs), 5)], "; "))
	}
	return out
}

// spans are the durations of one kind of step for a set of devices, all of
// them and those whose step spanned the restart (begun before it, ended
// after it).
type spans struct{ all, across []time.Duration }

func (s *spans) add(from, to, restart time.Time) {
	d := to.Sub(from)
	s.all = append(s.all, d)
	if from.Before(restart) && to.After(restart) {
		s.across = append(s.across, d)
	}
}

func (s *spans) String() string {
	out := percentiles(s.all)
	if len(s.across) > 0 {
		out += "; of them across the restart: " + percentiles(s.across)
	}
	return out
}

// percentiles formats the median and 99th percentile (nearest rank) of ds.
func percentiles(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := func(q float64) time.Duration { return s[max(int(math.Ceil(q*float64(len(s))))-1, 0)] }
	return fmt.Sprintf("p50 %.1f s, p99 %.1f s, max %.1f s (%d devices)", rank(0.5).Seconds(), rank(0.99).Seconds(), s[len(s)-1].Seconds(), len(s))
}
