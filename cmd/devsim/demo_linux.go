package main

import "syscall"

// demoProcAttr puts each process the demo starts in a process group of
// its own, so that a Ctrl-C on the terminal reaches the demo alone and it
// stops them in order (devsim, then the broker); and has the kernel send
// it SIGTERM if the demo dies without stopping it (the thread that
// started it ends: see runDemo's LockOSThread).
func demoProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
