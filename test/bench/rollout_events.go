package main

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"time"

	"github.com/otamq/otamq/ota/store"
	"github.com/otamq/otamq/ota/wire"
)

var (
	roTxDevices = flag.Int("ro-tx-devices", 5000, "rollout transitions benchmark: devices per concurrency level (each sends two events: two transitions)")
	roTxSeq     = flag.Int("ro-tx-seq", 500, "rollout transitions benchmark: devices of the sequential baseline")
)

// benchRolloutEvents: durable device transitions per second. A device's
// update event goes through delivery.Service.Event, which records it in
// the device's timeline and, in the same transaction (the event feed's
// transactional subscribers), lets the engine move the device in its
// rollout; Event returns when that transaction is durable. Many devices
// reporting at once share commits (the store's group commit); the
// baseline is the same path one event after the other, each waiting for
// its own fsync, and below it a single-fsync bbolt write of 300 bytes
// (store.UpdateNow), both measured in the same run on the same file
// system. The engine's passes run meanwhile, as in the broker (every
// event wakes the engine).
func benchRolloutEvents() error {
	per, seqN := *roTxDevices, *roTxSeq
	levels := []int{64, 1000}
	group := seqN + per*len(levels)
	n := 2 * group
	fmt.Printf("== durable rollout transitions: device events through delivery.Event, each moving its device in the rollout in the event's transaction (fsync on)\n")
	e, err := newRolloutEnv(n)
	if err != nil {
		return err
	}
	defer e.close()
	// Every device that can take the release is offered at once.
	v, _, err := e.createStart(wideSpec("bench-tx", e.rel, "100"))
	if err != nil {
		return err
	}
	if _, err := e.pass(); err != nil {
		return err
	}
	devs := inRollout(e, v.ID, n)
	if len(devs) < n*9/10 {
		return fmt.Errorf("%d of %d devices offered", len(devs), n)
	}
	solo, err := soloWrites(e.dir, 200)
	if err != nil {
		return err
	}
	fmt.Printf("single-fsync bbolt write (300 bytes, store.UpdateNow)      %8.0f writes/s       (the baseline)\n", solo)

	// Each device's events in order (a device sends one at a time); the
	// devices of a level all at once, up to the level.
	walk := func(i int) error {
		if err := e.event(i, v.ID, wire.EvDownloadStarted); err != nil {
			return err
		}
		return e.event(i, v.ID, wire.EvDownloadCompleted)
	}
	// measure runs the sequential baseline and each level on its own
	// devices of set.
	measure := func(set []int) error {
		seqDevs := set[:len(set)*seqN/group]
		t := time.Now()
		for _, i := range seqDevs {
			if err := walk(i); err != nil {
				return err
			}
		}
		seq := float64(2*len(seqDevs)) / time.Since(t).Seconds()
		fmt.Printf("  one after the other (%d devices, 2 each)               %8.0f transitions/s  %.2fx baseline\n", len(seqDevs), seq, seq/solo)
		rest := set[len(seqDevs):]
		for li, level := range levels {
			part := rest[len(rest)*li/len(levels) : len(rest)*(li+1)/len(levels)]
			t := time.Now()
			if err := each(len(part), level, func(k int) error { return walk(part[k]) }); err != nil {
				return err
			}
			r := float64(2*len(part)) / time.Since(t).Seconds()
			fmt.Printf("  %4d devices at once, %5d devices (group commit)     %8.0f transitions/s  %.1fx baseline, %.1fx one after the other (target >= 10000/s)\n",
				level, len(part), r, r/solo, r/seq)
		}
		return nil
	}
	half := len(devs) / 2
	fmt.Printf("the engine's passes not running (the transaction path alone):\n")
	if err := measure(devs[:half]); err != nil {
		return err
	}
	// As in the broker: the engine runs, and every event wakes it.
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { defer close(runDone); e.eng.Run(ctx) }()
	defer func() { cancel(); <-runDone }()
	inflight, _, err := e.inFlight(v.ID)
	if err != nil {
		return err
	}
	fmt.Printf("the engine running, as in the broker (%d devices in flight, a pass after every commit):\n", inflight)
	if err := measure(devs[half:]); err != nil {
		return err
	}
	// Every transition reached the engine.
	_, counts, err := e.inFlight(v.ID)
	if err != nil {
		return err
	}
	if counts["verified"] != len(devs) {
		return fmt.Errorf("%d devices verified, want %d", counts["verified"], len(devs))
	}
	fmt.Printf("(a transition: the device's timeline entry and its rollout record in one transaction; %d devices in the rollout)\n", v.Devices)
	return nil
}

// soloWrites returns single-fsync writes per second of 300 bytes to a new
// bbolt file in dir, n of them one after the other.
func soloWrites(dir string, n int) (float64, error) {
	db, err := store.Open(filepath.Join(dir, "solo.db"), &store.Options{Logger: quiet})
	if err != nil {
		return 0, err
	}
	defer db.Close()
	value := make([]byte, 300)
	t := time.Now()
	for i := range n {
		if err := db.UpdateNow(func(tx store.Tx) error { return tx.Put("bench", fmt.Appendf(nil, "%012d", i), value) }); err != nil {
			return 0, err
		}
	}
	return float64(n) / time.Since(t).Seconds(), nil
}
