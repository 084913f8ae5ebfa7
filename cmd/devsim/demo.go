package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/charmbracelet/x/term"
)

// devsim demo: what `make demo` runs. The real broker (otamq) on a fresh
// data directory, 200 devices registered with otactl and simulated by
// devsim (this binary, as a child process), and two rollouts driven with
// otactl exactly as an operator types them: a release whose canary fails
// its health check pauses at the canary; the operator aborts it and rolls
// out the fixed release, which the whole fleet takes. Every command it
// runs is printed; every process it starts it stops again, also on Ctrl-C.

const demoUsage = `Usage: devsim demo [flags]

Runs the demonstration of make demo: starts otamq on a fresh data
directory, registers simulated devices with otactl and runs them with
devsim, uploads a signed release whose canary devices fail its health
check, and rolls it out in waves (canary, internal, pilot, then 25% and
100% of the rest). The rollout pauses at the canary; the demo aborts it and
rolls out the fixed release to every device. It prints each command it
runs and a line per stage, then stops everything it started.

otamq and otactl are taken from --bin (default: devsim's own directory).

Flags:
`

// Demo defaults: ports one above make run's, so both can run at once.
const (
	demoMQTTAddr = "127.0.0.1:1884"
	demoHTTPAddr = "127.0.0.1:9101"
	demoDevices  = 200
	demoTimeout  = 3 * time.Minute
	demoWait     = 30 * time.Second
	// The rollouts' IDs, fixed so that the watch commands can be printed
	// before anything happens.
	demoBadID   = "demo-bad"
	demoFixedID = "demo-fixed"
	demoBad     = "1.1.0"
	demoFixed   = "1.1.1"
	demoFactory = "1.0.0"
	demoImage   = 64 * 1024
	// demoWaves are the waves of rolloutSpec.
	demoWaves = "canary, internal, pilot, 25% and 100% of field"
	// exitInterrupted is the exit status after SIGINT, SIGTERM, SIGHUP or
	// SIGPIPE.
	exitInterrupted = 130
)

// demoOptions are the demo's command line.
type demoOptions struct {
	bin                string
	mqttAddr, httpAddr string
	devices            int
	keep               bool
	timeout            time.Duration
	// wait is how long the demo waits, on a terminal, for Enter before it
	// starts the first rollout, so that its watch can be started.
	wait time.Duration
}

