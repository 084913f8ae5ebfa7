package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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

	cmd := exec.Command(os.Args[0], "-serve", "otamq-blocks", "-data", dir, "-blk-profile-dir", *blkProfDir)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = stdin.Close(); _ = cmd.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		return fmt.Errorf("server: %v", err)
	}
	var mqttAddr, ctlAddr, httpAddr string
	var base int64
	if _, err := fmt.Sscanf(line, "ready %s %s %s %d", &mqttAddr, &ctlAddr, &httpAddr, &base); err != nil {
		_ = cmd.Process.Kill()
		return fmt.Errorf("server said %q: %v", line, err)
	}
	mem := func(gc bool) (m blkMem, err error) {
		path := "/mem"
		if !gc {
			path = "/mem?nogc=1"
		}
		s, err := get("http://" + ctlAddr + path)
		if err != nil {
			return m, err
		}
		var file int64
		_, err = fmt.Sscan(strings.TrimSpace(s), &m.rss, &file, &m.heap, &m.stack, &m.peak, &m.goroutines)
		return m, err
	}
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
	idleMem, err := mem(true)
	if err != nil {
		return err
	}
	idleNoGC, err := mem(false)
	if err != nil {
		return err
	}
	hb0, err := heartbeats()
	if err != nil {
		return err
	}

	// Heartbeats from the idle devices at a fixed rate, until the
	// downloads end.
	var stop atomic.Bool
	var sent atomic.Int64
	var hbWG sync.WaitGroup
	hbWG.Add(1)
	go func() {
		defer hbWG.Done()
		sendHeartbeats(idles, func(i int) string { return deviceID(active + i) }, *dlHB, &stop, &sent)
	}()

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
	var busy blkMem
	samples := 0
	tick := time.NewTicker(500 * time.Millisecond)
sampling:
	for {
		select {
		case <-done:
			break sampling
		case <-tick.C:
			m, err := mem(false)
			if err != nil {
				tick.Stop()
				stop.Store(true)
				<-done
				hbWG.Wait()
				return err
			}
			samples++
			busy.rss, busy.heap = max(busy.rss, m.rss), max(busy.heap, m.heap)
			busy.stack, busy.goroutines = max(busy.stack, m.stack), max(busy.goroutines, m.goroutines)
		}
	}
	tick.Stop()
	elapsed := time.Since(t0)
	stop.Store(true)
	hbWG.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	after, err := mem(false)
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
	if *blkProfDir != "" {
		if err := saveProfiles(httpAddr, *blkProfDir, "downloads"); err != nil {
			fmt.Fprintln(os.Stderr, "profiles:", err)
		}
	}
	kib := func(v int64) float64 { return float64(v) / 1024 }
	rate := float64(total.Load()) / 1e6 / elapsed.Seconds()
	fmt.Printf("idle (%d connected): RSS %.0f KiB after a GC (%.0f KiB without), heap in use %.0f KiB, stacks %.0f KiB, %d goroutines\n",
		idle+active, kib(idleMem.rss), kib(idleNoGC.rss), kib(idleMem.heap), kib(idleMem.stack), idleMem.goroutines)
	fmt.Printf("downloading: %d × 1 MiB in %.1f s, %.0f MB/s of block messages; largest of %d samples: RSS %.0f KiB, heap in use %.0f KiB, stacks %.0f KiB; peak RSS %.0f KiB\n",
		active, elapsed.Seconds(), rate, samples, kib(busy.rss), kib(busy.heap), kib(busy.stack), kib(after.peak))
	fmt.Printf("per concurrent download: %.1f KiB RSS, %.1f KiB heap (target <= 128 KiB RSS)\n",
		kib(busy.rss-idleNoGC.rss)/float64(active), kib(busy.heap-idleMem.heap)/float64(active))
	fmt.Printf("heartbeats during the downloads: %d sent, %d accepted (%.0f/s)\n", sent.Load(), hb1-hb0, float64(hb1-hb0)/elapsed.Seconds())
	return nil
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
