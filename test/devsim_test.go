package test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/cmd/devsim/sim"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/manifest"
)

// Simulated devices (cmd/devsim/sim) against a real broker: registered
// through the admin API, releases uploaded and offered as operators do,
// and every result read back from the broker (device/list, device/get,
// device/timeline, /metrics), with the simulator's own view as a second
// witness.

// simTiming shortens the agent's timers so that an update takes about a
// second; the trial timeout stays long enough for a loaded machine.
var simTiming = sim.Timing{
	Heartbeat: 300 * time.Millisecond, RequestTimeout: time.Second, BackoffMin: 100 * time.Millisecond,
	BackoffMax: time.Second, TrialTimeout: 3 * time.Second, Probation: time.Second, Boot: 100 * time.Millisecond,
	CrashAfter: 300 * time.Millisecond, ConnectBackoffMin: 50 * time.Millisecond, ConnectBackoffMax: time.Second,
}

// simWorld is a broker with a trusted release key (agentWorld's) and
// simulated fleets against it.
type simWorld struct {
	*agentWorld
	keys manifest.KeySet
}

func newSimWorld(t *testing.T, mods ...func(*broker.Options)) *simWorld {
	t.Helper()
	mods = append([]func(*broker.Options){func(o *broker.Options) { o.AdminRate = -1 }}, mods...)
	w := newAgentWorld(t, mods...)
	keys, err := manifest.NewKeySet(&w.key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return &simWorld{agentWorld: w, keys: keys}
}

// registerSims registers devices with attributes (hardware esp32-v2 unless
// given) and returns their specs with tokens.
func (w *simWorld) registerSims(t *testing.T, ids []string, reg func(*sim.Registration)) []sim.DeviceSpec {
	t.Helper()
	regs := make([]sim.Registration, len(ids))
	for i, id := range ids {
		regs[i] = sim.Registration{ID: id, Hardware: "esp32-v2"}
		if reg != nil {
			reg(&regs[i])
		}
	}
	creds, err := sim.Register(context.Background(), w.admin(), regs)
	if err != nil {
		t.Fatal(err)
	}
	specs := make([]sim.DeviceSpec, len(creds))
	for i, c := range creds {
		if c.ID != ids[i] {
			t.Fatalf("registered %s as device %d, want %s", c.ID, i, ids[i])
		}
		specs[i] = sim.DeviceSpec{ID: c.ID, Token: c.Token}
	}
	return specs
}

// simFleet starts a simulated fleet of specs against the world's broker.
func (w *simWorld) simFleet(t *testing.T, specs []sim.DeviceSpec, mods ...func(*sim.Config)) *sim.Fleet {
	t.Helper()
	cfg := sim.Config{URL: w.url(), Keys: w.keys, Seed: 1, Timing: simTiming, Logger: testLogger()}
	for _, m := range mods {
		m(&cfg)
	}
	f, err := sim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Add(specs...); err != nil {
		t.Fatal(err)
	}
	f.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := f.Stop(ctx); err != nil {
			t.Errorf("stop the simulated fleet: %v", err)
		}
	})
	return f
}

// statuses returns the broker's view of every registered device
// (device/list, all pages).
func (w *simWorld) statuses(t testing.TB) map[string]fleet.Status {
	t.Helper()
	out := map[string]fleet.Status{}
	after := ""
	for {
		var res struct {
			Devices []fleet.View `json:"devices"`
			Next    string       `json:"next"`
		}
		if err := w.admin().Call(context.Background(), "device/list", map[string]any{"after": after, "limit": 500}, &res); err != nil {
			t.Fatal(err)
		}
		for _, v := range res.Devices {
			out[v.ID] = v.Status
		}
		if res.Next == "" {
			return out
		}
		after = res.Next
	}
}

// waitDevices polls the broker until cond holds for every device of ids.
func (w *simWorld) waitDevices(t *testing.T, within time.Duration, ids []string, cond func(id string, st fleet.Status) error) {
	t.Helper()
	eventually(t, within, func() error {
		all := w.statuses(t)
		var bad []string
		for _, id := range ids {
			if err := cond(id, all[id]); err != nil {
				bad = append(bad, id+": "+err.Error())
			}
		}
		if len(bad) > 0 {
			if len(bad) > 5 {
				bad = append(bad[:5], fmt.Sprintf("and %d more", len(bad)-5))
			}
			return fmt.Errorf("%d of %d devices: %s", len(bad), len(ids), strings.Join(bad, "; "))
		}
		return nil
	})
}

// onVersion: the device runs version, in OTA state state, after booting
// for reason.
func onVersion(version, state, bootReason string, slot uint8) func(string, fleet.Status) error {
	return func(_ string, st fleet.Status) error {
		if !st.Online || st.Firmware != version || st.OTAState != state || st.BootReason != bootReason || st.Slot != slot {
			return fmt.Errorf("online %v, firmware %q, state %q, boot reason %q, slot %d", st.Online, st.Firmware, st.OTAState, st.BootReason, st.Slot)
		}
		return nil
	}
}

// deviceEvents returns device id's event types in its timeline for rollout,
// oldest first, each "type" or "type:error".
func (w *simWorld) deviceEvents(id, rollout string) []string {
	var out []string
	for _, e := range w.timeline(id) {
		if e.Source != "device" || rollout != "" && e.RolloutID != rollout {
			continue
		}
		s := strings.TrimPrefix(e.Type, "update.")
		if e.Error != "" {
			s += ":" + e.Error
		}
		out = append(out, s)
	}
	return out
}

// healthyEvents is what a device reports for an update that succeeds:
// download started, its progress in tenths (a 40 KiB image in 4 KiB
// blocks reaches 10 % to 90 %), completed, install, reboot, health ok.
var healthyEvents = []string{"download.started", "download.progress", "download.progress", "download.progress",
	"download.progress", "download.progress", "download.progress", "download.progress", "download.progress",
	"download.progress", "download.completed", "install.started", "install.completed", "reboot.started",
	"reboot.completed", "health.ok"}

func ids(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%03d", prefix, i+1)
	}
	return out
}

// TestDevsimHealthyFleet: 50 simulated devices take a release offered to
// all of them and end committed on it, as the broker's registry and each
// device's timeline show; each reported every step in the agent's order.
func TestDevsimHealthyFleet(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t)
	devs := ids("fleet-", 50)
	specs := w.registerSims(t, devs, nil)
	w.simFleet(t, specs)
	w.waitDevices(t, 30*time.Second, devs, onVersion("1.0.0", "idle", "power_on", 0))

	fw := makeFirmware(t, w.key, "1.1.0", []string{"esp32-v2"}, 40*1024)
	rollout := w.offer(w.release(fw).ID, devs...)
	w.waitDevices(t, 60*time.Second, devs, onVersion("1.1.0", "committed", "ota_reboot", 1))
	for _, id := range devs {
		if got := w.deviceEvents(id, rollout); !slices.Equal(got, healthyEvents) {
			t.Errorf("%s reported %v\nwant %v", id, got, healthyEvents)
		}
		// after the commit the agent checks for the next update, and the
		// offer it gets again (the broker still has it) completes the check
		eventually(t, 10*time.Second, func() error {
			if got := w.deviceEvents(id, ""); !slices.Equal(got[len(got)-2:], []string{"check.started", "check.completed"}) {
				return fmt.Errorf("%s: no check after the commit: %v", id, got)
			}
			return nil
		})
	}
	w.noRefusals()
}
