package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The demo's processes: otamq and devsim run for the whole demo (children,
// stopped by cleanup); otactl runs once per command, and as the follower
// of a rollout (watch).

// child is a long-running process of the demo.
type child struct {
	name    string
	logName string // its log file in the demo's directory
	cmd     *exec.Cmd
	done    chan struct{} // closed once it ended; err is set before
	err     error         // what Wait returned
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop sends sig and waits up to grace for the process to end, then
// kills it. A process that ends with a failure (a broker whose shutdown
// failed exits 1) is an error: the demo does not pass over it.
func (c *child) stop(sig os.Signal, grace time.Duration) error {
	if c.exited() {
		return c.failed()
	}
	if err := c.cmd.Process.Signal(sig); err != nil {
		_ = c.cmd.Process.Kill()
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-c.done:
		return c.failed()
	case <-t.C:
	}
	_ = c.cmd.Process.Kill()
	<-c.done
	return fmt.Errorf("%s did not stop within %s of %v: killed", c.name, grace, sig)
}

// failed returns the ended process's failure, with the end of its log.
func (c *child) failed() error {
	if c.err == nil {
		return nil
	}
	return fmt.Errorf("%s ended with %v; see %s", c.name, c.err, c.logName)
}

// spawn starts one of the binaries in --bin.
func (d *demo) spawn(name string, env []string, logName, stdoutName string, args ...string) (*child, error) {
	return d.spawnPath(filepath.Join(d.o.bin, name), name, env, logName, stdoutName, args...)
}

// spawnPath starts path in the demo's directory, standard error (and
// standard output, unless stdoutName names a file of its own) into
// logName. A goroutine owned by the child waits for it.
func (d *demo) spawnPath(path, name string, env []string, logName, stdoutName string, args ...string) (*child, error) {
	logf, err := os.Create(filepath.Join(d.dir, logName))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	out := logf
	if stdoutName != "" {
		f, err := os.Create(filepath.Join(d.dir, stdoutName))
		if err != nil {
			return nil, err
		}
		defer f.Close()
		out = f
	}
	cmd := exec.Command(path, args...)
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = d.dir, env, out, logf
	cmd.SysProcAttr = demoProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, logName: logName, cmd: cmd, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// cmdline prints a command as an operator would type it.
func (d *demo) cmdline(name string, args []string) {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shellQuote(a)
	}
	fmt.Fprintf(d.out, "          $ %s %s\n", name, strings.Join(q, " "))
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:@,%+", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// otactl runs otactl in the demo's directory, printing the command line
// first when show; it returns the standard output. An error carries the
// standard error.
func (d *demo) otactl(ctx context.Context, show bool, args ...string) ([]byte, error) {
	if show {
		d.cmdline("otactl", args)
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, filepath.Join(d.o.bin, "otactl"), args...)
	var stdout, stderr bytes.Buffer
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = d.dir, d.env, &stdout, &stderr
	cmd.SysProcAttr = demoProcAttr()
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if cctx.Err() != nil {
			return nil, fmt.Errorf("otactl %s: no answer within a minute", strings.Join(args, " "))
		}
		err = fmt.Errorf("otactl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
		if derr := d.deadChild(); derr != nil {
			return nil, fmt.Errorf("%w\n(and so: %w)", derr, err)
		}
		return nil, err
	}
	return stdout.Bytes(), nil
}

// watcher is otactl --json rollout watch: each line it prints is a View.
type watcher struct {
	views  chan *demoView // closed when otactl ended; err is set before
	err    error
	stderr bytes.Buffer // written by exec's copying goroutine until Wait returns
	cancel context.CancelFunc
}

func (d *demo) watch(ctx context.Context, id string) (*watcher, error) {
	ctx, cancel := context.WithCancel(ctx)
	w := &watcher{views: make(chan *demoView), cancel: cancel}
	cmd := exec.CommandContext(ctx, filepath.Join(d.o.bin, "otactl"), "--json", "rollout", "watch", id)
	cmd.Dir, cmd.Env, cmd.Stderr = d.dir, d.env, &w.stderr
	cmd.SysProcAttr = demoProcAttr()
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, fmt.Errorf("start otactl rollout watch: %w", err)
	}
	go func() {
		defer close(w.views)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 8<<20)
		for sc.Scan() {
			v := &demoView{}
			if err := json.Unmarshal(sc.Bytes(), v); err != nil {
				continue
			}
			select {
			case w.views <- v:
			case <-ctx.Done():
			}
		}
		w.err = cmd.Wait()
	}()
	return w, nil
}

// close stops the watch and waits for it.
func (w *watcher) close() {
	w.cancel()
	for range w.views {
	}
}