func runDemo(args []string, stdout, stderr io.Writer) int {
	o := demoOptions{}
	fs := flag.NewFlagSet("devsim demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, demoUsage)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.bin, "bin", "", "directory of otamq and otactl (default: devsim's own)")
	fs.StringVar(&o.mqttAddr, "mqtt-addr", demoMQTTAddr, "the broker's MQTT listener")
	fs.StringVar(&o.httpAddr, "http-addr", demoHTTPAddr, "the broker's metrics and health listener")
	fs.IntVar(&o.devices, "devices", demoDevices, "simulated devices (at least 20)")
	fs.BoolVar(&o.keep, "keep", false, "keep the demo's directory (data, keys, releases, logs) at the end")
	fs.DurationVar(&o.timeout, "timeout", demoTimeout, "give up after this long (a wait for Enter not included)")
	fs.DurationVar(&o.wait, "wait", demoWait, "on a terminal: how long to wait for Enter before the first rollout starts, "+
		"time to start its watch (0: do not wait)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	var problems []string
	if fs.NArg() > 0 {
		problems = append(problems, fmt.Sprintf("unexpected argument %q", fs.Arg(0)))
	}
	if o.devices < 20 {
		problems = append(problems, fmt.Sprintf("--devices %d: want at least 20 (the canary is 5%% of them)", o.devices))
	}
	if o.timeout <= 0 {
		problems = append(problems, "--timeout: want a positive duration")
	}
	if o.wait < 0 {
		problems = append(problems, "--wait: want 0 or a positive duration")
	}
	if o.bin == "" {
		exe, err := os.Executable()
		if err != nil {
			problems = append(problems, fmt.Sprintf("find devsim's directory: %v (give --bin)", err))
		}
		o.bin = filepath.Dir(exe)
	}
	for _, name := range []string{"otamq", "otactl"} {
		if _, err := os.Stat(filepath.Join(o.bin, name)); err != nil {
			problems = append(problems, fmt.Sprintf("%s not found in %s (make build builds it; --bin says where it is)", name, o.bin))
		}
	}
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintln(stderr, "devsim demo:", p)
		}
		return exitUsage
	}

	// Children are started from this goroutine only, locked to its thread:
	// on Linux they get SIGTERM when the thread that started them ends
	// (Pdeathsig), which then is only when devsim itself dies.
	runtime.LockOSThread()
	// SIGPIPE too: output into a pipe that closed (make demo | head)
	// stops the demo the same way, rather than killing it before its
	// cleanup.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE)
	defer stop()
	d := &demo{o: o, out: stdout, start: time.Now(), interactive: o.wait > 0 && term.IsTerminal(os.Stdin.Fd())}
	err := d.run(ctx)
	if err == nil {
		total := time.Since(d.start)
		if d.waited > 0 {
			d.stage("demo done in %.1fs (%.1fs of it waiting for Enter)", total.Seconds(), d.waited.Seconds())
		} else {
			d.stage("demo done in %.1fs", total.Seconds())
		}
		return exitOK
	}
	if ctx.Err() != nil {
		fmt.Fprintf(stderr, "devsim demo: interrupted after %.1fs; everything it started is stopped\n", time.Since(d.start).Seconds())
		return exitInterrupted
	}
	fmt.Fprintf(stderr, "devsim demo: FAILED after %.1fs: %v\n", time.Since(d.start).Seconds(), err)
	return exitError
}

// demo is one run of the demonstration.
type demo struct {
	o        demoOptions
	out      io.Writer
	start    time.Time
	dir      string   // the demo's directory: data, keys, images, specs, logs
	env      []string // the children's environment
	password string   // the first operator's
	url      string
	broker   *child
	sim      *child
	waves    map[string]string // last state printed per wave
	// interactive: standard input is a terminal, and the demo waits for
	// Enter (at most --wait) before the first rollout starts.
	interactive bool
	waited      time.Duration // how long it waited
	// timeout ends the demo at timeoutAt (--timeout after the start, plus
	// the wait for Enter).
	timeout   *time.Timer
	timeoutAt time.Time
}

// run is the whole demo; whatever it started is stopped before it
// returns, whether it succeeded, failed or was interrupted.
func (d *demo) run(ctx context.Context) (err error) {
	for _, a := range []string{d.o.mqttAddr, d.o.httpAddr} {
		if err := portFree(a); err != nil {
			return err
		}
	}
	if d.dir, err = os.MkdirTemp("", "otamq-demo-"); err != nil {
		return err
	}
	defer func() { err = errors.Join(err, d.cleanup()) }()
	pw := make([]byte, 18)
	if _, err := rand.Read(pw); err != nil {
		return err
	}
	d.password = base64.RawURLEncoding.EncodeToString(pw)
	d.url = "mqtt://" + d.o.mqttAddr
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OTAMQ_") {
			d.env = append(d.env, kv)
		}
	}
	d.env = append(d.env, "OTAMQ_URL="+d.url, "OTAMQ_USER=operator", "OTAMQ_PASSWORD="+d.password)
	d.header()

	// --timeout, held while the demo waits for Enter (waitEnter).
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	d.timeoutAt = time.Now().Add(d.o.timeout)
	d.timeout = time.AfterFunc(d.o.timeout, func() { cancel(errDemoTimeout) })
	defer d.timeout.Stop()
	if err := d.steps(ctx); err != nil {
		if context.Cause(ctx) == errDemoTimeout {
			return fmt.Errorf("not done within --timeout %s", d.o.timeout)
		}
		return err
	}
	return nil
}

var errDemoTimeout = errors.New("demo timed out")

