package main

import (
	"os"
	"runtime"
	"strconv"
	"strings"
)

// measure returns the process's memory per device, after a garbage
// collection: heap in use, goroutine stacks, resident set.
func measure(n int) *memory {
	if n == 0 {
		return nil
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m := &memory{Heap: ms.HeapInuse / uint64(n), Stack: ms.StackInuse / uint64(n),
		Goroutines: float64(runtime.NumGoroutine()) / float64(n)}
	if rss := residentBytes(); rss > 0 {
		m.RSS = rss / uint64(n)
	}
	return m
}

// residentBytes is the process's resident set size (Linux), or 0.
func residentBytes() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return 0
	}
	return pages * uint64(os.Getpagesize())
}
