package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/otamq/otamq/ota/fleet"
)

// blkMem is what a block-benchmark server child reports about itself.
type blkMem struct {
	rss, heap, stack, peak, goroutines int64
	goal, live                         int64 // the GC's heap goal and live heap
	file                               int64 // file-backed part of rss
	store                              int64 // the store's mmap, part of file
}

// blocksMemory runs each server as a child process and reads its memory
// with n devices connected and idle, then while all n download
// continuously.
func blocksMemory(dir string, img *blkImage, n int) error {
	size, window := *blkMemSize, *blkMemWindow
	secs := *blkMemSecs
	fmt.Printf("== memory while downloading: %d devices, %d-byte blocks, window %d, %d s of continuous download; each server a child process\n",
		n, size, window, secs)
	type result struct {
		base       int64
		idle, busy blkMem
		rate       float64
		samples    int
		heapTop    string
	}
	res := map[string]*result{}
	for _, kind := range []string{"otamq-blocks", "mochi-blocks"} {
		c, err := startChild(kind, dir, "-blk-profile-dir", *blkProfDir)
		if err != nil {
			return err
		}
		stop := c.stop
		r := &result{base: c.base}
		mqttAddr, httpAddr := c.mqttAddr, c.httpAddr
		mem := func() (blkMem, error) { return c.mem(true) }
		err = func() error {
			ds, err := connectDevices(mqttAddr, n, kind == "otamq-blocks")
			if err != nil {
				return err
			}
			defer closeDevices(ds)
			if kind == "mochi-blocks" {
				rs, err := startResponders(mqttAddr, img, n, min(n, blkResponders))
				defer closeResponders(rs)
				if err != nil {
					return err
				}
			} else {
				// Let the status flush the connections triggered finish.
				time.Sleep(3 * fleet.DefaultFlushInterval)
			}
			if r.idle, err = mem(); err != nil {
				return err
			}
			var halt atomic.Bool
			var total atomic.Int64
			var wg sync.WaitGroup
			errs := make(chan error, len(ds))
			t0 := time.Now()
			for i, d := range ds {
				d.off = uint64(i) * 32 * 1024 % img.size()
				d.align(size, window)
				_ = d.c.SetReadDeadline(time.Now().Add(time.Duration(secs)*time.Second + time.Minute))
				wg.Add(1)
				go func() {
					defer wg.Done()
					for first := true; !halt.Load(); first = false {
						got, err := d.window(img, size, window, first)
						total.Add(got)
						if err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			// Sample once a second after the first; keep the largest.
			for range secs {
				time.Sleep(time.Second)
				if time.Since(t0) < 1500*time.Millisecond {
					continue
				}
				m, err := mem()
				if err != nil {
					halt.Store(true)
					wg.Wait()
					return err
				}
				r.samples++
				r.busy.rss, r.busy.heap = max(r.busy.rss, m.rss), max(r.busy.heap, m.heap)
				r.busy.stack, r.busy.goroutines = max(r.busy.stack, m.stack), max(r.busy.goroutines, m.goroutines)
			}
			if *blkProfDir != "" && httpAddr != "-" {
				if err := saveProfiles(httpAddr, *blkProfDir, strings.TrimSuffix(kind, "-blocks")); err != nil {
					fmt.Fprintln(os.Stderr, "profiles:", err)
				}
			}
			if kind == "otamq-blocks" {
				if r.heapTop, err = heapProfile(httpAddr, dir); err != nil {
					r.heapTop = ""
					fmt.Fprintln(os.Stderr, "heap profile:", err)
				}
			}
			halt.Store(true)
			wg.Wait()
			r.rate = float64(total.Load()) / 1e6 / time.Since(t0).Seconds()
			close(errs)
			if err := <-errs; err != nil {
				return err
			}
			m, err := mem()
			r.busy.peak = m.peak
			return err
		}()
		stop()
		if err != nil {
			return fmt.Errorf("%s: %w", kind, err)
		}
		res[kind] = r
	}
	kib := func(v int64) float64 { return float64(v) / 1024 }
	for _, kind := range []string{"otamq-blocks", "mochi-blocks"} {
		r := res[kind]
		name := strings.TrimSuffix(kind, "-blocks")
		fmt.Printf("%-6s RSS %7.0f KiB before; %d connected, idle: RSS %7.0f KiB, heap in use %7.0f KiB, stacks %7.0f KiB\n",
			name, kib(r.base), n, kib(r.idle.rss), kib(r.idle.heap), kib(r.idle.stack))
		fmt.Printf("%-6s all downloading (%5.0f MB/s): RSS %7.0f KiB, heap in use %7.0f KiB, stacks %7.0f KiB (largest of %d samples); peak RSS %7.0f KiB\n",
			"", r.rate, kib(r.busy.rss), kib(r.busy.heap), kib(r.busy.stack), r.samples, kib(r.busy.peak))
		fmt.Printf("%-6s downloading adds %.1f KiB RSS, %.1f KiB heap per device\n", "",
			kib(r.busy.rss-r.idle.rss)/float64(n), kib(r.busy.heap-r.idle.heap)/float64(n))
	}
	if top := res["otamq-blocks"].heapTop; top != "" {
		fmt.Printf("\notamq in-use heap while %d devices download (go tool pprof -top -sample_index=inuse_space):\n%s", n, top)
	}
	return nil
}

// saveProfiles writes the goroutine, heap, mutex and block profiles of the
// server at httpAddr (its pprof endpoint) under dir.
func saveProfiles(httpAddr, dir, prefix string) error {
	for _, p := range []string{"goroutine?debug=1", "heap?gc=1", "mutex", "block"} {
		body, err := get("http://" + httpAddr + "/debug/pprof/" + p)
		if err != nil {
			return err
		}
		name, _, _ := strings.Cut(p, "?")
		ext := ".pprof"
		if strings.Contains(p, "debug=1") {
			ext = ".txt"
		}
		if err := os.WriteFile(filepath.Join(dir, prefix+"-"+name+ext), []byte(body), 0o644); err != nil {
			return err
		}
	}
	return nil
}