func (d *demo) header() {
	otactl := filepath.Join(d.o.bin, "otactl")
	if wd, err := os.Getwd(); err == nil {
		if rel, err := filepath.Rel(wd, otactl); err == nil && !strings.HasPrefix(rel, "..") {
			otactl = "./" + rel
		}
	}
	n := d.o.devices
	fmt.Fprintf(d.out, `otamq demo: a broker, %d simulated devices, release %s whose canary fails its health check, then the fix %s
  files: %s (removed at the end unless --keep)

  Watch the rollouts from another terminal, in this directory:
    export OTAMQ_URL=%s OTAMQ_USER=operator OTAMQ_PASSWORD=%s
    %s rollout watch --wait %-10s  # release %s, until it is aborted
    %s rollout watch --wait %-10s  # release %s, until it completes

  The commands below run in the files' directory with that environment
  (otactl and devsim from %s).

`, n, demoBad, demoFixed, d.dir, d.url, d.password, otactl, demoBadID, demoBad, otactl, demoFixedID, demoFixed,
		d.o.bin)
}

// stage prints a line of progress, with the time since the start.
func (d *demo) stage(format string, args ...any) {
	fmt.Fprintf(d.out, "[%5.1fs] %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, args...))
}

// note prints lines under a stage, indented.
func (d *demo) note(text string) {
	for line := range strings.SplitSeq(strings.TrimRight(text, "\n"), "\n") {
		fmt.Fprintf(d.out, "          %s\n", line)
	}
}

// steps are the demo proper.
func (d *demo) steps(ctx context.Context) error {
	if err := d.startBroker(ctx); err != nil {
		return err
	}
	if _, err := d.otactl(ctx, true, "keygen", "--out", ".", "--name", "release"); err != nil {
		return err
	}
	if _, err := d.otactl(ctx, true, "key", "add", "release.pub"); err != nil {
		return err
	}
	d.stage("signing key made (release.key) and trusted by the broker (release.pub)")

	fl := demoFleet(d.o.devices)
	if err := fl.write(d.dir); err != nil {
		return err
	}
	if _, err := d.otactl(ctx, true, "device", "import", "fleet.csv", "--tokens", "fleet.tokens"); err != nil {
		return err
	}
	d.stage("%d devices registered: %s", d.o.devices, fl.describe())
	if err := d.startDevsim(); err != nil {
		return err
	}
	if err := d.waitOnline(ctx); err != nil {
		return err
	}

	bad, err := d.release(ctx, demoBad)
	if err != nil {
		return err
	}
	d.stage("release uploaded: %s; it fails the health check on the %d canary devices (devsim profile bad-health, fault_versions [%s])",
		bad, fl.count("canary"), demoBad)
	if err := d.create(ctx, demoBadID, demoBad); err != nil {
		return err
	}
	d.stage("rollout created: %s, a draft (nothing offered yet); watch it now: otactl rollout watch %s", demoBadID, demoBadID)
	if err := d.waitEnter(ctx); err != nil {
		return err
	}
	if _, err := d.otactl(ctx, true, "rollout", "start", demoBadID); err != nil {
		return err
	}
	d.stage("rollout started: %s, release %s, waves %s; watch it: otactl rollout watch %s", demoBadID, demoBad, demoWaves, demoBadID)
	if err := d.followBad(ctx); err != nil {
		return err
	}
	out, err := d.otactl(ctx, true, "--json", "rollout", "abort", demoBadID, "--reason", demoBad+" fails its health check on the canary")
	if err != nil {
		return err
	}
	var ab struct {
		Rollout   demoView `json:"rollout"`
		Cancelled int      `json:"cancelled"`
	}
	if err := json.Unmarshal(out, &ab); err != nil {
		return fmt.Errorf("otactl rollout abort: %w", err)
	}
	if ab.Rollout.State != "aborted" {
		return fmt.Errorf("rollout %s is %s after the abort", demoBadID, ab.Rollout.State)
	}
	d.stage("rollout %s aborted: %d devices not yet offered cancelled in it", demoBadID, ab.Cancelled)

	fixed, err := d.release(ctx, demoFixed)
	if err != nil {
		return err
	}
	d.stage("fixed release uploaded: %s", fixed)
	if err := d.create(ctx, demoFixedID, demoFixed); err != nil {
		return err
	}
	d.stage("new rollout created: %s; watch it: otactl rollout watch %s", demoFixedID, demoFixedID)
	if _, err := d.otactl(ctx, true, "rollout", "start", demoFixedID); err != nil {
		return err
	}
	d.stage("new rollout started: %s, release %s; watch it: otactl rollout watch %s", demoFixedID, demoFixed, demoFixedID)
	if err := d.followFixed(ctx); err != nil {
		return err
	}
	return d.checkFleet(ctx)
}

// portFree fails when addr cannot be listened on, saying what to do.
func portFree(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s is not free (a broker of make run, or another demo?): stop what uses it, or give the demo other ports, "+
			`e.g. make demo DEMOFLAGS="--mqtt-addr 127.0.0.1:1885 --http-addr 127.0.0.1:9102": %w`, addr, err)
	}
	return l.Close()
}

