package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/store"
)

const benchOperatorPassword = "bench operator password"

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// plainMochi is the baseline: mochi-mqtt with no otamq hook, only the one
// it cannot run without (allow-all authentication). With hardened set, it
// runs with the same capabilities as otamq (queue sizes, limits), so that
// the comparison shows what otamq's hooks and registry cost; without, with
// mochi's defaults.
func plainMochi(hardened bool) (*mqtt.Server, string, error) {
	return plainMochiWith(hardened, false)
}

// plainMochiWith is plainMochi, with mochi's inline client (Server.Publish,
// which otamq publishes offers with) when inline is set.
func plainMochiWith(hardened, inline bool) (*mqtt.Server, string, error) {
	opts := &mqtt.Options{Logger: quiet, InlineClient: inline}
	if hardened {
		opts.Capabilities = broker.Capabilities(broker.Options{})
	}
	srv := mqtt.New(opts)
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		return nil, "", err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	if err := srv.AddListener(listeners.NewNet("tcp", l)); err != nil {
		return nil, "", err
	}
	if err := srv.Serve(); err != nil {
		return nil, "", err
	}
	return srv, l.Addr().String(), nil
}

// closeMochi closes a server of plainMochi. mochi's Close lists the
// listener's clients with Clients.GetByListener, which read-locks the
// client map twice and deadlocks when a client disconnects in between
// (mochi-mqtt/server#488; the broker works around it the same way): after
// a benchmark's 10,000 devices have just gone, the child server hung in
// Close. The listener is closed and removed first, so Close lists none.
func closeMochi(srv *mqtt.Server) {
	if l, ok := srv.Listeners.Get("tcp"); ok {
		l.Close(func(string) {})
		srv.Listeners.Delete("tcp")
	}
	_ = srv.Close()
}

func deviceID(i int) string { return fmt.Sprintf("d%05d", i) }

// token is the benchmark's (insecure, predictable) token of a device.
func token(id string) string { return "bench-token-" + id }

// seedDevices registers n devices straight into the store of dataDir, in
// large transactions (the admin API would take longer and is measured
// separately).
func seedDevices(dataDir string, n int) error {
	db, err := store.Open(filepath.Join(dataDir, "otamq.db"), &store.Options{NoSync: true, Logger: quiet})
	if err != nil {
		return err
	}
	defer db.Close()
	reg, err := fleet.Open(db, &fleet.Options{Logger: quiet})
	if err != nil {
		return err
	}
	const batch = 1000
	for start := 0; start < n; start += batch {
		err := db.Update(context.Background(), func(tx store.Tx) error {
			for i := start; i < min(start+batch, n); i++ {
				id := deviceID(i)
				if _, err := reg.Register(tx, fleet.Registration{ID: id, Attributes: fleet.Attributes{Hardware: "esp32-v2", Region: "eu"}},
					fleet.TokenSecret(token(id)), "bench"); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// otamqBroker starts otamq on dataDir (seeded beforehand), without the
// per-operator admin rate limit (the benchmarks measure the admin path
// itself).
func otamqBroker(dataDir string, pprof bool) (*broker.Broker, error) {
	b, err := broker.New(broker.Options{
		DataDir: dataDir, TCPAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Pprof: pprof,
		FirstOperator: "bench", FirstOperatorPassword: benchOperatorPassword, Logger: quiet, AdminRate: -1,
	})
	if err != nil {
		return nil, err
	}
	return b, b.Start()
}

// rssBytes is this process's resident set after a full GC that returns
// free memory to the OS, so two processes are compared on what they hold.
func rssBytes() int64 { return procStatus("VmRSS") }

func procStatus(field string) int64 {
	runtime.GC()
	debug.FreeOSMemory()
	return procStatusNoGC(field)
}

func procStatusNoGC(field string) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return -1
}

// storeRSS is the resident part of this process's mappings of the store
// file (bbolt's mmap), from /proc/self/smaps: the file-backed pages that
// are not the binary's.
func storeRSS() int64 {
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return -1
	}
	var total int64
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			in = len(f) >= 6 && strings.HasSuffix(f[5], ".db")
			continue
		}
		if in && len(f) >= 2 && f[0] == "Rss:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			total += kb * 1024
		}
	}
	return total
}

