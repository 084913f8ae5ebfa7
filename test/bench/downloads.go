package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/otamq/otamq/hooks"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/wire"
)

var (
	dlIdle   = flag.Int("dl-idle", 17500, "downloads benchmark: idle devices connected")
	dlActive = flag.Int("dl-active", 2000, "downloads benchmark: devices downloading at once")
	dlSize   = flag.Int("dl-size", 4096, "downloads benchmark: block size")
	dlWindow = flag.Int("dl-window", 16, "downloads benchmark: window")
	dlHB     = flag.Int("dl-hb-rate", 1000, "downloads benchmark: heartbeats per second sent by idle devices during the downloads")
)

// benchDownloads: many devices download at once while a large idle fleet
// is connected (the case an adversarial test found costing 0.55 MiB per
// download). The otamq server runs as a child process on a store with
// every device registered and a 1 MiB release offered to the downloaders;
// each downloader fetches the whole image once, window by window. The
// child's memory is read with all devices connected and idle, then every
// 500 ms while the downloads run: RSS as the kernel sees it (no forced GC),
// and the Go heap in use. Idle devices send heartbeats at a fixed rate
// meanwhile; the broker's heartbeat counter shows how many it took.
func benchDownloads() error {
	idle, active, size, window := *dlIdle, *dlActive, *dlSize, *dlWindow
	fmt.Printf("== concurrent downloads: %d devices download a 1 MiB image at once (%d-byte blocks, window %d: %d KiB in flight each) with %d idle devices connected; otamq a child process\n",
		active, size, window, size*window/1024, idle)
	dir, err := os.MkdirTemp("", "otamq-bench-dl-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := seedDevices(dir, idle+active); err != nil {
		return err
	}
	b, err := blocksBroker(dir, false)
	if err != nil {
		return err
	}
	img, err := releaseAndOffer(b, active)
	if serr := b.Shutdown(context.Background()); err == nil {
		err = serr
	}
	if err != nil {
		return err
	}

	c, err := startChild("otamq-blocks", dir, "-blk-profile-dir", *blkProfDir)
	if err != nil {
		return err
	}
	defer c.stop()
	mqttAddr, httpAddr, mem := c.mqttAddr, c.httpAddr, c.mem
	heartbeats := func() (int, error) {
		out, err := get("http://" + httpAddr + "/metrics")
		if err != nil {
			return 0, err
		}
		for _, l := range strings.Split(out, "\n") {
			if v, ok := strings.CutPrefix(l, "otamq_heartbeats_total "); ok {
				var f float64
				_, err := fmt.Sscan(v, &f)
				return int(f), err
			}
		}
		return 0, fmt.Errorf("no otamq_heartbeats_total")
	}

	ds, err := connectDevices(mqttAddr, active, true)
	if err != nil {
		return err
	}
	defer closeDevices(ds)
	idles, err := connectRange(mqttAddr, active, idle, true, "cmd")
	if err != nil {
		return err
	}
	defer func() {
		for _, c := range idles {
			_ = c.Close()
		}
	}()
	time.Sleep(3 * fleet.DefaultFlushInterval) // the connect status flush
	hb0, err := heartbeats()
	if err != nil {
		return err
	}

	// Heartbeats from the idle devices at a fixed rate, from now until the
	// downloads end. The idle figure is taken after a warm-up with them,
	// without forcing a GC, so that both figures are what the kernel sees
	// in a steady state (a fleet that sends heartbeats keeps a heap that
	// grows to the GC's goal between collections).
	var stop atomic.Bool
	var sent atomic.Int64
	var hbWG sync.WaitGroup
	hbWG.Add(1)
	go func() {
		defer hbWG.Done()
		sendHeartbeats(idles, func(i int) string { return deviceID(active + i) }, *dlHB, &stop, &sent)
	}()
	var idleMem blkMem
	for i := range 20 {
		time.Sleep(500 * time.Millisecond)
		if i < 10 {
			continue // warm-up
		}
		m, err := mem(false)
		if err != nil {
			stop.Store(true)
			hbWG.Wait()
			return err
		}
		idleMem.rss, idleMem.heap = max(idleMem.rss, m.rss), max(idleMem.heap, m.heap)
		idleMem.stack, idleMem.goroutines = max(idleMem.stack, m.stack), max(idleMem.goroutines, m.goroutines)
		idleMem.goal, idleMem.live = max(idleMem.goal, m.goal), max(idleMem.live, m.live)
	}

	if *blkProfDir != "" {
		if err := saveProfiles(httpAddr, *blkProfDir, "downloads-idle"); err != nil {
			fmt.Fprintln(os.Stderr, "profiles:", err)
		}
	}

	// Two bursts: half the downloaders, then all of them. Peak RSS (the
	// kernel's high-water mark) after each: what the second burst needed
	// beyond the first, per device it added, is the memory one more
	// concurrent download costs. The GC's headroom, which a burst of
	// allocation fills whatever its size, is in both and cancels out.
	half := active / 2
	a, err := burst(ds[:half], img, size, window, mem, httpAddr, "")
	if err == nil {
		var b2 burstResult
		b2, err = burst(ds, img, size, window, mem, httpAddr, *blkProfDir)
		if err == nil {
			var st stallResult
			if st, err = stall(mqttAddr, img, ds, size, window, mem); err == nil {
				defer printStall(st, active)
			}
			defer printBursts(idleMem, a, b2, half, active)
		}
	}
	stop.Store(true)
	hbWG.Wait()
	if err != nil {
		return err
	}
	var hb1 int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if hb1, err = heartbeats(); err != nil || hb1-hb0 >= int(sent.Load()) || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		return err
	}
	defer fmt.Printf("heartbeats from the idle devices (%d/s, warm-up and downloads): %d sent, %d accepted\n", *dlHB, sent.Load(), hb1-hb0)
	return nil
}