// startBroker starts otamq and waits for its /healthz.
func (d *demo) startBroker(ctx context.Context) error {
	env := append(slices.Clip(d.env), "OTAMQ_FIRST_OPERATOR_PASSWORD="+d.password)
	c, err := d.spawn("otamq", env, "otamq.log", "", "--data-dir", "data", "--mqtt-addr", d.o.mqttAddr, "--http-addr", d.o.httpAddr)
	if err != nil {
		return err
	}
	d.broker = c
	url := "http://" + d.o.httpAddr + "/healthz"
	client := &http.Client{Timeout: time.Second}
	err = d.poll(ctx, 20*time.Second, 100*time.Millisecond, func() (bool, error) {
		resp, err := client.Get(url)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("the broker did not come up: %w", err)
	}
	d.stage("broker up: otamq on %s, metrics on http://%s/metrics, data in data/ (log: otamq.log)", d.url, d.o.httpAddr)
	return nil
}

// startDevsim runs the fleet in devsim, this binary, as a child process.
func (d *demo) startDevsim() error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	args := []string{"--url", d.url, "--devices", "devices.jsonl", "--tokens", "fleet.tokens", "--key", "release.pub",
		"--heartbeat", "1s", "--probation", "2s", "--trial-timeout", "4s", "--boot-time", "200ms",
		"--seed", "1", "--progress", "0", "--json"}
	d.cmdline("devsim", args)
	c, err := d.spawnPath(exe, "devsim", d.env, "devsim.log", "devsim-summary.json", args...)
	if err != nil {
		return err
	}
	d.sim = c
	return nil
}

// demoDevice is what otactl --json device list prints, as far as the demo
// reads it.
type demoDevice struct {
	ID     string `json:"id"`
	Status struct {
		Online   bool   `json:"online"`
		Firmware string `json:"firmware"`
	} `json:"status"`
}

// devices lists the devices (otactl --json device list --all, and filters).
func (d *demo) devices(ctx context.Context, filters ...string) ([]demoDevice, error) {
	out, err := d.otactl(ctx, false, append([]string{"--json", "device", "list", "--all"}, filters...)...)
	if err != nil {
		return nil, err
	}
	var ds []demoDevice
	if err := json.Unmarshal(out, &ds); err != nil {
		return nil, fmt.Errorf("otactl device list: %w", err)
	}
	return ds, nil
}

// waitOnline waits for every device to be connected with the factory
// firmware in its birth.
func (d *demo) waitOnline(ctx context.Context) error {
	n, seen := 0, 0
	d.note("(waiting: otactl --json device list --all --online --firmware " + demoFactory + ")")
	err := d.poll(ctx, 60*time.Second, 500*time.Millisecond, func() (bool, error) {
		ds, err := d.devices(ctx, "--online", "--firmware", demoFactory)
		if err != nil {
			return false, err
		}
		n = len(ds)
		if n/50 > seen/50 && n < d.o.devices {
			d.stage("devices online %d/%d", n, d.o.devices)
		}
		seen = n
		return n == d.o.devices, nil
	})
	if err != nil {
		return fmt.Errorf("devices online %d/%d: %w", n, d.o.devices, err)
	}
	d.stage("devices online %d/%d, firmware %s (devsim log: devsim.log)", n, d.o.devices, demoFactory)
	return nil
}

