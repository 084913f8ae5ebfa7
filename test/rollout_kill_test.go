package test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/otamq/otamq/cmd/devsim/sim"
	"github.com/otamq/otamq/cmd/otactl/rpc"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/manifest"
)

// TestRolloutKill9: the broker runs as a process (cmd/otamq) and is
// killed with SIGKILL in the middle of a wave, with devices downloading,
// installing and in their trial; restarted on the same data and address,
// it carries on. The rollout completes; every device took the release,
// offered exactly once (its timeline holds one offer); every wave
// started and passed, in order, none skipped, and no device of a wave
// was offered before the wave before it had passed.
func TestRolloutKill9(t *testing.T) {
	t.Parallel()
	dir, addr := t.TempDir(), freePort(t)
	p := startProc(t, dir, "--mqtt-addr", addr)
	c := p.admin()
	t.Cleanup(func() { _ = c.Close() })

	key, pub := newKey(t)
	mustCall(t, c, "key/add", map[string]any{"name": "test", "pem": string(pub)}, nil)
	keys, err := manifest.NewKeySet(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	devs := ids("k9-", 30)
	regs := make([]sim.Registration, len(devs))
	for i, id := range devs {
		regs[i] = sim.Registration{ID: id, Hardware: "esp32-v2"}
		if i < 4 {
			regs[i].Groups = []string{"canary"}
		}
	}
	creds, err := sim.Register(context.Background(), c, regs)
	if err != nil {
		t.Fatal(err)
	}
	specs := make([]sim.DeviceSpec, len(creds))
	for i, cr := range creds {
		// After the canary every device is on a slow link: 16 KiB at
		// once, the other 16 KiB in 4 s; at most four are under way.
		specs[i] = sim.DeviceSpec{ID: cr.ID, Token: cr.Token}
		if i >= 4 {
			specs[i].Profile, specs[i].SlowRate = sim.Slow, 4*1024
		}
	}
	f, err := sim.New(sim.Config{URL: "mqtt://" + addr, Keys: keys, Seed: 1, Timing: simTiming, Logger: testLogger()})
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
	waitOnline(t, c, devs, "1.0.0")
	fw := makeFirmware(t, key, "1.1.0", []string{"esp32-v2"}, 32*1024)
	r, err := uploadWith(c, fw.signed, fw.image, 64*1024, 0)
	if err != nil || r.Release == nil {
		t.Fatalf("upload: %v %+v", err, r)
	}
	mustCall(t, c, "rollout/create", map[string]any{"yaml": `
id: k9
release: ` + r.Release.ID + `
waves:
  - {name: canary, groups: [canary]}
  - {percent: [50, 100]}
rate: {in_flight: 4}
bake: 1s
probation: 2s
`}, nil)
	mustCall(t, c, "rollout/start", map[string]any{"id": "k9"}, nil)

	// Mid-wave: the 50% wave running, some of it done, some under way.
	eventually(t, 60*time.Second, func() error {
		v := rolloutGet(t, c, "k9")
		wv := v.Waves[1]
		under := 0
		for _, st := range inFlightStates {
			under += wv.Counts[st]
		}
		if wv.State != "running" || wv.Counts["succeeded"] < 2 || under < 2 || wv.Counts["eligible"] < 2 {
			return fmt.Errorf("wave %s is %s: %v", wv.Name, wv.State, nonzero(wv.Counts))
		}
		return nil
	})
	_ = c.Close()
	p.kill()
	eventually(t, 20*time.Second, func() error {
		if st := f.Stats(); st.Connected != 0 {
			return fmt.Errorf("%d still connected", st.Connected)
		}
		return nil
	})

	p2 := startProc(t, dir, "--mqtt-addr", addr)
	c2 := p2.admin()
	t.Cleanup(func() { _ = c2.Close() })
	var v roView
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the restarted broker's log:\n%s", p2.logs())
		}
	})
	eventually(t, 120*time.Second, func() error {
		v = rolloutGet(t, c2, "k9")
		if v.State != "completed" {
			return fmt.Errorf("rollout is %s (%s): %v", v.State, v.Reason, nonzero(v.Counts))
		}
		return nil
	})
	if v.Counts["succeeded"] != 30 {
		t.Fatalf("counts %v", nonzero(v.Counts))
	}
	checkWavesInOrder(t, v)
	passed := map[string]time.Time{}
	var names []string
	for _, wv := range v.Waves {
		passed[wv.Name] = wv.Passed
		names = append(names, wv.Name)
	}
	for _, d := range rolloutDevices(t, c2, "k9", "", "") {
		if i := slices.Index(names, d.Wave); i > 0 && d.Offered.Before(passed[names[i-1]]) {
			t.Errorf("%s of wave %s offered %v, before wave %s passed", d.Device, d.Wave, d.Offered, names[i-1])
		}
	}
	for _, id := range devs {
		n := 0
		for _, e := range timelineOf(t, c2, id, "k9") {
			if e.Source == "broker" && e.Type == "offer" {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s was offered %d times", id, n)
		}
	}
	waitOnline(t, c2, devs, "1.1.0")
}

// waitOnline waits until every device of ids is online on version (the
// broker's device/list).
func waitOnline(t *testing.T, c *rpc.Client, ids []string, version string) {
	t.Helper()
	eventually(t, 60*time.Second, func() error {
		var res struct {
			Devices []fleet.View `json:"devices"`
		}
		mustCall(t, c, "device/list", map[string]any{"limit": 1000}, &res)
		got := map[string]fleet.Status{}
		for _, v := range res.Devices {
			got[v.ID] = v.Status
		}
		for _, id := range ids {
			if st := got[id]; !st.Online || st.Firmware != version {
				return fmt.Errorf("%s: online %v, firmware %q", id, st.Online, st.Firmware)
			}
		}
		return nil
	})
}