// runServer is the child side of the idle and block benchmarks: it starts
// one server ("mochi", "mochi-defaults" or "otamq" for the idle part,
// "mochi-inline" (with POST /publish) for the rollout offers;
// "mochi-blocks" or "otamq-blocks", the latter on a data directory holding
// devices, a release and offers, for the block part), prints "ready <mqtt
// addr> <control addr> <http addr> <rss before>", and serves /mem on the
// control address until stdin closes: "rss rss_file heap_inuse stack_inuse
// peak_rss goroutines", read after a GC that returns free memory to the OS.
func runServer(kind, dataDir string) error {
	if *heapRate > 0 {
		runtime.MemProfileRate = *heapRate
	}
	base := rssBytes()
	if kind == "otamq-blocks" && *blkProfDir != "" {
		runtime.SetMutexProfileFraction(10)
		runtime.SetBlockProfileRate(10000)
	}
	var mqttAddr, httpAddr string
	mux := http.NewServeMux()
	switch kind {
	case "mochi", "mochi-defaults", "mochi-blocks", "mochi-inline":
		srv, addr, err := plainMochiWith(kind != "mochi-defaults", kind == "mochi-inline")
		if err != nil {
			return err
		}
		defer closeMochi(srv)
		mqttAddr = addr
		if kind == "mochi-inline" {
			mux.HandleFunc("/publish", publishHandler(srv))
			// the offers benchmark compares its profile with otamq's
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		}
	case "otamq", "otamq-blocks":
		start := otamqBroker
		if kind == "otamq-blocks" {
			start = blocksBroker
		}
		b, err := start(dataDir, true)
		if err != nil {
			return err
		}
		defer b.Shutdown(context.Background())
		mqttAddr, httpAddr = b.Addr(), b.HTTPAddr()
	default:
		return fmt.Errorf("unknown server %q", kind)
	}
	ctl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	mux.HandleFunc("/mem", func(w http.ResponseWriter, r *http.Request) {
		read := procStatus
		if r.URL.Query().Get("nogc") != "" {
			read = procStatusNoGC // what the kernel sees under load
		}
		rss := read("VmRSS")
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		// The GC's heap goal and the live heap of the last cycle come last.
		gc := []metrics.Sample{{Name: "/gc/heap/goal:bytes"}, {Name: "/gc/heap/live:bytes"}}
		metrics.Read(gc)
		fmt.Fprint(w, rss, " ", read("RssFile"), " ", ms.HeapInuse, " ", ms.StackInuse, " ", read("VmHWM"), " ", runtime.NumGoroutine(),
			" ", gc[0].Value.Uint64(), " ", gc[1].Value.Uint64(), " ", storeRSS())
	})
	mux.HandleFunc("/gc", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("collect") != "" {
			runtime.GC()
		}
		fmt.Fprint(w, gcCounters())
	})
	go func() { _ = http.Serve(ctl, mux) }()
	if httpAddr == "" {
		httpAddr = "-"
	}
	fmt.Printf("ready %s %s %s %d\n", mqttAddr, ctl.Addr(), httpAddr, base)
	_, _ = io.Copy(io.Discard, bufio.NewReader(os.Stdin))
	return nil
}