// release signs and uploads an image of version v and returns its ID.
func (d *demo) release(ctx context.Context, v string) (string, error) {
	img := make([]byte, demoImage)
	if _, err := rand.Read(img); err != nil {
		return "", err
	}
	name, build := "fw-"+v+".bin", "build-"+v+".yaml"
	if err := os.WriteFile(filepath.Join(d.dir, name), img, 0o644); err != nil {
		return "", err
	}
	desc := fmt.Sprintf("version: %s\nbuild_id: demo-%s\nhardware: [esp32-v2, esp32-v3]\n", v, v)
	if err := os.WriteFile(filepath.Join(d.dir, build), []byte(desc), 0o644); err != nil {
		return "", err
	}
	if _, err := d.otactl(ctx, true, "sign", "--key", "release.key", "--build", build, name); err != nil {
		return "", err
	}
	out, err := d.otactl(ctx, true, "--json", "release", "upload", name, name+".manifest")
	if err != nil {
		return "", err
	}
	var rel struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(out, &rel); err != nil || rel.ID == "" {
		return "", fmt.Errorf("otactl release upload printed %q: %v", out, err)
	}
	return rel.ID, nil
}

// rolloutSpec is the demo's rollout of version v: the named groups, then
// the rest in two steps; short bake and probation.
func rolloutSpec(id, v string) string {
	return `# The demo's rollout (docs/ROLLOUTS.md): the named groups one after the
# other, then a quarter of the rest, then all of it.
id: ` + id + `
name: "demo: ` + v + `, canary to GA"
release: ` + v + `
selector:
  groups: [canary, internal, pilot, field]
waves:
  - {name: canary, groups: [canary]}
  - {name: internal, groups: [internal]}
  - {name: pilot, groups: [pilot]}
  - {percent: [25, 100]}
bake: 5s
probation: 2s
thresholds: {min_sample: 5}
`
}

// create writes the spec of a rollout and creates it, printing the plan.
func (d *demo) create(ctx context.Context, id, v string) error {
	file := id + ".yaml"
	if err := os.WriteFile(filepath.Join(d.dir, file), []byte(rolloutSpec(id, v)), 0o644); err != nil {
		return err
	}
	out, err := d.otactl(ctx, true, "rollout", "create", file)
	if err != nil {
		return err
	}
	d.note(indent(string(out)))
	return nil
}

// waitEnter gives the operator of an interactive demo the time to start
// the watch of the first rollout: until Enter, at most --wait.
func (d *demo) waitEnter(ctx context.Context) error {
	if !d.interactive {
		return nil
	}
	fmt.Fprintf(d.out, "\n  >>> Start the watch in another terminal now; press Enter here to start the rollout (it starts by itself in %s)\n\n", d.o.wait)
	// The reader may stay blocked on the terminal after the wait ends; it
	// ends with the process (nothing else reads standard input).
	enter := make(chan struct{})
	go func() {
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		close(enter)
	}()
	t := time.NewTimer(d.o.wait)
	defer t.Stop()
	begin := time.Now()
	if d.timeout.Stop() {
		left := time.Until(d.timeoutAt)
		defer func() {
			d.timeoutAt = time.Now().Add(left)
			d.timeout.Reset(left)
		}()
	}
	defer func() { d.waited = time.Since(begin) }()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-enter:
	case <-t.C:
	}
	return nil
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n  ")
}

