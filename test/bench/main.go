// Command bench measures otamq against baselines measured in the same run:
// plain mochi-mqtt with no otamq hooks, raw loopback TCP, and a single-fsync
// bbolt write. It prints every measurement and the ratios; docs/BENCHMARKS.md
// records results and how to read them.
//
//	go run ./test/bench                 # everything (make bench)
//	go run ./test/bench -only heartbeat # one of heartbeat, admin, blocks, downloads, idle, audit, import, api,
//	                                    # rollout-plan, rollout-events, rollout-memory, rollout-offers,
//	                                    # rollout-heartbeat, rollout-idle
//	go run ./test/bench -only rollout   # every rollout-* part
//
// The idle-connection benchmark and the memory part of the block benchmark
// run each server as a child process (this binary with -serve) so that its
// RSS is its own.
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/otamq/otamq/internal/stackstart"
)

var (
	only      = flag.String("only", "", "run one benchmark: heartbeat, admin, blocks, downloads, idle, audit, import, api, rollout-plan, rollout-events, rollout-memory, rollout-offers, rollout-heartbeat or rollout-idle; rollout: every rollout-* one")
	serve     = flag.String("serve", "", "internal: run a server (mochi or otamq for the idle benchmark, mochi-blocks or otamq-blocks for the block benchmark, mochi-inline for the rollout offers)")
	serveData = flag.String("data", "", "internal: data directory of -serve otamq")
	heapRate  = flag.Int("heap-rate", 0, "internal: runtime.MemProfileRate of a -serve server (0: Go's default)")
	conns     = flag.Int("conns", 10000, "idle benchmark: connected, subscribed devices")
	hbConns   = flag.Int("hb-conns", 50, "heartbeat benchmark: publishing connections")
	hbPer     = flag.Int("hb-per-conn", 20000, "heartbeat benchmark: heartbeats per connection")
	hbOnly    = flag.String("hb-only", "", "heartbeat benchmark: measure only raw, mochi or otamq (for profiling)")
	rounds    = flag.Int("rounds", 5, "heartbeat benchmark: rounds (the median is reported)")
	adminN    = flag.Int("admin-writes", 2000, "admin benchmark: writes per variant")
	cpuProf   = flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")

	blkMiB       = flag.Int("blk-mib", 128, "block benchmark: MiB each configuration downloads per server and round (at least one window per device)")
	blkRounds    = flag.Int("blk-rounds", 5, "block benchmark: rounds per configuration (the median is reported)")
	blkMemSecs   = flag.Int("blk-mem-secs", 6, "block benchmark: seconds of continuous download for the memory figures (0: skip them)")
	blkMemSize   = flag.Int("blk-mem-size", 32*1024, "block benchmark: block size of the memory part")
	blkMemWindow = flag.Int("blk-mem-window", 8, "block benchmark: window of the memory part")
	blkProfDir   = flag.String("blk-profile-dir", "", "block benchmark: write otamq's goroutine, heap, mutex and block profiles under load to this directory")
)

func main() {
	flag.Parse()
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})))
	if *serve != "" {
		if strings.HasPrefix(*serve, "otamq") {
			stackstart.Ensure() // as cmd/otamq runs
		}
		if err := runServer(*serve, *serveData); err != nil {
			fmt.Fprintln(os.Stderr, "bench server:", err)
			os.Exit(1)
		}
		return
	}
	if *cpuProf != "" {
		f, err := os.Create(*cpuProf)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		_ = pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	fmt.Printf("otamq benchmarks, %s, %s/%s, %d CPUs, %s\n", time.Now().UTC().Format(time.RFC3339), runtime.GOOS, runtime.GOARCH,
		runtime.NumCPU(), runtime.Version())
	fmt.Printf("command: go run ./test/bench %s\n\n", strings.Join(os.Args[1:], " "))
	run := func(name string, f func() error) {
		// -only rollout runs every rollout-* part.
		if *only != "" && *only != name && !(*only == "rollout" && strings.HasPrefix(name, "rollout-")) {
			return
		}
		if err := f(); err != nil {
			pprof.StopCPUProfile()
			fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
			os.Exit(1)
		}
		fmt.Println()
	}
	run("heartbeat", benchHeartbeat)
	run("admin", benchAdmin)
	run("blocks", benchBlocks)
	run("downloads", benchDownloads)
	run("idle", benchIdle)
	run("audit", benchAudit)
	run("import", benchImport)
	run("rollout-plan", benchRolloutPlan)
	run("rollout-events", benchRolloutEvents)
	run("rollout-memory", benchRolloutMemory)
	run("rollout-offers", benchRolloutOffers)
	run("rollout-heartbeat", benchRolloutHeartbeat)
	run("rollout-idle", benchRolloutIdle)
	run("api", benchAPIEvents)
}
