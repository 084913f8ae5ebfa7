package test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The demo of `make demo` (`devsim demo`), run as make demo runs it: the
// real otamq, otactl and devsim binaries as processes. Ports are chosen
// here (the demo's fixed ones may be taken on a shared machine) and the
// demo's directory goes under the test's TMPDIR.

// demoRun is a devsim demo process and the lines it printed.
type demoRun struct {
	cmd    *exec.Cmd
	tmp    string // its TMPDIR
	mqtt   string
	stderr *syncBuffer
	mu     sync.Mutex // guards lines
	lines  []string
	// each line, as it comes; closed at the end of its output
	next chan string
	done chan struct{} // closed once the process ended
	err  error         // what Wait returned, set before done closes
}

func startDemo(t *testing.T, args ...string) *demoRun {
	t.Helper()
	devsim := binary(t, "devsim")
	binary(t, "otamq")
	binary(t, "otactl")
	tmp, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r := &demoRun{tmp: tmp, mqtt: freePort(t), stderr: &syncBuffer{}, next: make(chan string, 1024), done: make(chan struct{})}
	args = append([]string{"demo", "--bin", filepath.Dir(devsim), "--mqtt-addr", r.mqtt, "--http-addr", freePort(t),
		"--timeout", "10m"}, args...)
	r.cmd = exec.Command(devsim, args...)
	r.cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	r.cmd.Stderr = r.stderr
	out, err := r.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(r.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			r.mu.Lock()
			r.lines = append(r.lines, sc.Text())
			r.mu.Unlock()
			select {
			case r.next <- sc.Text():
			default: // nobody follows: the lines are kept anyway
			}
		}
		close(r.next)
		r.err = r.cmd.Wait()
	}()
	t.Cleanup(func() {
		select {
		case <-r.done:
		default:
			_ = r.cmd.Process.Kill()
			<-r.done
		}
		if t.Failed() {
			t.Logf("devsim demo output:\n%s\nstandard error:\n%s", r.output(), r.stderr.String())
		}
	})
	return r
}

func (r *demoRun) output() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.lines, "\n")
}

// wait waits for the demo to end and returns its exit status.
func (r *demoRun) wait(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(within):
		t.Fatalf("devsim demo still running after %s", within)
	}
	var ee *exec.ExitError
	if errors.As(r.err, &ee) {
		return ee.ExitCode()
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	return 0
}

var demoDirLine = regexp.MustCompile(`^  files: (\S+) `)

// dir is the demo's directory, as it printed it.
func (r *demoRun) dir(t *testing.T) string {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, l := range r.lines {
		if m := demoDirLine.FindStringSubmatch(l); m != nil {
			if !strings.HasPrefix(m[1], r.tmp+string(filepath.Separator)) {
				t.Fatalf("the demo's directory %s is not under its TMPDIR %s", m[1], r.tmp)
			}
			return m[1]
		}
	}
	t.Fatal("the demo printed no directory")
	return ""
}

// processesIn lists the processes whose working directory is dir or
// under it (from /proc), as "PID command line".
func processesIn(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatalf("list processes: %v", err)
	}
	var out []string
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if err != nil {
			continue // ended, or a zombie
		}
		cwd = strings.TrimSuffix(cwd, " (deleted)")
		if cwd != dir && !strings.HasPrefix(cwd, dir+"/") {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(cmdline) == 0 {
			// ended between the two reads (a make or go subprocess of
			// the demo's, say), or a zombie: no command line
			continue
		}
		out = append(out, e.Name()+" "+strings.ReplaceAll(string(cmdline), "\x00", " "))
	}
	return out
}

// checkDemoGone: nothing of the demo is left: no process in its
// directory, the directory itself, the broker's port.
func checkDemoGone(t *testing.T, r *demoRun, dir string) {
	t.Helper()
	if ps := processesIn(t, dir); len(ps) > 0 {
		t.Errorf("processes left behind by the demo: %v", ps)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the demo's directory %s is still there (%v)", dir, err)
	}
	l, err := net.Listen("tcp", r.mqtt)
	if err != nil {
		t.Errorf("the demo's broker port %s is still taken: %v", r.mqtt, err)
	} else {
		l.Close()
	}
}

// demoWatch is otactl --json rollout watch, run as the demo tells an
// operator to.
type demoWatch struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	errb *syncBuffer
	done chan struct{}
}

func startDemoWatch(t *testing.T, env []string, id string) *demoWatch {
	t.Helper()
	w := &demoWatch{out: &syncBuffer{}, errb: &syncBuffer{}, done: make(chan struct{})}
	w.cmd = exec.Command(binary(t, "otactl"), "--json", "rollout", "watch", "--wait", id)
	w.cmd.Env = append(os.Environ(), env...)
	w.cmd.Stdout, w.cmd.Stderr = w.out, w.errb
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = w.cmd.Wait()
		close(w.done)
	}()
	t.Cleanup(func() {
		select {
		case <-w.done:
		default:
			_ = w.cmd.Process.Kill()
			<-w.done
		}
	})
	return w
}

