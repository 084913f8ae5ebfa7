package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
)

// benchRolloutMemory: heap per device taking part in an active rollout.
// The live heap (after a GC) of the engine's process is read before and
// after the realistic rollout of every device is created, started and has
// had its first pass (the canary wave offered); the difference, divided by
// the rollout's members, is what a device in a rollout costs. Heap
// profiles taken at both points (every allocation of 512 bytes sampled)
// show where it goes (go tool pprof -diff_base).
func benchRolloutMemory() error {
	n := *roDevices
	fmt.Printf("== memory per device in an active rollout: %d registered devices, the engine in-process\n", n)
	e, err := newRolloutEnv(n)
	if err != nil {
		return err
	}
	defer e.close()
	old := runtime.MemProfileRate
	runtime.MemProfileRate = 512
	defer func() { runtime.MemProfileRate = old }()
	before, err := liveHeap(filepath.Join(e.dir, "before.pprof"))
	if err != nil {
		return err
	}
	v, p, err := e.createStart(realisticSpec("bench-mem", e.rel))
	if err != nil {
		return err
	}
	if _, err := e.pass(); err != nil {
		return err
	}
	if _, err := e.pass(); err != nil {
		return err
	}
	after, err := liveHeap(filepath.Join(e.dir, "after.pprof"))
	if err != nil {
		return err
	}
	inflight, _, err := e.inFlight(v.ID)
	if err != nil {
		return err
	}
	members := p.Devices
	for _, g := range p.Skipped {
		members += g.Devices
	}
	per := float64(after-before) / float64(members)
	fmt.Printf("live heap %9.0f KiB before, %9.0f KiB with the rollout running (%d members, %d of them skipped, %d in flight)\n",
		float64(before)/1024, float64(after)/1024, members, members-p.Devices, inflight)
	fmt.Printf("%.0f B per device in the rollout (target <= 256 B)\n", per)
	top, err := pprofDiff(filepath.Join(e.dir, "before.pprof"), filepath.Join(e.dir, "after.pprof"))
	if err != nil {
		return err
	}
	fmt.Printf("where it goes (go tool pprof -top -sample_index=inuse_space -diff_base before after; functions that allocated):\n%s", top)

	// The same with half of the fleet in flight: each offered device has
	// its offer in delivery besides its place in the rollout.
	if _, err := e.eng.Abort("bench", v.ID, "", e.commit); err != nil {
		return err
	}
	if _, err := e.pass(); err != nil {
		return err
	}
	before, err = liveHeap(filepath.Join(e.dir, "before-wide.pprof"))
	if err != nil {
		return err
	}
	w, wp, err := e.createStart(wideSpec("bench-mem-wide", e.rel, "50, 100"))
	if err != nil {
		return err
	}
	if _, err := e.pass(); err != nil {
		return err
	}
	after, err = liveHeap(filepath.Join(e.dir, "after-wide.pprof"))
	if err != nil {
		return err
	}
	if inflight, _, err = e.inFlight(w.ID); err != nil {
		return err
	}
	fmt.Printf("\nwith a large in-flight set: %d members, %d in flight (offered): live heap %.0f KiB more, %.0f B per member;\n",
		wp.Devices, inflight, float64(after-before)/1024, float64(after-before)/float64(wp.Devices))
	fmt.Printf("  beyond the %.0f B of a member, %.0f B per device in flight\n", per,
		(float64(after-before)-per*float64(wp.Devices))/float64(inflight))
	top, err = pprofDiff(filepath.Join(e.dir, "before-wide.pprof"), filepath.Join(e.dir, "after-wide.pprof"))
	if err != nil {
		return err
	}
	fmt.Printf("where it goes:\n%s", top)
	runtime.KeepAlive(e)
	return nil
}

// pprofDiff returns the functions that hold more heap in after than in
// before (go tool pprof -top -diff_base), without the header and the
// callers that allocated nothing themselves.
func pprofDiff(before, after string) (string, error) {
	out, err := exec.Command("go", "tool", "pprof", "-top", "-sample_index=inuse_space", "-nodecount=25",
		"-diff_base", before, after).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("pprof: %v: %s", err, out)
	}
	var b strings.Builder
	table := false
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) > 0 && f[0] == "flat":
			table = true
			b.WriteString(l + "\n")
		case table && len(f) == 6 && f[0] != "0":
			b.WriteString(l + "\n")
		}
	}
	return b.String(), nil
}

// liveHeap returns the heap in use after a GC and writes a heap profile
// to path.
func liveHeap(path string) (uint64, error) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		return 0, err
	}
	return ms.HeapAlloc, nil
}