// followBad follows the bad release's rollout until it paused at the
// canary and every canary device has its result; nothing outside the
// canary may have been offered.
func (d *demo) followBad(ctx context.Context) error {
	paused := false
	v, err := d.follow(ctx, demoBadID, time.Minute, func(v *demoView) (bool, error) {
		switch v.State {
		case "running":
			return false, nil
		case "paused":
		default:
			return false, fmt.Errorf("rollout %s is %s (%s); it should have paused at the canary", v.ID, v.State, v.Reason)
		}
		if len(v.Waves) == 0 || v.Waves[0].Name != "canary" {
			return false, fmt.Errorf("rollout %s has no canary wave first", v.ID)
		}
		for _, w := range v.Waves[1:] {
			if w.Counts["eligible"] != w.Devices {
				return false, fmt.Errorf("rollout %s paused, but wave %s was offered: %v", v.ID, w.Name, nonZero(w.Counts))
			}
		}
		if !paused {
			paused = true
			if v.PausedBy != "threshold" || !strings.Contains(v.Reason, "canary") {
				return false, fmt.Errorf("rollout %s paused by %s: %s; want the canary's health threshold", v.ID, v.PausedBy, v.Reason)
			}
			d.stage("PAUSED at canary: %s", v.Reason)
		}
		c := v.Waves[0]
		return c.Judged == c.Devices, nil
	})
	if err != nil {
		return err
	}
	c := v.Waves[0]
	d.stage("canary results: %s; no device outside the canary was offered", counts(c.Counts, demoStates))
	out, err := d.otactl(ctx, true, "rollout", "status", demoBadID)
	if err != nil {
		return err
	}
	d.note(indent(string(out)))
	return nil
}

// followFixed follows the fixed release's rollout until it completed.
func (d *demo) followFixed(ctx context.Context) error {
	v, err := d.follow(ctx, demoFixedID, 2*time.Minute, func(v *demoView) (bool, error) {
		switch v.State {
		case "running":
			return false, nil
		case "completed":
			return true, nil
		}
		return false, fmt.Errorf("rollout %s is %s (%s); it should have completed", v.ID, v.State, v.Reason)
	})
	if err != nil {
		return err
	}
	if v.Counts["succeeded"] != d.o.devices {
		return fmt.Errorf("rollout %s completed with %s, want %d succeeded", v.ID, counts(v.Counts, demoStates), d.o.devices)
	}
	d.stage("rollout %s completed: %d/%d succeeded", v.ID, v.Counts["succeeded"], d.o.devices)
	return nil
}

// checkFleet checks the registry: every device on the fixed version.
func (d *demo) checkFleet(ctx context.Context) error {
	d.note("(checking: otactl --json device list --all --firmware " + demoFixed + ")")
	n := 0
	err := d.poll(ctx, 10*time.Second, 200*time.Millisecond, func() (bool, error) {
		ds, err := d.devices(ctx, "--firmware", demoFixed)
		if err != nil {
			return false, err
		}
		n = len(ds)
		return n == d.o.devices, nil
	})
	if err != nil {
		return fmt.Errorf("%d/%d devices on %s: %w", n, d.o.devices, demoFixed, err)
	}
	d.stage("completed: %d/%d devices on %s", n, d.o.devices, demoFixed)
	return nil
}

// The rollout View (docs/ROLLOUTS.md), as far as the demo reads it.
type demoView struct {
	ID       string         `json:"id"`
	State    string         `json:"state"`
	Reason   string         `json:"reason"`
	PausedBy string         `json:"paused_by"`
	Devices  int            `json:"devices"`
	Counts   map[string]int `json:"counts"`
	Waves    []struct {
		Name    string         `json:"name"`
		State   string         `json:"state"`
		Devices int            `json:"devices"`
		Counts  map[string]int `json:"counts"`
		Judged  int            `json:"judged"`
	} `json:"waves"`
}

// demoStates are the device states in their order.
var demoStates = []string{"eligible", "offered", "downloading", "verified", "installing", "rebooting", "trial",
	"succeeded", "failed", "rolled_back", "timed_out", "skipped", "cancelled"}

func nonZero(m map[string]int) string { return counts(m, demoStates) }