// burstResult is what one burst of downloads measured.
type burstResult struct {
	elapsed time.Duration
	bytes   int64
	busy    blkMem // largest of the samples
	peak    int64  // peak RSS after the burst
	samples int
}

// burst makes every device in ds download the whole image once, at the
// same time, sampling the server's memory every 500 ms; with profDir it
// saves profiles while the downloads run.
func burst(ds []*blkDevice, img *blkImage, size, window int, mem func(bool) (blkMem, error), httpAddr, profDir string) (burstResult, error) {
	var r burstResult
	var wg sync.WaitGroup
	var total atomic.Int64
	errs := make(chan error, len(ds))
	windows := (int(img.size()) + size*window - 1) / (size * window)
	t0 := time.Now()
	for _, d := range ds {
		d.off = 0
		_ = d.c.SetReadDeadline(time.Now().Add(10 * time.Minute))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for w := range windows {
				got, err := d.window(img, size, window, w == 0)
				total.Add(got)
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var sampleErr error
sampling:
	for {
		select {
		case <-done:
			break sampling
		case <-tick.C:
			m, err := mem(false)
			if err != nil {
				sampleErr = err
				continue
			}
			r.samples++
			if r.samples == 2 && profDir != "" {
				if err := saveProfiles(httpAddr, profDir, "downloads-busy"); err != nil {
					fmt.Fprintln(os.Stderr, "profiles:", err)
				}
			}
			r.busy.rss, r.busy.heap = max(r.busy.rss, m.rss), max(r.busy.heap, m.heap)
			r.busy.stack, r.busy.goroutines = max(r.busy.stack, m.stack), max(r.busy.goroutines, m.goroutines)
			r.busy.goal, r.busy.live = max(r.busy.goal, m.goal), max(r.busy.live, m.live)
		}
	}
	r.elapsed, r.bytes = time.Since(t0), total.Load()
	close(errs)
	if err := <-errs; err != nil {
		return r, err
	}
	if sampleErr != nil {
		return r, sampleErr
	}
	after, err := mem(false)
	r.peak = after.peak
	return r, err
}

func printBursts(idle blkMem, a, b burstResult, half, active int) {
	kib := func(v int64) float64 { return float64(v) / 1024 }
	fmt.Printf("idle: RSS %.0f KiB, heap in use %.0f KiB (GC goal %.0f KiB), stacks %.0f KiB, %d goroutines\n",
		kib(idle.rss), kib(idle.heap), kib(idle.goal), kib(idle.stack), idle.goroutines)
	for _, x := range []struct {
		n int
		r burstResult
	}{{half, a}, {active, b}} {
		fmt.Printf("%5d downloading at once: %.1f s, %.0f MB/s of block messages; RSS up to %.0f KiB, heap in use %.0f KiB (GC goal %.0f KiB), stacks %.0f KiB, %d goroutines; peak RSS %.0f KiB\n",
			x.n, x.r.elapsed.Seconds(), float64(x.r.bytes)/1e6/x.r.elapsed.Seconds(), kib(x.r.busy.rss), kib(x.r.busy.heap),
			kib(x.r.busy.goal), kib(x.r.busy.stack), x.r.busy.goroutines, kib(x.r.peak))
	}
	added := float64(active - half)
	fmt.Printf("per concurrent download: %.1f KiB of peak RSS for each of the %d the second burst added (target <= 128 KiB)\n",
		kib(b.peak-a.peak)/added, active-half)
	fmt.Printf("                         %.1f KiB of peak RSS over the idle RSS, per device of the %d-device burst (GC headroom included)\n",
		kib(b.peak-idle.rss)/float64(active), active)
}

// connectRange opens the connections of devices from..from+n-1 like
// connectMany.
func connectRange(addr string, from, n int, auth bool, kind string) ([]net.Conn, error) {
	return connectIDs(addr, n, func(i int) string { return deviceID(from + i) }, auth, kind)
}

// sendHeartbeats publishes heartbeats from conns (conns[i] is device
// id(i)), rate per second in all, round robin, until stop.
func sendHeartbeats(conns []net.Conn, id func(int) string, rate int, stop *atomic.Bool, sent *atomic.Int64) {
	if rate <= 0 || len(conns) == 0 {
		return
	}
	hb := wire.Heartbeat{UptimeSeconds: 60, HealthFlags: wire.HealthAllOK, RSSI: -60}.Encode()
	const batch = 50
	interval := time.Second * batch / time.Duration(rate)
	next := 0
	for t := time.Now(); !stop.Load(); t = t.Add(interval) {
		time.Sleep(time.Until(t))
		for range batch {
			i := next % len(conns)
			if _, err := conns[i].Write(publishPacket("dm/"+id(i)+"/hb", hb)); err == nil {
				sent.Add(1)
			}
			next++
		}
	}
}

// stallResult is the server's memory, after a forced GC, before and while
// every downloader has a window in flight that its client stopped reading.
type stallResult struct {
	before, during blkMem
}

// stall measures what a download in flight holds: each device of ds
// connects again (its old connection closed first) with a 4 KiB receive
// buffer, asks for a window and reads nothing, so that the broker's sender
// for it waits on a full socket with the rest of the window to send.
func stall(addr string, img *blkImage, ds []*blkDevice, size, window int, mem func(bool) (blkMem, error)) (stallResult, error) {
	n := len(ds)
	var r stallResult
	var err error
	if r.before, err = mem(true); err != nil {
		return r, err
	}
	small := net.Dialer{Timeout: 30 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) }); err != nil {
			return err
		}
		return serr
	}}
	conns := make([]net.Conn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close()
			}
		}
	}()
	for i := range conns {
		id := ds[i].id
		_ = ds[i].c.Close()
		c, err := dialWith(small, addr, id, id, token(id), "dm/"+id+"/ota/blk")
		if err != nil {
			return r, err
		}
		conns[i] = c
		// As many windows as the broker keeps waiting per client, so that
		// the socket (whose kernel buffers take the first ones) fills.
		for w := range hooks.MaxPendingWindows {
			req := wire.BlockRequest{Digest: img.digest[:], Offset: uint64(w * size * window), Size: uint32(size), Count: uint32(window),
				RequestID: uint32(w + 1)}.Encode()
			if _, err := c.Write(publishPacket("dm/"+id+"/ota/get", req)); err != nil {
				return r, err
			}
		}
	}
	time.Sleep(3 * time.Second) // every sender is waiting on its socket
	r.during, err = mem(true)
	return r, err
}

func printStall(r stallResult, n int) {
	per := func(during, before int64) float64 { return float64(during-before) / 1024 / float64(n) }
	fmt.Printf("stalled: %d downloads in flight whose clients stopped reading (after a forced GC, against just before): RSS %+.1f KiB, heap %+.1f KiB, stacks %+.1f KiB, %+d goroutines\n",
		n, float64(r.during.rss-r.before.rss)/1024, float64(r.during.heap-r.before.heap)/1024,
		float64(r.during.stack-r.before.stack)/1024, r.during.goroutines-r.before.goroutines)
	fmt.Printf("per concurrent download held: %.1f KiB RSS (heap %.1f, stacks %.1f; target <= 128 KiB)\n",
		per(r.during.rss, r.before.rss), per(r.during.heap, r.before.heap), per(r.during.stack, r.before.stack))
}
