package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/otamq/otamq/ota/fleet"
)

// benchIdle: resident memory per connected, subscribed device, otamq against
// plain mochi. Each server runs as a child process; this process opens the
// connections. otamq's figure includes its registry: the child measures its
// RSS before loading the registry of `conns` devices.
func benchIdle() error {
	n := *conns
	fmt.Printf("== idle connections: %d devices connected (MQTT 3.1.1) and subscribed to their cmd topic\n", n)
	type result struct {
		base, idle, loaded, file, heap, stack int64
	}
	res := map[string]result{}
	var heapTop string
	for _, kind := range []string{"mochi-defaults", "mochi", "otamq"} {
		dir, err := os.MkdirTemp("", "otamq-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		if kind == "otamq" {
			// Registered beforehand, as a real fleet is: the child loads
			// the registry at start, like otamq does.
			if err := seedDevices(dir, n); err != nil {
				return err
			}
		}
		c, err := startChild(kind, dir, "-conns", strconv.Itoa(n))
		if err != nil {
			return err
		}
		mqttAddr, httpAddr, base := c.mqttAddr, c.httpAddr, c.base
		rss := func() (total, file, heap, stack int64) {
			m, err := c.mem(true)
			if err != nil {
				return -1, -1, -1, -1
			}
			return m.rss, m.file, m.heap, m.stack
		}
		idle, _, _, _ := rss()
		cs, err := connectMany(mqttAddr, n, kind == "otamq", "cmd")
		if err != nil {
			_ = c.cmd.Process.Kill()
			c.stop()
			return fmt.Errorf("%s: %v", kind, err)
		}
		if kind == "otamq" {
			// Let the status flush that the connections triggered finish:
			// steady state is what a fleet runs in.
			time.Sleep(3 * fleet.DefaultFlushInterval)
		}
		loaded, file, heap, stack := rss()
		if kind == "otamq" {
			heapTop, err = heapProfile(httpAddr, dir)
			if err != nil {
				fmt.Fprintln(os.Stderr, "heap profile:", err)
			}
		}
		for _, conn := range cs {
			_ = conn.Close()
		}
		c.stop()
		res[kind] = result{base: base, idle: idle, loaded: loaded, file: file, heap: heap, stack: stack}
	}
	kb := func(v int64) float64 { return float64(v) / 1024 }
	m, o, md := res["mochi"], res["otamq"], res["mochi-defaults"]
	mPer := float64(m.loaded-m.base) / float64(n)
	oPer := float64(o.loaded-o.base) / float64(n)
	oReg := float64(o.idle-o.base) / float64(n)
	fmt.Printf("mochi, its default capabilities: RSS %8.0f KiB before, %8.0f KiB with %d connections: %6.2f KiB per connection\n",
		kb(md.base), kb(md.loaded), n, float64(md.loaded-md.base)/float64(n)/1024)
	fmt.Printf("plain mochi, otamq's capabilities: RSS %8.0f KiB before, %8.0f KiB with %d connections: %6.2f KiB per connection\n", kb(m.base), kb(m.loaded), n, mPer/1024)
	fmt.Printf("otamq:       RSS %8.0f KiB before, %8.0f KiB with %d devices registered (%5.2f KiB each),\n", kb(o.base), kb(o.idle), n, oReg/1024)
	fmt.Printf("                                %8.0f KiB with them connected: %6.2f KiB per device in all\n", kb(o.loaded), oPer/1024)
	fmt.Printf("otamq adds %.2f KiB per connected device over plain mochi (target <= 2 KiB)\n", (oPer-mPer)/1024)
	fmt.Printf("  with connections: file-backed pages (binary, bbolt mmap) otamq %.0f KiB, mochi %.0f KiB;\n", kb(o.file), kb(m.file))
	fmt.Printf("  heap in use otamq %.0f KiB, mochi %.0f KiB; goroutine stacks otamq %.0f KiB, mochi %.0f KiB\n",
		kb(o.heap), kb(m.heap), kb(o.stack), kb(m.stack))
	if heapTop != "" {
		fmt.Printf("\notamq in-use heap with %d devices connected (go tool pprof -top -sample_index=inuse_space):\n%s", n, heapTop)
	}
	return nil
}

// connectMany opens n device connections (32 at a time), each subscribed
// to its own topic of kind ("cmd", "ota/blk"); with auth they log in with
// their tokens (otamq).
func connectMany(addr string, n int, auth bool, kind string) ([]net.Conn, error) {
	return connectIDs(addr, n, deviceID, auth, kind)
}

// connectIDs opens n connections, of devices id(0)..id(n-1), like
// connectMany.
func connectIDs(addr string, n int, deviceID func(int) string, auth bool, kind string) ([]net.Conn, error) {
	cs := make([]net.Conn, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				id := deviceID(i)
				user, pass := "", ""
				if auth {
					user, pass = id, token(id)
				}
				c, err := dial(addr, id, user, pass, "dm/"+id+"/"+kind)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				cs[i] = c
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		for _, c := range cs {
			if c != nil {
				_ = c.Close()
			}
		}
		return nil, firstErr
	}
	return cs, nil
}

// heapProfile fetches otamq's heap profile and summarises it with pprof.
func heapProfile(httpAddr, dir string) (string, error) {
	body, err := get("http://" + httpAddr + "/debug/pprof/heap?gc=1")
	if err != nil {
		return "", err
	}
	f := filepath.Join(dir, "heap.pprof")
	if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
		return "", err
	}
	out, err := exec.Command("go", "tool", "pprof", "-top", "-sample_index=inuse_space", "-nodecount=18", f).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%v: %s", err, out)
	}
	return string(out), nil
}