// views waits for the watch to end by itself (the rollout finished) and
// returns the Views it printed.
func (w *demoWatch) views(t *testing.T, id string) []roView {
	t.Helper()
	select {
	case <-w.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("otactl rollout watch %s still running after the demo ended; standard error:\n%s", id, w.errb.String())
	}
	if !w.cmd.ProcessState.Success() {
		t.Errorf("otactl rollout watch %s: %v\n%s", id, w.cmd.ProcessState, w.errb.String())
	}
	var vs []roView
	for line := range strings.Lines(w.out.String()) {
		var v roView
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Fatalf("otactl --json rollout watch %s printed %q: %v", id, line, err)
		}
		vs = append(vs, v)
	}
	if len(vs) == 0 {
		t.Fatalf("otactl rollout watch %s printed nothing; standard error:\n%s", id, w.errb.String())
	}
	return vs
}

var demoExport = regexp.MustCompile(`^\s+export (OTAMQ_URL=\S+) (OTAMQ_USER=\S+) (OTAMQ_PASSWORD=\S+)$`)

// TestMakeDemo runs the whole demo: 200 devices, the bad release paused
// at the canary with the health threshold's reason and nothing offered
// outside it, the abort, the fixed release on every device. Its
// rollouts are followed from outside with the watch commands it prints
// first, as an operator in another terminal would. At the end nothing it
// started is left: no process, no directory, no port.
func TestMakeDemo(t *testing.T) {
	t.Parallel()
	r := startDemo(t)
	var env []string
	var bad, fixed *demoWatch
	var running []string
	for line := range r.next {
		switch {
		case demoExport.MatchString(line):
			env = demoExport.FindStringSubmatch(line)[1:]
		case strings.Contains(line, "] broker up:"):
			// As the demo tells an operator: both watches at once,
			// before either rollout exists (--wait).
			bad = startDemoWatch(t, env, "demo-bad")
			fixed = startDemoWatch(t, env, "demo-fixed")
		case strings.Contains(line, "] rollout created: demo-bad"):
			if env == nil {
				t.Fatal("the demo created its rollout before it printed how to watch it")
			}
		case strings.Contains(line, "] rollout started: demo-bad"):
			running = processesIn(t, r.dir(t))
		}
	}
	if code := r.wait(t, 10*time.Minute); code != 0 {
		t.Fatalf("devsim demo exited with %d: %s", code, r.stderr.String())
	}
	out := r.output()

	// The stages, in order.
	stages := []string{
		`\] broker up: otamq on mqtt://` + regexp.QuoteMeta(r.mqtt),
		`\] 200 devices registered: groups canary 10, internal 20, pilot 30, field 140; hardware esp32-v2 150, esp32-v3 50`,
		`\] devices online 200/200, firmware 1\.0\.0`,
		`\] release uploaded: 1\.1\.0@[0-9a-f]{8}`,
		`\$ otactl rollout create demo-bad\.yaml`,
		`\] rollout created: demo-bad, a draft`,
		`\$ otactl rollout start demo-bad\n`,
		`\] rollout started: demo-bad`,
		`\] PAUSED at canary: wave canary: health failures \d+% \(\d+ of \d+\) passed the pause threshold 20%`,
		`\] canary results: rolled_back 10; no device outside the canary was offered`,
		`\$ otactl --json rollout abort demo-bad --reason '1\.1\.0 fails its health check on the canary'`,
		`\] rollout demo-bad aborted: 190 devices not yet offered cancelled in it`,
		`\] fixed release uploaded: 1\.1\.1@[0-9a-f]{8}`,
		`\] new rollout created: demo-fixed`,
		`\$ otactl rollout start demo-fixed\n`,
		`\] new rollout started: demo-fixed`,
		`\] {3}demo-fixed wave 100% passed: \d+/\d+ succeeded`,
		`\] rollout demo-fixed completed: 200/200 succeeded`,
		`\] completed: 200/200 devices on 1\.1\.1`,
		`devsim: 200 devices, versions 1\.1\.1 200; 200 commits, 10 rollbacks`,
		`\] demo done in \d+\.\ds`,
	}
	rest := out
	for _, s := range stages {
		loc := regexp.MustCompile(s).FindStringIndex(rest)
		if loc == nil {
			t.Fatalf("the demo's output lacks %q after what came before", s)
		}
		rest = rest[loc[1]:]
	}
	// Each named wave of the fixed release started and passed before the next.
	for _, w := range []string{"canary", "internal", "pilot", "25%", "100%"} {
		if !strings.Contains(out, "demo-fixed wave "+w+" passed: ") {
			t.Errorf("wave %s of demo-fixed did not pass", w)
		}
	}

	// The watch commands it printed work, from outside.
	if bad == nil || fixed == nil {
		t.Fatal("the demo did not start both rollouts")
	}
	vs := bad.views(t, "demo-bad")
	paused := false
	for _, v := range vs {
		if v.State == "paused" {
			paused = true
			if v.PausedBy != "threshold" || !strings.Contains(v.Reason, "wave canary: health failures") {
				t.Errorf("demo-bad paused by %s: %s", v.PausedBy, v.Reason)
			}
			for _, w := range v.Waves[1:] {
				if w.Counts["eligible"] != w.Devices {
					t.Errorf("demo-bad paused with wave %s offered: %v", w.Name, nonzero(w.Counts))
				}
			}
		}
	}
	if last := vs[len(vs)-1]; !paused || last.State != "aborted" || last.Counts["rolled_back"] != 10 {
		t.Errorf("watch demo-bad: paused %v, at the end %s with %v", paused, last.State, nonzero(last.Counts))
	}
	vs = fixed.views(t, "demo-fixed")
	if last := vs[len(vs)-1]; last.State != "completed" || last.Counts["succeeded"] != 200 {
		t.Errorf("watch demo-fixed ended on %s with %v", last.State, nonzero(last.Counts))
	}
	// Off a terminal the demo did not wait for Enter.
	if strings.Contains(out, "press Enter") || strings.Contains(out, "waiting for Enter") {
		t.Error("the demo waited for Enter without a terminal")
	}

	// While it ran, its broker and devsim were processes in its directory
	// (so that finding none now means something); now nothing is left.
	dir := r.dir(t)
	var names []string
	for _, p := range running {
		names = append(names, strings.Fields(p)[1])
	}
	if !slicesContainSuffix(names, "/otamq") || !slicesContainSuffix(names, "/devsim") {
		t.Errorf("processes in the demo's directory while it ran: %v; want otamq and devsim", running)
	}
	checkDemoGone(t, r, dir)
}

