package main

import (
	"flag"
	"fmt"
	"slices"
	"time"

	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/rollout"
	"github.com/otamq/otamq/ota/wire"
)

var (
	roDevices = flag.Int("ro-devices", 100000, "rollout benchmarks: registered devices of the planning, pass and memory parts")
	roPasses  = flag.Int("ro-passes", 5, "rollout benchmarks: passes (and plans) measured of each kind (the median is reported)")
)

// benchRolloutPlan: planning a realistic rollout over the whole fleet
// (rollout.Engine.PlanSpec, the dry run; Create, which plans and stores
// every device's place in one durable transaction) and the engine's
// evaluation pass (Engine.Pass) while it runs: with the few devices in
// flight its rate allows, and with a large in-flight set (half of the
// fleet offered at once, some of it downloading, verified or in trial).
func benchRolloutPlan() error {
	n := *roDevices
	fmt.Printf("== rollout planning and evaluation passes: %d registered devices, the engine in-process (store with fsync, registry, catalog, delivery)\n", n)
	e, err := newRolloutEnv(n)
	if err != nil {
		return err
	}
	defer e.close()
	med := func(ds []time.Duration) time.Duration { s := slices.Clone(ds); slices.Sort(s); return s[len(s)/2] }

	// The realistic rollout: named waves, then percentages.
	spec := realisticSpec("bench-a", e.rel)
	var plans []time.Duration
	for range *roPasses {
		t := time.Now()
		p, err := e.eng.PlanSpec([]byte(spec))
		if err != nil {
			return fmt.Errorf("plan: %w", err)
		}
		plans = append(plans, time.Since(t))
		if p.Selected != n {
			return fmt.Errorf("plan selected %d devices, want %d", p.Selected, n)
		}
	}
	t := time.Now()
	v, p, err := e.createStart(spec)
	if err != nil {
		return err
	}
	created := time.Since(t)
	skipped := 0
	for _, g := range p.Skipped {
		skipped += g.Devices
	}
	fmt.Printf("rollout: waves canary, internal, pilot, then 1 5 10 25 50 100 %% of the rest; rate 1000/min, 500 in flight; window 02:00-05:00 local; %d take part, %d skipped (%d reasons)\n",
		p.Devices, skipped, len(p.Skipped))
	fmt.Printf("PlanSpec (dry run over %d devices)   %8.1f ms  median of %d (target <= 1000 ms)\n", n, ms(med(plans)), len(plans))
	fmt.Printf("Create + Start (plan and %d members in one durable transaction)  %8.1f ms\n", v.Devices+skipped, ms(created))

	first, err := e.pass()
	if err != nil {
		return err
	}
	inflight, _, err := e.inFlight(v.ID)
	if err != nil {
		return err
	}
	fmt.Printf("first pass (offers the canary wave, %d devices, durable)  %8.1f ms\n", inflight, ms(first))
	steady, err := passes(e)
	if err != nil {
		return err
	}
	fmt.Printf("pass, %d in flight, nothing due                     %8.1f ms  median of %d, max %.1f (target <= 100 ms)\n",
		inflight, ms(med(steady)), len(steady), ms(slices.Max(steady)))
	dirty, err := dirtyPasses(e, inRollout(e, v.ID, inflight))
	if err != nil {
		return err
	}
	fmt.Printf("pass, %d in flight, each reconnected and born since the last pass %8.1f ms  median of %d\n", inflight, ms(med(dirty)), len(dirty))

	// The large in-flight set: the realistic rollout is aborted and one
	// that offers half of the fleet at once takes its place.
	t = time.Now()
	res, err := e.eng.Abort("bench", v.ID, "", e.commit)
	if err != nil {
		return err
	}
	fmt.Printf("abort (%d cancelled, every member written in one durable transaction)  %8.1f ms\n", res.Cancelled, ms(time.Since(t)))
	if _, err := e.pass(); err != nil { // the aborted rollout's last pass
		return err
	}
	offers0 := e.snd.offers.Load()
	t = time.Now()
	w, _, err := e.createStart(wideSpec("bench-b", e.rel, "50, 100"))
	if err != nil {
		return err
	}
	wideCreate := time.Since(t)
	t = time.Now()
	if _, err := e.pass(); err != nil {
		return err
	}
	offerPass := time.Since(t)
	inflight, _, err = e.inFlight(w.ID)
	if err != nil {
		return err
	}
	if got := e.snd.offers.Load() - offers0; got != int64(inflight) {
		return fmt.Errorf("%d offers pushed, %d devices in flight", got, inflight)
	}
	fmt.Printf("wide rollout (50 %% of %d eligible in its first wave): create + start %.1f ms; first pass offers %d devices in %.0f ms: %.0f offers/s\n",
		w.Devices, ms(wideCreate), inflight, ms(offerPass), float64(inflight)/offerPass.Seconds())
	// Some of them move on: a tenth downloading, and of those some
	// verified and some back from the reboot in trial.
	devs := inRollout(e, w.ID, inflight)
	if err := advance(e, w.ID, devs); err != nil {
		return err
	}
	if _, err := e.pass(); err != nil {
		return err
	}
	_, counts, err := e.inFlight(w.ID)
	if err != nil {
		return err
	}
	steady, err = passes(e)
	if err != nil {
		return err
	}
	fmt.Printf("pass, %d in flight (offered %d, downloading %d, verified %d, trial %d), nothing due  %8.1f ms  median of %d, max %.1f (target <= 100 ms)\n",
		inflight, counts["offered"], counts["downloading"], counts["verified"], counts["trial"], ms(med(steady)), len(steady), ms(slices.Max(steady)))
	tenth := devs[:len(devs)/10]
	dirty, err = dirtyPasses(e, tenth)
	if err != nil {
		return err
	}
	fmt.Printf("pass, %d in flight, %d of them reconnected and born since the last pass  %8.1f ms  median of %d\n", inflight, len(tenth), ms(med(dirty)), len(dirty))
	return nil
}

