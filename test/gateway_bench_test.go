package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/otamq/otamq/test/testkit"
)

// BenchmarkGateway: one otamq-gateway and N children (otamq-agent
// processes on UNIX-socket local links) take one 512 KiB image in one
// rollout, with the gateway's cache empty: the gateway fetches it once
// from the broker and serves every child from the cache. Reported: the
// children served at once (N), the bytes per second the children received
// together (N images over the time from the rollout's start until the
// last child booted the update: the gateway's own fetch, the children's
// verification, install and restart included), the broker's
// block bytes for the image, and the gateway process's memory per child
// (RSS with the children connected minus before, and its peak, VmHWM,
// during the downloads, per child). docs/BENCHMARKS.md records a run:
//
//	go test ./test -run '^$' -bench BenchmarkGateway -benchtime 1x
func BenchmarkGateway(b *testing.B) {
	gatewayBinary(b)
	for _, n := range []int{8, 32} {
		b.Run(fmt.Sprintf("children=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				benchGateway(b, n)
			}
		})
	}
}

// procKB reads a "VmRSS"-style field of /proc/pid/status, in KiB.
func procKB(pid int, field string) int {
	s, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(s), "\n") {
		if strings.HasPrefix(l, field+":") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				v, _ := strconv.Atoi(f[1])
				return v
			}
		}
	}
	return 0
}

func benchGateway(b *testing.B, n int) {
	b.StopTimer()
	w := newAgentWorld(b)
	sock := filepath.Join(shortDir(b), "gw.sock")
	gw := w.gateway(b, "gw-bench", w.url(), sock, "--max-children", strconv.Itoa(n))
	w.waitReported(b, 30*time.Second, []string{"gw-bench"}, "1.0.0", "")
	var pid int
	eventually(b, 10*time.Second, func() error {
		c := testkit.ChildProcesses(gw.cmd.Process.Pid)
		if len(c) != 1 {
			return fmt.Errorf("%d gateway processes", len(c))
		}
		pid = c[0]
		return nil
	})
	rss0 := procKB(pid, "VmRSS")
	kids := childIDs("bench-", n)
	procs := make([]*agentProc, n)
	for i, id := range kids {
		procs[i] = w.child(b, id, "gw-bench", sock)
	}
	w.waitReported(b, 120*time.Second, kids, "1.0.0", "")
	rss1 := procKB(pid, "VmRSS")
	before := w.blockBytes(b)

	const size = 512 * 1024
	rel := w.release(simFirmware(b, w.key, "1.1.0", simHealthy, size))
	start := time.Now()
	b.StartTimer()
	w.startRollout(b, "r-bench", rel.ID, kids)
	eventually(b, 300*time.Second, func() error {
		for i, a := range procs {
			if !strings.Contains(a.out.String(), "booted slot 1 version 1.1.0") {
				return fmt.Errorf("%s has not booted the update", kids[i])
			}
		}
		return nil
	})
	b.StopTimer()
	elapsed := time.Since(start)
	hwm := procKB(pid, "VmHWM")
	served := w.blockBytes(b) - before
	b.ReportMetric(float64(n), "children")
	b.ReportMetric(float64(n*size)/elapsed.Seconds()/1024, "KiB/s-to-children")
	b.ReportMetric(float64(served)/size, "broker-bytes/image")
	b.ReportMetric(float64(rss1-rss0)/float64(n), "KiB-RSS/child")
	b.ReportMetric(float64(hwm-rss0)/float64(n), "KiB-peak/child")
	b.Logf("%d children: %d images of %d bytes in %v; broker block bytes %d; gateway RSS %d KiB idle, %d KiB with the children, peak %d KiB",
		n, n, size, elapsed.Round(time.Millisecond), served, rss0, rss1, hwm)
}