func slicesContainSuffix(s []string, suffix string) bool {
	for _, x := range s {
		if strings.HasSuffix(x, suffix) {
			return true
		}
	}
	return false
}

// TestMakeDemoInterrupted: a Ctrl-C (SIGINT to the demo alone, as the
// terminal sends it to the foreground process, the demo's children being
// in process groups of their own) in the middle of the rollout stops the
// demo with status 130 and leaves nothing behind.
func TestMakeDemoInterrupted(t *testing.T) {
	t.Parallel()
	r := startDemo(t, "--devices", "40")
	var running []string
	for line := range r.next {
		if strings.Contains(line, "] rollout started: demo-bad") {
			running = processesIn(t, r.dir(t))
			if err := r.cmd.Process.Signal(syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
		}
	}
	code := r.wait(t, 2*time.Minute)
	if running == nil {
		t.Fatal("the demo ended before its rollout started")
	}
	if len(running) < 2 {
		t.Errorf("processes in the demo's directory while it ran: %v; want otamq and devsim", running)
	}
	if code != 130 || !strings.Contains(r.stderr.String(), "interrupted after") {
		t.Errorf("exit status %d, standard error %q; want 130 and the interruption", code, r.stderr.String())
	}
	if !strings.Contains(r.output(), "] stopping devsim and the broker") {
		t.Error("the demo did not say it stopped what it started")
	}
	checkDemoGone(t, r, r.dir(t))
}

// TestMakeDemoTimeout: past --timeout the demo fails with status 1 and
// says so, and leaves nothing behind.
func TestMakeDemoTimeout(t *testing.T) {
	t.Parallel()
	r := startDemo(t, "--devices", "20", "--timeout", "3s")
	for range r.next {
	}
	if code := r.wait(t, 2*time.Minute); code != 1 || !strings.Contains(r.stderr.String(), "not done within --timeout 3s") {
		t.Errorf("exit status %d, standard error %q; want 1 and the timeout", code, r.stderr.String())
	}
	checkDemoGone(t, r, r.dir(t))
}

// TestMakeDemoBrokerDies: when the broker ends in the middle (SIGKILL),
// the demo fails with status 1 naming it and showing the end of its log,
// and stops the rest.
func TestMakeDemoBrokerDies(t *testing.T) {
	t.Parallel()
	r := startDemo(t, "--devices", "20")
	killed := false
	for line := range r.next {
		if killed || !strings.Contains(line, "] rollout started: demo-bad") {
			continue
		}
		for _, p := range processesIn(t, r.dir(t)) {
			f := strings.Fields(p)
			if len(f) > 1 && strings.HasSuffix(f[1], "/otamq") {
				var pid int
				if _, err := fmt.Sscan(f[0], &pid); err != nil {
					t.Fatal(err)
				}
				if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				killed = true
			}
		}
		if !killed {
			t.Fatal("no otamq process in the demo's directory")
		}
	}
	code := r.wait(t, 2*time.Minute)
	if !killed {
		t.Fatal("the demo ended before its rollout started")
	}
	if e := r.stderr.String(); code != 1 || !strings.Contains(e, "otamq ended unexpectedly (signal: killed); the end of otamq.log:") ||
		!strings.Contains(e, "otamq started") {
		t.Errorf("exit status %d, standard error %q; want 1, the broker's end and its log", code, e)
	}
	checkDemoGone(t, r, r.dir(t))
}

// TestMakeDemoRefuses: a taken port and a command line it cannot run are
// refused before anything starts, with the reason; nothing is created.
func TestMakeDemoRefuses(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().String()
	devsim := binary(t, "devsim")
	binary(t, "otamq")
	binary(t, "otactl")
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--mqtt-addr", taken}, 1, taken + " is not free"},
		{[]string{"--http-addr", taken}, 1, taken + " is not free"},
		{[]string{"--devices", "19"}, 2, "--devices 19: want at least 20"},
		{[]string{"--bin", t.TempDir()}, 2, "otamq not found in"},
		{[]string{"extra"}, 2, `unexpected argument "extra"`},
	} {
		tmp := t.TempDir()
		args := append([]string{"demo", "--bin", filepath.Dir(devsim), "--mqtt-addr", freePort(t), "--http-addr", freePort(t)}, c.args...)
		out, errOut, code := runBinary(t, devsim, []string{"TMPDIR=" + tmp}, args...)
		if code != c.code || !strings.Contains(errOut, c.want) {
			t.Errorf("devsim %v: exit %d, %q; want %d and %q", args, code, errOut, c.code, c.want)
		}
		if out != "" {
			t.Errorf("devsim %v printed %q", args, out)
		}
		if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
			t.Errorf("devsim %v left %d files in its TMPDIR", args, len(ents))
		}
	}
}

