// Package stackstart turns off the Go runtime's adaptive initial goroutine
// stack size for the broker's process.
//
// Since Go 1.19 the runtime starts new goroutines with the average stack
// size it saw at the last garbage collection. A broker that a whole fleet
// reconnects to right after a restart may be collected while thousands of
// connection goroutines are deep in their handshake; from then on new
// connections' goroutines start with 16 KiB stacks, most of which they
// never use and which are not shrunk while they use more than a quarter.
// Measured (docs/BENCHMARKS.md, "Idle memory with a rollout running"):
// 3 to 7 MiB more goroutine stacks for 10,000 connections after such a
// restart, none with the setting off. Goroutines then start at the
// runtime's fixed minimum and grow as they need, as before Go 1.19.
//
// The setting is read by the runtime once, at start, from GODEBUG, and
// cannot be set by //go:debug: Ensure starts the program again with it.
package stackstart

import (
	"os"
	"strings"
	"syscall"
)

// Setting is the GODEBUG setting Ensure adds.
const Setting = "adaptivestackstart=0"

// Ensure returns at once if GODEBUG already sets adaptivestackstart (to
// anything: an operator's explicit choice stands) or if the program cannot
// be started again; otherwise it replaces the process (same PID, same
// arguments, file descriptors and environment) with the program itself,
// GODEBUG extended by Setting, and does not return. Call it first in main.
func Ensure() {
	cur := os.Getenv("GODEBUG")
	for _, kv := range strings.Split(cur, ",") {
		if strings.HasPrefix(strings.TrimSpace(kv), "adaptivestackstart=") {
			return
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return
	}
	v := Setting
	if cur != "" {
		v = cur + "," + Setting
	}
	env := append(withoutGODEBUG(os.Environ()), "GODEBUG="+v)
	_ = syscall.Exec(exe, os.Args, env) // returns only on failure: run on as is
}

func withoutGODEBUG(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "GODEBUG=") {
			out = append(out, kv)
		}
	}
	return out
}