// follow runs otactl --json rollout watch ID, prints each wave that
// starts or passes, and hands every View to until, until it says done or
// fails.
func (d *demo) follow(ctx context.Context, id string, timeout time.Duration, until func(*demoView) (bool, error)) (*demoView, error) {
	d.note(fmt.Sprintf("(following: otactl --json rollout watch %s)", id))
	w, err := d.watch(ctx, id)
	if err != nil {
		return nil, err
	}
	defer w.close()
	d.waves = map[string]string{}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	var last *demoView
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-deadline.C:
			if last == nil {
				return nil, fmt.Errorf("otactl rollout watch %s showed nothing in %s", id, timeout)
			}
			return nil, fmt.Errorf("rollout %s still %s after %s: %s", id, last.State, timeout, nonZero(last.Counts))
		case <-d.broker.done:
			return nil, d.died(d.broker)
		case <-d.sim.done:
			return nil, d.died(d.sim)
		case v, ok := <-w.views:
			if !ok {
				err := fmt.Errorf("otactl rollout watch %s ended: %v %s", id, w.err, strings.TrimSpace(w.stderr.String()))
				// A watch ends when the broker dies, sometimes before
				// the broker's own end is seen: name the cause.
				t := time.NewTimer(2 * time.Second)
				defer t.Stop()
				select {
				case <-d.broker.done:
					return nil, fmt.Errorf("%w\n(and so: %w)", d.died(d.broker), err)
				case <-d.sim.done:
					return nil, fmt.Errorf("%w\n(and so: %w)", d.died(d.sim), err)
				case <-t.C:
					return nil, err
				}
			}
			last = v
			d.reportWaves(v)
			done, err := until(v)
			if err != nil || done {
				return v, err
			}
		}
	}
}

// reportWaves prints a line for each wave that started or passed since
// the last View.
func (d *demo) reportWaves(v *demoView) {
	for _, w := range v.Waves {
		last := d.waves[w.Name]
		if last == w.State {
			continue
		}
		d.waves[w.Name] = w.State
		switch {
		case w.State == "running" && last != "baking":
			d.stage("  %s wave %s started: %d devices", v.ID, w.Name, w.Devices)
		case w.State == "passed":
			d.stage("  %s wave %s passed: %d/%d succeeded", v.ID, w.Name, w.Counts["succeeded"], w.Devices)
		}
	}
}

// died is the error of a child that ended before the demo stopped it.
func (d *demo) died(c *child) error {
	return fmt.Errorf("%s ended unexpectedly (%v); the end of %s:\n%s", c.name, c.err, c.logName, tail(filepath.Join(d.dir, c.logName), 20))
}

// deadChild is the error of the broker or devsim if one of them ended.
func (d *demo) deadChild() error {
	for _, c := range []*child{d.broker, d.sim} {
		if c != nil && c.exited() {
			return d.died(c)
		}
	}
	return nil
}

// poll calls f every period until it reports done, fails, the timeout
// passes or a child dies.
func (d *demo) poll(ctx context.Context, timeout, period time.Duration, f func() (bool, error)) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		done, err := f()
		if derr := d.deadChild(); derr != nil {
			return derr
		}
		if err != nil || done {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("not after %s", timeout)
		case <-tick.C:
		}
	}
}

// cleanup stops devsim, then the broker, and removes the demo's directory
// unless --keep. It prints devsim's summary of the fleet.
func (d *demo) cleanup() error {
	var errs []error
	if d.sim != nil || d.broker != nil {
		d.stage("stopping devsim and the broker")
	}
	if d.sim != nil {
		if err := d.sim.stop(os.Interrupt, 30*time.Second); err != nil {
			errs = append(errs, err)
		}
		if sum, err := os.ReadFile(filepath.Join(d.dir, "devsim-summary.json")); err == nil && len(sum) > 0 {
			var s summary
			if json.Unmarshal(sum, &s) == nil {
				d.note(fmt.Sprintf("devsim: %d devices, versions %s; %d commits, %d rollbacks, %d events (%d lost)",
					s.Devices, counts(s.Versions, nil), s.Commits, s.Rollbacks, s.Events, s.EventsLost))
			}
		}
	}
	if d.broker != nil {
		if err := d.broker.stop(syscall.SIGTERM, 30*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	if d.o.keep {
		d.note("kept " + d.dir)
	} else if err := os.RemoveAll(d.dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