// TestMakeDemoTerminal: on a terminal (tmux) the demo waits for Enter
// before its first rollout starts, so that its watch can be started; a
// Ctrl-C typed on the terminal (SIGINT to the whole foreground process
// group) then stops it with status 130, and nothing is left.
func TestMakeDemoTerminal(t *testing.T) {
	t.Parallel()
	tmux := needCommand(t, "tmux")
	devsim := binary(t, "devsim")
	binary(t, "otamq")
	binary(t, "otactl")
	tmp, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	sock := fmt.Sprintf("otamq-demo-test-%d", time.Now().UnixNano())
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(tmux, append([]string{"-L", sock}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("tmux %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	t.Cleanup(func() { _ = exec.Command(tmux, "-L", sock, "kill-server").Run() })
	mqtt := freePort(t)
	run("new-session", "-d", "-s", "demo", "-x", "250", "-y", "50", "-e", "TMPDIR="+tmp,
		fmt.Sprintf("%s demo --bin %s --mqtt-addr %s --http-addr %s --devices 20 --wait 10m; echo EXIT=$?; sleep 120",
			devsim, filepath.Dir(devsim), mqtt, freePort(t)))
	screen := func(want string) {
		t.Helper()
		eventually(t, 2*time.Minute, func() error {
			if s := run("capture-pane", "-p", "-t", "demo"); !strings.Contains(s, want) {
				return fmt.Errorf("the screen lacks %q:\n%s", want, s)
			}
			return nil
		})
	}
	screen("press Enter here to start the rollout")
	if s := run("capture-pane", "-p", "-t", "demo"); strings.Contains(s, "rollout started") {
		t.Fatalf("the rollout started before Enter:\n%s", s)
	}
	running := processesIn(t, tmp)
	if len(running) < 2 {
		t.Errorf("processes in the demo's directory while it waits: %v; want otamq and devsim", running)
	}
	run("send-keys", "-t", "demo", "Enter")
	screen("] rollout started: demo-bad")
	run("send-keys", "-t", "demo", "C-c")
	screen("EXIT=130")
	if ps := processesIn(t, tmp); len(ps) > 0 {
		t.Errorf("processes left behind by the demo: %v", ps)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("the demo left %d files in its TMPDIR", len(ents))
	}
	l, err := net.Listen("tcp", mqtt)
	if err != nil {
		t.Errorf("the demo's broker port %s is still taken: %v", mqtt, err)
	} else {
		l.Close()
	}
}
