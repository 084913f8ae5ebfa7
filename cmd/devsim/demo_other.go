//go:build !linux

package main

import "syscall"

// demoProcAttr: elsewhere than on Linux the demo's processes stay in its
// process group (a Ctrl-C reaches them too) and it stops what is left.
func demoProcAttr() *syscall.SysProcAttr { return nil }