// passes runs roPasses passes and returns their durations.
func passes(e *roEnv) ([]time.Duration, error) {
	var out []time.Duration
	for range *roPasses {
		d, err := e.pass()
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

// dirtyPasses runs roPasses passes, each after devs reconnected and sent
// their birth (what the engine notes for the next pass).
func dirtyPasses(e *roEnv, devs []int) ([]time.Duration, error) {
	var out []time.Duration
	for range *roPasses {
		for _, i := range devs {
			id := deviceID(i)
			e.reg.Disconnected(id, e.gens[i], fleet.ReasonLost)
			e.gens[i] = e.reg.Connected(id, fleet.Conn{Remote: "127.0.0.1:1", Protocol: 5})
			_, b := roDevice(i)
			if err := e.reg.Birth(id, b); err != nil {
				return nil, err
			}
		}
		d, err := e.pass()
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

// inRollout returns the indexes of rollout id's devices in flight (at
// most max).
func inRollout(e *roEnv, id string, max int) []int {
	var out []int
	after := ""
	for len(out) < max {
		ds, next, err := e.eng.Devices(id, rollout.DeviceFilter{After: after, Limit: 1000})
		if err != nil {
			return out
		}
		for _, d := range ds {
			if d.State != "eligible" && d.State != "skipped" && len(out) < max {
				var i int
				if _, err := fmt.Sscanf(d.Device, "d%d", &i); err == nil {
					out = append(out, i)
				}
			}
		}
		if next == "" {
			break
		}
		after = next
	}
	return out
}

// advance moves a tenth of devs on as devices do: all of them start
// downloading, a third of those completes the download, and a third of
// those installs, reboots into the release and reports health ok (trial).
// Events go through delivery.Event from 64 devices at a time.
func advance(e *roEnv, id string, devs []int) error {
	n := len(devs) / 10
	return each(n, 64, func(k int) error {
		i := devs[k]
		steps := []wire.EventCode{wire.EvDownloadStarted}
		if k%3 == 0 {
			steps = append(steps, wire.EvDownloadCompleted)
		}
		if k%9 == 0 {
			steps = append(steps, wire.EvInstallStarted, wire.EvInstallCompleted, wire.EvRebootStarted)
		}
		for _, c := range steps {
			if err := e.event(i, id, c); err != nil {
				return err
			}
		}
		if k%9 != 0 {
			return nil
		}
		dev := deviceID(i)
		e.reg.Disconnected(dev, e.gens[i], fleet.ReasonLost)
		e.gens[i] = e.reg.Connected(dev, fleet.Conn{Remote: "127.0.0.1:1", Protocol: 5})
		_, b := roDevice(i)
		b.FirmwareVersion, b.BootReason, b.OTAState = e.rel.Version, wire.BootOTAReboot, wire.StateTrial
		if err := e.reg.Birth(dev, b); err != nil {
			return err
		}
		if err := e.event(i, id, wire.EvRebootCompleted); err != nil {
			return err
		}
		if err := e.reg.Heartbeat(dev, wire.Heartbeat{HealthFlags: wire.HealthAllOK, OTAState: wire.StateTrial}); err != nil {
			return err
		}
		return e.event(i, id, wire.EvHealthOK)
	})
}