// publishHandler serves POST /publish?n=N[&par=P] of the "mochi-inline"
// server: the request body is published with the inline client, QoS 1,
// to the manifest topic of each of devices 0..N-1, one after the other, or
// split among P goroutines (device i on goroutine i mod P).
func publishHandler(srv *mqtt.Server) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("n"))
		payload, rerr := io.ReadAll(r.Body)
		if err != nil || rerr != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		par := 1
		if v := r.URL.Query().Get("par"); v != "" {
			if par, err = strconv.Atoi(v); err != nil || par < 1 {
				http.Error(w, "bad request", http.StatusBadRequest)
				return
			}
		}
		var wg sync.WaitGroup
		errs := make(chan error, par)
		for g := range par {
			wg.Go(func() {
				for i := g; i < n; i += par {
					if err := srv.Publish("dm/"+deviceID(i)+"/ota/manifest", payload, false, 1); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	}
}

func get(url string) (string, error) {
	c := http.Client{Timeout: 120 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// child is a server run as a child process of the benchmark (this binary
// with -serve), so that its memory is its own.
type child struct {
	cmd                         *exec.Cmd
	stdin                       io.WriteCloser
	mqttAddr, ctlAddr, httpAddr string // httpAddr "-" for mochi
	base                        int64  // RSS before it served anything
}

// startChild runs -serve kind on dataDir with extra flags and waits for
// its "ready" line.
func startChild(kind, dataDir string, extra ...string) (*child, error) {
	cmd := exec.Command(os.Args[0], append([]string{"-serve", kind, "-data", dataDir}, extra...)...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, stdin: stdin}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err == nil {
		_, err = fmt.Sscanf(line, "ready %s %s %s %d", &c.mqttAddr, &c.ctlAddr, &c.httpAddr, &c.base)
	}
	if err != nil {
		_ = cmd.Process.Kill()
		c.stop()
		return nil, fmt.Errorf("%s server said %q: %v", kind, line, err)
	}
	return c, nil
}

// usage is what a process used so far: CPU time, heap allocated,
// collections.
type usage struct {
	cpu    time.Duration
	allocs uint64 // bytes allocated on the heap
	cycles uint64 // collections completed
}

func gcCounters() string {
	m := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(m)
	return fmt.Sprint(m[0].Value.Uint64(), " ", m[1].Value.Uint64())
}

// usage reads what the child used so far; with collect, after a
// collection (Go's own benchmarks collect before each measurement, so that
// one begun by the work before does not land in it).
func (c *child) usage(collect bool) (u usage, err error) {
	path := "/gc"
	if collect {
		path += "?collect=1"
	}
	s, err := get("http://" + c.ctlAddr + path)
	if err == nil {
		_, err = fmt.Sscanf(s, "%d %d", &u.allocs, &u.cycles)
	}
	if err == nil {
		u.cpu, err = c.cpu()
	}
	return u, err
}

// stop ends the child (closing its stdin) and waits for it.
func (c *child) stop() {
	_ = c.stdin.Close()
	_ = c.cmd.Wait()
}

// mem reads the child's /mem: with gc, after a GC that returns free
// memory to the OS; without, as the kernel sees it now.
func (c *child) mem(gc bool) (m blkMem, err error) {
	path := "/mem"
	if !gc {
		path = "/mem?nogc=1"
	}
	s, err := get("http://" + c.ctlAddr + path)
	if err != nil {
		return m, err
	}
	var file int64
	_, err = fmt.Sscan(strings.TrimSpace(s), &m.rss, &file, &m.heap, &m.stack, &m.peak, &m.goroutines, &m.goal, &m.live, &m.store)
	m.file = file
	return m, err
}

// cpu returns the CPU time (user and system) the child has used so far,
// from /proc/PID/stat (fields 14 and 15, in clock ticks of 1/100 s).
func (c *child) cpu() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; the fields after it
	// start after its closing parenthesis.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", c.cmd.Process.Pid, s)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", c.cmd.Process.Pid, len(f))
	}
	var ticks int64
	for _, v := range f[11:13] { // utime, stime: fields 14 and 15 of the line
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

// settle waits at least least, then until the child has been idle (at most
// one 10 ms tick of CPU in 200 ms) or 15 s have passed: what connecting
// devices set off (otamq writes their status every fleet.DefaultFlushInterval
// and publishes their connects) is done before a measurement starts.
func (c *child) settle(least time.Duration) error {
	time.Sleep(least)
	deadline := time.Now().Add(15 * time.Second)
	prev, err := c.cpu()
	if err != nil {
		return err
	}
	for time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		cur, err := c.cpu()
		if err != nil {
			return err
		}
		if cur-prev <= 10*time.Millisecond {
			return nil
		}
		prev = cur
	}
	return nil
}

// cpuTicks are the machine's CPU times from /proc/stat (all CPUs, clock
// ticks): busy, idle (with I/O wait) and stolen by the hypervisor.
type cpuTicks struct{ busy, idle, steal int64 }

// machineTicks reads them; zero where /proc/stat cannot be read.
func machineTicks() cpuTicks {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTicks{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return cpuTicks{}
	}
	var t cpuTicks
	for i, v := range f[1:9] { // user nice system idle iowait irq softirq steal
		n, _ := strconv.ParseInt(v, 10, 64)
		switch i {
		case 3, 4:
			t.idle += n
		case 7:
			t.steal += n
		default:
			t.busy += n
		}
	}
	return t
}

// since is how the machine's CPUs were used from t0 to t: busy, idle and
// stolen, in percent of their time.
func (t cpuTicks) since(t0 cpuTicks) string {
	busy, idle, steal := t.busy-t0.busy, t.idle-t0.idle, t.steal-t0.steal
	total := busy + idle + steal
	if total <= 0 {
		return "busy ?"
	}
	return fmt.Sprintf("busy %d%%, idle %d%%, stolen %d%%", 100*busy/total, 100*idle/total, 100*steal/total)
}
