package test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/test/faultproxy"
	"github.com/otamq/otamq/test/testkit"
)

// The C agent through a bad network (test/faultproxy) and a broker that
// cannot always record what it is told: downloads resume, recover from
// corrupted blocks, keep the broker's window and grow a shrunk one back;
// events reach the broker; commits are seen when they happen.

// TestAgentFleetThroughFaults runs ten agents, each through its own fault
// proxy (seeded by its number, so its faults repeat), with cuts about every
// 64 KiB, throttling, a 6 s stall of all links mid-download, byte flips in
// block data and power losses (SIGKILL) of three devices mid-download.
// Half of them speak MQTT 3.1.1. Heartbeats are ten minutes apart, so the
// broker sees the commits only from the heartbeat the agent sends when its
// state changes. Every agent must commit the new image.
func TestAgentFleetThroughFaults(t *testing.T) {
	agentBinary(t)
	const (
		agents  = 10
		size    = 192 * 1024
		blk     = 4096
		window  = 4
		killed  = 3 // devices 0..killed-1 lose power mid-download
		cuttled = 7 // devices 0..cuttled-1 have their links cut, the others not
	)
	w := newAgentWorld(t, func(o *broker.Options) { o.MaxBlockSize, o.MaxWindow, o.DeviceRate = blk, window, -1 })
	fw := simFirmware(t, w.key, "1.1.0", simHealthy, size)
	rel := w.release(fw)

	type dev struct {
		id string
		px *faultproxy.Proxy
		a  *agentProc
	}
	devs := make([]*dev, agents)
	for i := range devs {
		d := &dev{id: fmt.Sprintf("agent-fleet-%02d", i)}
		px, err := faultproxy.Start(w.Addr(), int64(i+1))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = px.Close() })
		px.SetThrottle(256 << 10)
		if i < cuttled {
			px.SetCutEvery(64 << 10)
		}
		// one corrupted block: the digest fails, the image is fetched again
		px.SetFlip(faultproxy.Flip{TopicSuffix: "/ota/blk", Every: 13 + i, Limit: 1})
		d.px = px
		tok := w.register(d.id, "device", "", map[string]any{"hardware": "esp32-v2"})
		flags := []string{"--window", "8", "--heartbeat-ms", "600000", "--max-retries", "30"}
		if i%2 == 1 {
			flags = append(flags, "--mqtt-v3")
		}
		d.a = runAgent(t, "mqtt://"+px.Addr(), d.id, tok, w.keyFile, nil, flags...)
		devs[i] = d
	}
	for _, d := range devs {
		eventually(t, 30*time.Second, func() error {
			if st := w.status(d.id); st.Firmware != "1.0.0" || !st.Online {
				return fmt.Errorf("%s: online %v, firmware %q", d.id, st.Online, st.Firmware)
			}
			return nil
		})
	}
	ids := make([]string, agents)
	for i, d := range devs {
		ids[i] = d.id
	}
	rollout := w.offer(rel.ID, ids...)

	// power losses, once each of the first devices is a third of the way
	var wg sync.WaitGroup
	killedAt := make([]blockReq, killed)
	killedIdx := make([]int, killed)
	for i := 0; i < killed; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := devs[i]
			for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				r := w.gets.requests(d.id)
				if n := len(r); n > 0 && r[n-1].offset >= size/3 {
					killedAt[i] = r[n-1]
					d.a.powerLoss()
					killedIdx[i] = len(w.gets.requests(d.id))
					return
				}
			}
		}()
	}
	// the stall, once most devices are downloading
	eventually(t, 60*time.Second, func() error {
		n := 0
		for _, d := range devs {
			if r := w.gets.requests(d.id); len(r) > 0 && r[len(r)-1].offset >= blk*window {
				n++
			}
		}
		if n < agents/2 {
			return fmt.Errorf("%d devices downloading", n)
		}
		return nil
	})
	for _, d := range devs {
		d.px.Stall(6 * time.Second)
	}
	wg.Wait()

	for _, d := range devs {
		eventually(t, 180*time.Second, func() error {
			if st := w.status(d.id); st.Firmware != "1.1.0" || st.OTAState != "committed" {
				return fmt.Errorf("%s: firmware %q, state %q", d.id, st.Firmware, st.OTAState)
			}
			return nil
		})
	}

	shrunk, refetches := 0, 0
	for i, d := range devs {
		tl := w.timeline(d.id)
		if err := hasEvents(tl, rollout, "update.download.started", "update.download.completed",
			"update.reboot.completed", "update.health.ok"); err != nil {
			t.Errorf("%s: %v", d.id, err)
		}
		if n := count(tl, rollout, "update.download.failed", ""); n != 0 {
			t.Errorf("%s: %d failed downloads", d.id, n)
		}
		// a corrupted block is found by the digest and the image fetched
		// again; a flipped block may also be one the agent ignores (a late
		// copy from before a re-request, or cut short), so at most one
		// refetch per flip, and the commit shows the image came out whole
		refetch := count(tl, rollout, "update.download.started", "refetching")
		if flips := d.px.Stats().Flips; refetch > flips {
			t.Errorf("%s: %d refetches after %d flipped blocks", d.id, refetch, flips)
		}
		refetches += refetch
		reqs := w.gets.requests(d.id)
		for j, r := range reqs {
			// the broker's window (offer key 6), not the agent's 8
			if r.count > window {
				t.Errorf("%s: request for %d blocks, the broker's window is %d", d.id, r.count, window)
				break
			}
			// a shrunk window grows back: a later request of the same
			// download asks for the whole window again
			if r.count < window && r.offset+uint64(window*blk) < size {
				shrunk++
				grew := false
				for _, l := range reqs[j+1:] {
					if l.offset < r.offset {
						break // refetch: another download
					}
					if l.count == window {
						grew = true
						break
					}
				}
				if !grew {
					t.Errorf("%s: window %d at offset %d never grew back: %+v", d.id, r.count, r.offset, reqs[j:])
					break
				}
			}
		}
		if i < killed {
			// the download went on from the persisted offset (not 0, not
			// beyond what the killed process had asked for): the first
			// request on the next connection
			var resumed *blockReq
			reached := uint64(0)
			old := map[string]bool{}
			for _, r := range reqs[:killedIdx[i]] {
				old[r.remote] = true
				reached = max(reached, r.offset)
			}
			for _, r := range reqs[killedIdx[i]:] {
				if !old[r.remote] {
					resumed = &r
					break
				}
			}
			if killedAt[i].remote == "" || resumed == nil || resumed.offset == 0 || resumed.offset > reached+window*blk {
				t.Errorf("%s: power loss after a request at %d (up to %d), then %+v", d.id, killedAt[i].offset, reached, resumed)
			}
		}
	}
	var cuts, flips int
	for _, d := range devs {
		s := d.px.Stats()
		cuts += s.Cuts
		flips += s.Flips
	}
	t.Logf("%d cuts, %d flipped blocks, %d refetches, %d shrunk windows (all grew back)", cuts, flips, refetches, shrunk)
	if cuts == 0 || refetches == 0 {
		t.Errorf("%d cuts, %d refetches: the faults did not happen", cuts, refetches)
	}
	w.noRefusals()
}

