package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/otamq/otamq/ota/fleet"

	"github.com/otamq/otamq/cmd/otactl/rpc"
	"github.com/otamq/otamq/ota/rollout"
)

var roFleet = flag.Int("ro-hb-devices", 10000, "rollout heartbeat benchmark: devices registered besides the publishers, all in the running rollout")

// benchRolloutHeartbeat: the heartbeat benchmark with a rollout running in
// otamq (ro-hb-devices more devices registered, every one of them in the
// rollout and offered, the publishers too).
func benchRolloutHeartbeat() error { return heartbeatBench(*roFleet) }

// benchRolloutIdle: resident memory per connected, subscribed device with
// a rollout running, otamq against plain mochi, measured as the idle
// benchmark measures it (each server a child process, RSS after a GC that
// returns free memory to the OS, 10,000 devices connected and subscribed
// to their cmd topic). For each of two rollouts of every device (one with
// rate.in_flight 500, as a fleet would run it; one that offers the release
// to every device at once, the worst case) otamq runs once with the
// devices connecting (so that the store holds their status, as after any
// restart), then is measured three times: restarted and connected with no
// rollout; after the rollout was created and started through the admin API
// and has offered what its rate allows (the offers go nowhere: the devices
// listen on cmd); and after a restart of the broker on that store, the
// devices connected again. Heap profiles (every 4 KiB allocated sampled)
// taken at each point show where the rollout's memory goes.
func benchRolloutIdle() error {
	n := *conns
	fmt.Printf("== idle connections with a rollout running: %d devices connected (MQTT 3.1.1) and subscribed to their cmd topic; every device in the rollout\n", n)
	mdir, err := os.MkdirTemp("", "otamq-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(mdir)
	mc, err := startChild("mochi", mdir, "-conns", strconv.Itoa(n))
	if err != nil {
		return err
	}
	cs, err := connectMany(mc.mqttAddr, n, false, "cmd")
	if err != nil {
		mc.stop()
		return fmt.Errorf("mochi: %w", err)
	}
	mm, err := mc.mem(true)
	closeConns(cs)
	mc.stop()
	if err != nil {
		return err
	}
	mPer := float64(mm.rss-mc.base) / float64(n)
	fmt.Printf("plain mochi, otamq's capabilities: RSS %8.0f KiB before, %8.0f KiB with %d connections: %6.2f KiB per connection\n",
		float64(mc.base)/1024, float64(mm.rss)/1024, n, mPer/1024)
	fmt.Printf("    heap in use %8.0f KiB, file-backed pages %8.0f KiB, goroutine stacks %8.0f KiB, %d goroutines\n",
		float64(mm.heap)/1024, float64(mm.file)/1024, float64(mm.stack)/1024, mm.goroutines)
	for _, inFlight := range []int{*roIdleInFlight, 0} {
		if err := rolloutIdle(n, mPer, mm.rss-mm.file, inFlight); err != nil {
			return err
		}
	}
	return nil
}

var roIdleInFlight = flag.Int("ro-idle-in-flight", 500, "rollout idle benchmark: the rollout's rate.in_flight in its first configuration (the second offers every device)")

// rolloutIdle measures otamq against mPer, plain mochi's RSS per
// connection, and mAnon, its anonymous memory (RSS without file-backed
// pages) with the connections, with a rollout of every device whose rate.in_flight is
// inFlight (0: none, every device offered at once).
func rolloutIdle(n int, mPer float64, mAnon int64, inFlight int) error {
	what := "every device offered"
	if inFlight > 0 {
		what = fmt.Sprintf("rate.in_flight %d: %d devices offered, the others members waiting", inFlight, min(n, inFlight))
	}
	fmt.Printf("\n-- a rollout of all %d devices, %s\n", n, what)
	dir, err := os.MkdirTemp("", "otamq-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := seedDevices(dir, n); err != nil {
		return err
	}
	// connected starts otamq on dir, connects the devices and reads the
	// memory once the status flush that the connections triggered is done;
	// then runs during, reads again and writes the heap profiles.
	type reading struct {
		registered, loaded blkMem
		base               int64
	}
	connected := func(profile string, during func(c *child) error, profile2 string) (reading, blkMem, error) {
		var r reading
		var m2 blkMem
		c, err := startChild("otamq", dir, "-conns", strconv.Itoa(n), "-heap-rate", "4096")
		if err != nil {
			return r, m2, err
		}
		defer c.stop()
		r.base = c.base
		if r.registered, err = c.mem(true); err != nil {
			return r, m2, err
		}
		cs, err := connectMany(c.mqttAddr, n, true, "cmd")
		if err != nil {
			return r, m2, err
		}
		defer closeConns(cs)
		time.Sleep(3 * fleet.DefaultFlushInterval)
		if r.loaded, err = c.mem(true); err != nil {
			return r, m2, err
		}
		if err := saveHeap(c.httpAddr, filepath.Join(dir, profile)); err != nil {
			return r, m2, err
		}
		if during == nil {
			return r, m2, nil
		}
		if err := during(c); err != nil {
			return r, m2, err
		}
		time.Sleep(3 * fleet.DefaultFlushInterval)
		if m2, err = c.mem(true); err != nil {
			return r, m2, err
		}
		return r, m2, saveHeap(c.httpAddr, filepath.Join(dir, profile2))
	}
	// A fleet that has run: the devices connected once before, so the
	// store holds their status records, as it does after any restart.
	if _, _, err := connected("warm.pprof", nil, ""); err != nil {
		return fmt.Errorf("otamq: %w", err)
	}
	first, with, err := connected("none.pprof", func(c *child) error { return runRolloutCapped(c.mqttAddr, n, inFlight) }, "rollout.pprof")
	if err != nil {
		return fmt.Errorf("otamq: %w", err)
	}
	again, _, err := connected("restart.pprof", nil, "")
	if err != nil {
		return fmt.Errorf("otamq after the restart: %w", err)
	}
	kb := func(v int64) float64 { return float64(v) / 1024 }
	per := func(v int64) float64 { return float64(v) / float64(n) / 1024 }
	line := func(what string, r reading, m blkMem) {
		oPer := float64(m.rss-r.base) / float64(n)
		fmt.Printf("otamq, %s: RSS %8.0f KiB, %6.2f KiB per device in all; otamq adds %.2f KiB per connected device over plain mochi (target <= 2 KiB)\n",
			what, kb(m.rss), oPer/1024, (oPer-mPer)/1024)
		fmt.Printf("    heap in use %8.0f KiB, file-backed pages %8.0f KiB (the store's mmap %6.0f KiB, the rest the binary), goroutine stacks %8.0f KiB, %d goroutines\n",
			kb(m.heap), kb(m.file), kb(m.store), kb(m.stack), m.goroutines)
		fmt.Printf("    without file-backed pages (clean page cache the kernel reclaims; how much of the store is mapped depends on when bbolt last remapped): otamq adds %.2f KiB per connected device over plain mochi\n",
			per(m.rss-m.file-mAnon))
	}
	line("connected, no rollout", first, first.loaded)
	line("with the rollout started ("+what+")", first, with)
	fmt.Printf("    the rollout added: RSS %+.2f KiB, heap %+.2f KiB, file-backed %+.2f KiB (the store %+.2f) per device\n",
		per(with.rss-first.loaded.rss), per(with.heap-first.loaded.heap), per(with.file-first.loaded.file), per(with.store-first.loaded.store))
	line("restarted with the rollout running, devices connected again", again, again.loaded)
	fmt.Printf("    against no rollout: RSS %+.2f KiB, heap %+.2f KiB, file-backed %+.2f KiB (the store %+.2f) per device (registered before the connections: %.2f KiB each, %.2f without the rollout)\n",
		per(again.loaded.rss-again.base-(first.loaded.rss-first.base)), per(again.loaded.heap-first.loaded.heap), per(again.loaded.file-first.loaded.file),
		per(again.loaded.store-first.loaded.store),
		per(again.registered.rss-again.base), per(first.registered.rss-first.base))
	if fi, err := os.Stat(filepath.Join(dir, "otamq.db")); err == nil {
		fmt.Printf("    (the store file: %.1f MiB)\n", float64(fi.Size())/(1<<20))
	}
	for _, d := range []struct{ what, after string }{{"the rollout started", "rollout.pprof"}, {"after the restart", "restart.pprof"}} {
		top, err := pprofDiff(filepath.Join(dir, "none.pprof"), filepath.Join(dir, d.after))
		if err != nil {
			return err
		}
		fmt.Printf("\nheap the rollout holds, %s (go tool pprof -top -sample_index=inuse_space -diff_base; functions that allocated):\n%s", d.what, top)
	}
	return nil
}

func closeConns(cs []net.Conn) {
	for _, c := range cs {
		_ = c.Close()
	}
}

// saveHeap writes the heap profile of the server whose HTTP listener is
// httpAddr to path.
func saveHeap(httpAddr, path string) error {
	body, err := get("http://" + httpAddr + "/debug/pprof/heap?gc=1")
	if err != nil {
		return err
	}
	return os.WriteFile(path, []byte(body), 0o600)
}

// runRollout uploads a release through the admin API of the broker at
// addr and creates and starts a rollout of all its devices (one wave of
// 100 %, no rate limit); it returns once the engine has offered the
// release to every one of them (want devices).
func runRollout(addr string, want int) error { return runRolloutCapped(addr, want, 0) }

// runRolloutCapped is runRollout with rate.in_flight set to inFlight (0:
// none); it returns once min(want, inFlight) devices are offered.
func runRolloutCapped(addr string, want, inFlight int) error {
	ctx := context.Background()
	c, err := rpc.Dial(ctx, rpc.Config{URL: "mqtt://" + addr, Username: "bench", Password: benchOperatorPassword, Timeout: 2 * time.Minute})
	if err != nil {
		return err
	}
	defer c.Close()
	_, rel, err := uploadRelease(c, 64*1024)
	if err != nil {
		return err
	}
	spec := fmt.Sprintf("id: bench-running\nrelease: %s\nwaves:\n  - {percent: [100]}\ninstall: immediately\n", rel.ID)
	if inFlight > 0 {
		spec += fmt.Sprintf("rate: {in_flight: %d}\n", inFlight)
		want = min(want, inFlight)
	}
	if err := c.Call(ctx, "rollout/create", map[string]any{"yaml": spec}, nil); err != nil {
		return fmt.Errorf("rollout/create: %w", err)
	}
	if err := c.Call(ctx, "rollout/start", map[string]any{"id": "bench-running"}, nil); err != nil {
		return fmt.Errorf("rollout/start: %w", err)
	}
	var v rollout.View
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err := c.Call(ctx, "rollout/get", map[string]any{"id": "bench-running"}, &v); err != nil {
			return fmt.Errorf("rollout/get: %w", err)
		}
		if v.Rate.InFlight == want {
			return nil
		}
	}
	return fmt.Errorf("rollout: %d of %d devices offered within a minute", v.Rate.InFlight, want)
}