// TestAgentEventStoreFault: the broker cannot record events for a while
// (its store fails). An MQTT 5 device gets PUBACK 0x80 and keeps the event,
// sending it again after 5 s; an MQTT 3.1.1 device gets no PUBACK, the
// broker closes its connection, and it sends the event again after it
// reconnects (the client's resend, same packet ID, which the agent waits
// for). Once the store works again, every result of the update is on the
// device's timeline, each once.
func TestAgentEventStoreFault(t *testing.T) {
	agentBinary(t)
	for _, v := range []struct {
		name  string
		flags []string
	}{{"v5", nil}, {"v3", []string{"--mqtt-v3"}}} {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			var failing atomic.Bool
			var failed atomic.Int32
			w := newAgentWorld(t, func(o *broker.Options) {
				o.EventStoreFault = func() error {
					if failing.Load() {
						failed.Add(1)
						return errors.New("injected store failure")
					}
					return nil
				}
			})
			id := "agent-store-fault-" + v.name
			a := w.agent(t, id, v.flags...)
			failing.Store(true)
			rollout := w.updateTo(id, simFirmware(t, w.key, "1.1.0", simHealthy, 32*1024))
			eventually(t, 20*time.Second, func() error {
				if failed.Load() == 0 {
					return errors.New("no event refused yet")
				}
				return nil
			})
			failing.Store(false)
			results := []string{"update.download.started", "update.install.completed",
				"update.reboot.completed", "update.health.ok"}
			eventually(t, 60*time.Second, func() error {
				if st := w.status(id); st.Firmware != "1.1.0" || st.OTAState != "committed" {
					return fmt.Errorf("firmware %q, state %q", st.Firmware, st.OTAState)
				}
				return hasEvents(w.timeline(id), rollout, results...)
			})
			tl := w.timeline(id)
			for _, typ := range results {
				if n := count(tl, rollout, typ, ""); n != 1 {
					t.Errorf("%s %d times", typ, n)
				}
			}
			if v.name == "v5" && !strings.Contains(a.out.String(), "could not record an event now (PUBACK 0x80): kept") {
				t.Error("the agent did not see PUBACK 0x80")
			}
		})
	}
}

// TestAgentLogins: a device logs in with a client certificate from the
// fleet CA over TLS (no token), others with a token from a file or from
// the environment, never on the command line.
func TestAgentLogins(t *testing.T) {
	agentBinary(t)
	fleetCA := newPKI(t, "fleet")
	srvCert, srvKey, _ := fleetCA.issue("otamq", true)
	w := newAgentWorld(t, func(o *broker.Options) {
		o.TLSAddr = "127.0.0.1:0"
		o.TLSCert, o.TLSKey, o.TLSClientCA = srvCert, srvKey, fleetCA.pem
	})
	online := func(id string) {
		t.Helper()
		eventually(t, 30*time.Second, func() error {
			if st := w.status(id); st.Firmware != "1.0.0" || !st.Online {
				return fmt.Errorf("%s: online %v, firmware %q", id, st.Online, st.Firmware)
			}
			return nil
		})
	}

	w.register("agent-cert", "device", "", map[string]any{"hardware": "esp32-v2", "auth": "cert"})
	cert, key, _ := fleetCA.issue("agent-cert", false)
	runAgent(t, "mqtts://"+w.TLSAddr(), "agent-cert", "", w.keyFile, nil,
		"--cafile", fleetCA.pem, "--cert", cert, "--cert-key", key)
	online("agent-cert")

	tok := w.register("agent-tokfile", "device", "", map[string]any{"hardware": "esp32-v2"})
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a1 := runAgent(t, w.url(), "agent-tokfile", "", w.keyFile, nil, "--token-file", tokFile)
	online("agent-tokfile")

	tok2 := w.register("agent-tokenv", "device", "", map[string]any{"hardware": "esp32-v2"})
	a2 := runAgent(t, w.url(), "agent-tokenv", "", w.keyFile, []string{"OTAMQ_TOKEN=" + tok2})
	online("agent-tokenv")

	// what ps shows: neither token is on a command line
	for _, c := range []struct {
		a   *agentProc
		tok string
	}{{a1, tok}, {a2, tok2}} {
		for _, pid := range append(testkit.ChildProcesses(c.a.cmd.Process.Pid), c.a.cmd.Process.Pid) {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if err == nil && strings.Contains(string(b), c.tok) {
				t.Errorf("process %d shows the token in its command line", pid)
			}
		}
	}

	// a certificate the fleet CA did not issue is refused (the proxy
	// shows that the device tried)
	rogue := newPKI(t, "rogue")
	rcert, rkey, _ := rogue.issue("agent-rogue", false)
	w.register("agent-rogue", "device", "", map[string]any{"hardware": "esp32-v2", "auth": "cert"})
	px, err := faultproxy.Start(w.TLSAddr(), 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = px.Close() })
	runAgent(t, "mqtts://"+px.Addr(), "agent-rogue", "", w.keyFile, nil,
		"--cafile", fleetCA.pem, "--cert", rcert, "--cert-key", rkey)
	eventually(t, 30*time.Second, func() error {
		if n := px.Stats().Conns; n < 2 {
			return fmt.Errorf("%d connection attempts", n)
		}
		return nil
	})
	if st := w.status("agent-rogue"); st.Online || st.Connects != 0 {
		t.Errorf("a device with a foreign certificate got in: %+v", st)
	}
}
