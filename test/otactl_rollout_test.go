package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/cmd/devsim/sim"
	"github.com/otamq/otamq/ota/audit"
	"github.com/otamq/otamq/ota/rollout"
	"github.com/otamq/otamq/test/faultproxy"
)

// The operators' command line for rollouts: the real otactl binary against
// a real broker, its devices simulated (cmd/devsim/sim) or only registered.

// cliWorld is a broker with a trusted key, release 1.1.0 for esp32-v2
// and a directory for spec files.
type cliWorld struct {
	*simWorld
	release string // its reference, VERSION@DIGEST-PREFIX
	dir     string
}

func newCLIWorld(t *testing.T, mods ...func(*broker.Options)) *cliWorld {
	t.Helper()
	mods = append([]func(*broker.Options){func(o *broker.Options) { o.RolloutTick = 200 * time.Millisecond }}, mods...)
	w := newSimWorld(t, mods...)
	rel := w.release(makeFirmware(t, w.key, "1.1.0", []string{"esp32-v2"}, 20*1024))
	return &cliWorld{simWorld: w, release: rel.ID, dir: t.TempDir()}
}

// spec writes a spec file and returns its path.
func (w *cliWorld) spec(t *testing.T, name, yaml string) string {
	t.Helper()
	p := filepath.Join(w.dir, name)
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// fleet registers and starts simulated devices: groups[id] is a device's
// group ("" none), profiles[id] its profile (healthy unless named). It
// waits until all have reported their factory image.
func (w *cliWorld) fleet(t *testing.T, ids []string, groups map[string]string, profiles map[string]sim.Profile) {
	t.Helper()
	specs := w.registerSims(t, ids, func(r *sim.Registration) {
		if g := groups[r.ID]; g != "" {
			r.Groups = []string{g}
		}
		r.Region = "eu"
	})
	for i := range specs {
		specs[i].Profile = profiles[specs[i].ID]
	}
	w.simFleet(t, specs)
	w.waitDevices(t, 30*time.Second, ids, onVersion("1.0.0", "idle", "power_on", 0))
}

// otactlAs runs otactl as operator user.
func (w *cliWorld) otactlAs(t *testing.T, user, password, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t, "otactl"), args...)
	cmd.Env = append(os.Environ(), "OTAMQ_URL="+w.url(), "OTAMQ_USER="+user, "OTAMQ_PASSWORD="+password)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr, cmd.Stdin = &out, &errb, strings.NewReader(stdin)
	if err := cmd.Run(); err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatal(err)
		}
		code = ee.ExitCode()
	}
	return out.String(), errb.String(), code
}

// must runs otactl as the test operator and fails unless it exits 0.
func (w *cliWorld) must(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := w.otactlAs(t, opID, opPassword, "", args...)
	if code != 0 {
		t.Fatalf("otactl %v: exit %d\n%s%s", args, code, out, errOut)
	}
	return out
}

// refused runs otactl and fails unless it exits with code and stderr
// holds every one of want.
func (w *cliWorld) refused(t *testing.T, code int, want []string, args ...string) string {
	t.Helper()
	out, errOut, got := w.otactlAs(t, opID, opPassword, "", args...)
	if got != code {
		t.Fatalf("otactl %v: exit %d, want %d\n%s%s", args, got, code, out, errOut)
	}
	for _, s := range want {
		if !strings.Contains(errOut, s) {
			t.Errorf("otactl %v: stderr lacks %q:\n%s", args, s, errOut)
		}
	}
	return errOut
}

// otactlProc is otactl running in the background (watch).
type otactlProc struct {
	cmd      *exec.Cmd
	out, err *syncBuffer
	done     chan struct{}
	code     int
}

func (w *cliWorld) startOtactl(t *testing.T, url, user, password string, args ...string) *otactlProc {
	t.Helper()
	cmd := exec.Command(binary(t, "otactl"), args...)
	cmd.Env = append(os.Environ(), "OTAMQ_URL="+url, "OTAMQ_USER="+user, "OTAMQ_PASSWORD="+password)
	p := &otactlProc{cmd: cmd, out: &syncBuffer{}, err: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.err
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		if err := cmd.Wait(); err != nil {
			if ee, ok := err.(*exec.ExitError); ok {
				p.code = ee.ExitCode()
			} else {
				p.code = -1
			}
		}
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// wait waits for the process to end and returns its exit status.
func (p *otactlProc) wait(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(within):
		t.Fatalf("otactl %v still running after %v\nstdout:\n%s\nstderr:\n%s", p.cmd.Args[1:], within, p.out, p.err)
		return -1
	}
}

// waitOutput polls the process's standard output until it holds s.
func (p *otactlProc) waitOutput(t *testing.T, within time.Duration, s string) {
	t.Helper()
	eventually(t, within, func() error {
		if !strings.Contains(p.out.String(), s) {
			return fmt.Errorf("otactl %v has not printed %q yet:\n%s\nstderr:\n%s", p.cmd.Args[1:], s, p.out, p.err)
		}
		return nil
	})
}

// views decodes JSON lines of Views, checking that each has every key of
// the documented shape.
func views(t *testing.T, out string) []rollout.View {
	t.Helper()
	var vs []rollout.View
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		checkViewShape(t, []byte(line))
		var v rollout.View
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Fatalf("not a View: %v\n%s", err, line)
		}
		vs = append(vs, v)
	}
	return vs
}

// checkViewShape: {"id", "release", "state", "reason", "counts": {STATE: n},
// "waves": [{"name", "state", "devices", "counts": {STATE: n}}]}, with every
// device state counted, and no spec.
func checkViewShape(t *testing.T, b []byte) {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("not a JSON object: %v\n%s", err, b)
	}
	for _, k := range []string{"id", "release", "state", "reason", "counts", "waves"} {
		if _, ok := m[k]; !ok {
			t.Errorf("no %q in %s", k, b)
		}
	}
	if _, ok := m["spec"]; ok {
		t.Errorf("the spec in %s", b)
	}
	checkCounts := func(raw json.RawMessage) {
		var c map[string]int
		if err := json.Unmarshal(raw, &c); err != nil {
			t.Errorf("counts %s: %v", raw, err)
		}
		for _, s := range rollout.States() {
			if _, ok := c[s]; !ok {
				t.Errorf("counts %s lack %s", raw, s)
			}
		}
	}
	checkCounts(m["counts"])
	var waves []map[string]json.RawMessage
	if err := json.Unmarshal(m["waves"], &waves); err != nil || len(waves) == 0 {
		t.Fatalf("waves %s: %v", m["waves"], err)
	}
	for _, w := range waves {
		for _, k := range []string{"name", "state", "devices", "counts"} {
			if _, ok := w[k]; !ok {
				t.Errorf("a wave without %q: %v", k, w)
			}
		}
		checkCounts(w["counts"])
	}
}

// TestOtactlRolloutLifecycle: create (a refused spec first), approve by
// another operator, start, watch --json to completed, status, devices and
// list, each with its errors.
func TestOtactlRolloutLifecycle(t *testing.T) {
	t.Parallel()
	w := newCLIWorld(t)
	w.addOperator("ann", "operator", "ann's password for the tests")
	devs := ids("lc-", 10)
	groups := map[string]string{"lc-001": "canary", "lc-002": "canary", "lc-003": "pilot", "lc-004": "pilot", "lc-005": "pilot"}
	w.fleet(t, devs, groups, nil)

	// A spec with several problems: every one, one a line; nothing stored.
	bad := w.spec(t, "bad.yaml", "release: "+w.release+"\nwaves:\n  - {name: canary, groups: [canary]}\n  - {percent: [50, 10]}\n"+
		"thresholds: {min_sample: -1}\nrate: {per_minute: -5}\n")
	for _, verb := range []string{"create", "plan"} {
		errOut := w.refused(t, 1, []string{"waves[1].percent[1]: ", "thresholds.min_sample: ", "rate.per_minute: ", "3 problems"}, "rollout", verb, bad)
		if n := strings.Count(errOut, "\n"); n != 4 {
			t.Errorf("rollout %s: %d lines on stderr, want 3 problems and the summary:\n%s", verb, n, errOut)
		}
	}
	if out := w.must(t, "rollout", "list"); !strings.Contains(out, "no rollout") {
		t.Fatalf("a refused spec left a rollout:\n%s", out)
	}

	spec := "id: lc1\nname: lifecycle\nrelease: " + w.release + "\nselector: {hardware: [esp32-v2]}\nwaves:\n" +
		"  - {name: canary, groups: [canary]}\n  - {name: pilot, groups: [pilot]}\n  - {percent: [100]}\n" +
		"bake: 1s\nprobation: 1s\napproval: true\n"
	// The plan first: waves with their devices, nothing stored.
	out := w.must(t, "rollout", "plan", w.spec(t, "lc1.yaml", spec))
	for _, want := range []string{"plan of rollout lc1", "release " + w.release, "selected 10 devices: 10 take part, 0 skipped", "canary  2", "pilot   3", "100%    5"} {
		if !strings.Contains(out, want) {
			t.Errorf("plan lacks %q:\n%s", want, out)
		}
	}
	// The broker takes specs of up to 32 KiB: a longer file is not sent.
	noID := strings.Replace(spec, "id: lc1\n", "", 1)
	long := noID + "#" + strings.Repeat("x", rollout.MaxSpecSize-len(noID)-2) + "\n"
	w.must(t, "rollout", "plan", w.spec(t, "long.yaml", long))
	big := w.spec(t, "big.yaml", long+"#\n")
	w.refused(t, 2, []string{"more than 32768 bytes, the most a rollout spec may have"}, "rollout", "create", big)
	// Without an id the cohorts are provisional, and the plan says so.
	out, errOut, code := w.otactlAs(t, opID, opPassword, strings.Replace(spec, "id: lc1\n", "", 1), "rollout", "plan", "-", "--json")
	var plan rollout.PlanView
	if code != 0 || json.Unmarshal([]byte(out), &plan) != nil || !plan.Provisional || len(plan.Waves) != 3 || plan.Devices != 10 {
		t.Fatalf("plan - --json: exit %d, %+v\n%s%s", code, plan, out, errOut)
	}
	out = w.must(t, "rollout", "create", filepath.Join(w.dir, "lc1.yaml"))
	if !strings.Contains(out, "created rollout lc1 (awaiting_approval)") {
		t.Fatalf("create:\n%s", out)
	}
	w.refused(t, 1, []string{"conflict", "needs approval"}, "rollout", "start", "lc1")
	w.refused(t, 1, []string{"forbidden", "another operator must approve it"}, "rollout", "approve", "lc1")

	// watch --json from here: the View now, then every pushed one, to the
	// end; the first line is the View before the approval.
	watch := w.startOtactl(t, w.url(), opID, opPassword, "--json", "rollout", "watch", "lc1")
	watch.waitOutput(t, 20*time.Second, `"state":"awaiting_approval"`)

	out, errOut, code = w.otactlAs(t, "ann", "ann's password for the tests", "", "rollout", "approve", "lc1")
	if code != 0 || !strings.Contains(out, "approved rollout lc1: draft") {
		t.Fatalf("approve by ann: exit %d\n%s%s", code, out, errOut)
	}
	if out = w.must(t, "rollout", "start", "lc1"); !strings.Contains(out, "started rollout lc1: running") {
		t.Fatalf("start:\n%s", out)
	}
	if code := watch.wait(t, 90*time.Second); code != 0 {
		t.Fatalf("watch: exit %d\n%s\n%s", code, watch.out, watch.err)
	}
	vs := views(t, watch.out.String())
	last := vs[len(vs)-1]
	if vs[0].State != rollout.StateAwaitingApproval || last.State != rollout.StateCompleted || last.Counts["succeeded"] != 10 {
		t.Fatalf("watch went from %s to %s with %v", vs[0].State, last.State, last.Counts)
	}
	var states []string
	for _, v := range vs {
		if len(states) == 0 || states[len(states)-1] != v.State {
			states = append(states, v.State)
		}
	}
	if !slices.Equal(states, []string{"awaiting_approval", "draft", "running", "completed"}) && !slices.Equal(states, []string{"awaiting_approval", "running", "completed"}) {
		t.Errorf("watch saw the states %v", states)
	}
	for i, wv := range last.Waves {
		if wv.State != rollout.WavePassed || wv.Counts["succeeded"] != wv.Devices || wv.Devices != []int{2, 3, 5}[i] {
			t.Errorf("wave %s at the end: %s, %d of %d succeeded", wv.Name, wv.State, wv.Counts["succeeded"], wv.Devices)
		}
	}
	w.waitDevices(t, 10*time.Second, devs, onVersion("1.1.0", "committed", "ota_reboot", 1))

	// status: the human summary and the JSON shape.
	out = w.must(t, "rollout", "status", "lc1")
	for _, want := range []string{"rollout lc1 (lifecycle): COMPLETED", "approved by ann", "devices: 10 taking part: 10 succeeded\n",
		"canary  passed", "[####################]  2/2", "pilot   passed", "100%    passed"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	out = w.must(t, "--json", "rollout", "status", "lc1")
	checkViewShape(t, []byte(out))
	var st rollout.View
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.ID != "lc1" || st.Release != w.release || st.Counts["succeeded"] != 10 || st.Approved == nil || st.Approved.By != "ann" {
		t.Fatalf("status --json: %v %+v", err, st)
	}
	if out = w.must(t, "rollout", "status", "lc1", "--spec"); out != spec {
		t.Errorf("status --spec printed\n%s\nwant\n%s", out, spec)
	}

	// devices, filtered by state and wave.
	out = w.must(t, "rollout", "devices", "lc1", "--state", "succeeded")
	if !strings.Contains(out, "10 shown") || !strings.Contains(out, "lc-007") || !strings.Contains(out, "1.1.0@") {
		t.Errorf("devices --state succeeded:\n%s", out)
	}
	if out = w.must(t, "rollout", "devices", "lc1", "--state", "eligible"); !strings.Contains(out, "0 shown") {
		t.Errorf("devices --state eligible:\n%s", out)
	}
	var ds []rollout.DeviceView
	out = w.must(t, "rollout", "devices", "lc1", "--wave", "canary", "--json")
	if err := json.Unmarshal([]byte(out), &ds); err != nil || len(ds) != 2 || ds[0].Device != "lc-001" || ds[1].Device != "lc-002" ||
		ds[0].State != "succeeded" || ds[0].Wave != "canary" || ds[0].Target != w.release {
		t.Errorf("devices --wave canary --json: %v %+v", err, ds)
	}

	// list, and its filter.
	out = w.must(t, "rollout", "list")
	if !strings.Contains(out, "lc1") || !strings.Contains(out, "completed") || !strings.Contains(out, "lifecycle") {
		t.Errorf("list:\n%s", out)
	}
	if out = w.must(t, "rollout", "list", "--state", "running"); !strings.Contains(out, "no rollout") {
		t.Errorf("list --state running:\n%s", out)
	}

	// Errors: an unknown ID, a wrong state, usage mistakes (exit 2,
	// nothing sent).
	for _, verb := range []string{"status", "start", "approve", "pause", "resume", "abort", "devices", "watch"} {
		w.refused(t, 1, []string{"not_found", "nope"}, "rollout", verb, "nope")
	}
	w.refused(t, 1, []string{"conflict", "only a draft can be started"}, "rollout", "start", "lc1")
	w.refused(t, 1, []string{"conflict", "is completed"}, "rollout", "pause", "lc1")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"rollout", "create"}, "want the rollout spec"},
		{[]string{"rollout", "create", filepath.Join(w.dir, "missing.yaml")}, "no such file"},
		{[]string{"rollout", "create", "-"}, "standard input is empty"},
		{[]string{"rollout", "plan", bad, "--id", "lc1"}, "not both"},
		{[]string{"rollout", "devices", "lc1", "--state", "done"}, `--state "done": want one of eligible, offered`},
		{[]string{"rollout", "list", "--state", "done"}, `--state "done": want one of draft, awaiting_approval`},
		{[]string{"rollout", "watch", "lc1/#"}, "is no rollout ID"},
		{[]string{"rollout", "status"}, "want exactly one rollout ID"},
		{[]string{"rollout", "devices", "lc1", "--limit", "-1"}, "--limit -1"},
	} {
		w.refused(t, 2, []string{c.want}, c.args...)
	}
	// watch gives up when it cannot reach the broker the first time.
	_, errOut, code = runBinary(t, binary(t, "otactl"), []string{"OTAMQ_URL=mqtt://127.0.0.1:1", "OTAMQ_USER=ops", "OTAMQ_PASSWORD=x"},
		"rollout", "watch", "lc1")
	if code != 1 || !strings.Contains(errOut, "is otamq running") {
		t.Errorf("watch without a broker: exit %d\n%s", code, errOut)
	}
}

// TestOtactlRolloutPauseAbort: a rollout baking its canary says when the
// bake ends; pause and resume with a reason; abort cancels the devices that
// had not begun to install.
func TestOtactlRolloutPauseAbort(t *testing.T) {
	t.Parallel()
	w := newCLIWorld(t)
	devs := ids("pa-", 6)
	w.fleet(t, devs, map[string]string{"pa-001": "canary", "pa-002": "canary"}, nil)
	spec := w.spec(t, "pa1.yaml", "id: pa1\nrelease: "+w.release+"\nwaves:\n  - {name: canary, groups: [canary]}\n  - {percent: [100]}\n"+
		"bake: 1h\nprobation: 1s\n")
	if out := w.must(t, "rollout", "create", spec); !strings.Contains(out, "created rollout pa1 (draft)") {
		t.Fatalf("create:\n%s", out)
	}
	w.must(t, "rollout", "start", "pa1")
	var st rollout.View
	eventually(t, 60*time.Second, func() error {
		out := w.must(t, "--json", "rollout", "status", "pa1")
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return err
		}
		if st.Waves[0].State != rollout.WaveBaking {
			return fmt.Errorf("canary %s: %v", st.Waves[0].State, st.Waves[0].Counts)
		}
		return nil
	})
	if st.Next == nil || st.Next.What != "wave" || st.Next.Wave != "canary" || time.Until(st.Next.At) < 50*time.Minute {
		t.Fatalf("next %+v", st.Next)
	}
	out := w.must(t, "rollout", "status", "pa1")
	for _, want := range []string{"pa1: RUNNING", "canary  baking until ", "2/2", "next: the bake of wave canary ends in ", "then the next wave starts"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}

	out = w.must(t, "rollout", "pause", "pa1", "--reason", "support calls from plant 2")
	if !strings.Contains(out, "paused rollout pa1: paused (support calls from plant 2)") {
		t.Fatalf("pause:\n%s", out)
	}
	if out = w.must(t, "rollout", "status", "pa1"); !strings.Contains(out, "reason: support calls from plant 2 [paused by operator]") {
		t.Errorf("status of the paused rollout:\n%s", out)
	}
	w.refused(t, 1, []string{"conflict", "only a running or scheduled rollout can be paused"}, "rollout", "pause", "pa1")
	w.refused(t, 2, []string{"flag needs an argument: -reason"}, "rollout", "pause", "pa1", "--reason")
	if out = w.must(t, "rollout", "resume", "pa1"); !strings.Contains(out, "resumed rollout pa1: running") {
		t.Fatalf("resume:\n%s", out)
	}

	out = w.must(t, "--json", "rollout", "abort", "pa1", "--reason", "bad build")
	var ab struct {
		Rollout    rollout.View         `json:"rollout"`
		Cancelled  int                  `json:"cancelled"`
		Installing []rollout.DeviceView `json:"installing"`
	}
	if err := json.Unmarshal([]byte(out), &ab); err != nil || ab.Rollout.State != rollout.StateAborted || ab.Rollout.Reason != "bad build" ||
		ab.Cancelled != 4 || len(ab.Installing) != 0 {
		t.Fatalf("abort --json: %v %+v\n%s", err, ab, out)
	}
	out = w.must(t, "rollout", "devices", "pa1", "--state", "cancelled")
	if !strings.Contains(out, "4 shown") || !strings.Contains(out, "bad build") || strings.Contains(out, "pa-001") {
		t.Errorf("devices --state cancelled:\n%s", out)
	}
	w.refused(t, 1, []string{"conflict", "finished"}, "rollout", "abort", "pa1")
	if out = w.must(t, "rollout", "status", "pa1"); !strings.Contains(out, "pa1: ABORTED") || !strings.Contains(out, "reason: bad build") {
		t.Errorf("status after the abort:\n%s", out)
	}
}

// TestOtactlRolloutDevicesPages: rollout devices follows the cursor
// through every page unless --limit; the plan lists the skipped devices
// with their reason and examples.
func TestOtactlRolloutDevicesPages(t *testing.T) {
	t.Parallel()
	w := newCLIWorld(t)
	regs := make([]sim.Registration, 128)
	for i := range regs {
		regs[i] = sim.Registration{ID: fmt.Sprintf("pg-%03d", i+1), Hardware: "esp32-v2"}
		if i >= 125 {
			regs[i].Hardware = ""
		}
	}
	if _, err := sim.Register(context.Background(), w.admin(), regs); err != nil {
		t.Fatal(err)
	}
	spec := w.spec(t, "pg1.yaml", "id: pg1\nrelease: "+w.release+"\nwaves:\n  - {percent: [100]}\n")
	out := w.must(t, "rollout", "plan", spec)
	for _, want := range []string{"selected 128 devices: 125 take part, 3 skipped", "100%  125      3", "skipped:",
		"3  no known hardware", "e.g. pg-126, pg-127, pg-128"} {
		if !strings.Contains(out, want) {
			t.Errorf("plan lacks %q:\n%s", want, out)
		}
	}
	w.must(t, "rollout", "create", spec)
	// 128 devices come in pages of 100: all of them.
	if out = w.must(t, "rollout", "devices", "pg1"); !strings.Contains(out, "128 shown") || !strings.Contains(out, "pg-128") {
		t.Errorf("devices:\n%s", out)
	}
	var ds []rollout.DeviceView
	out = w.must(t, "rollout", "devices", "pg1", "--state", "eligible", "--json")
	if err := json.Unmarshal([]byte(out), &ds); err != nil || len(ds) != 125 || ds[124].Device != "pg-125" {
		t.Fatalf("devices --state eligible --json: %v, %d devices", err, len(ds))
	}
	out, errOut, code := w.otactlAs(t, opID, opPassword, "", "rollout", "devices", "pg1", "--limit", "7")
	if code != 0 || !strings.Contains(out, "7 shown") || !strings.Contains(out, "pg-007") || strings.Contains(out, "pg-008") ||
		!strings.Contains(errOut, "more devices: --limit more than 7") {
		t.Errorf("devices --limit 7: exit %d\n%s%s", code, out, errOut)
	}
	out = w.must(t, "rollout", "devices", "pg1", "--state", "skipped")
	if !strings.Contains(out, "3 shown") || !strings.Contains(out, "no known hardware") {
		t.Errorf("devices --state skipped:\n%s", out)
	}
}

// TestOtactlRolloutWatchPlain: off a terminal, watch prints a plain line
// per change, each alarm once, and the final state; it ends by itself.
func TestOtactlRolloutWatchPlain(t *testing.T) {
	t.Parallel()
	w := newCLIWorld(t)
	devs := ids("wp-", 6)
	w.fleet(t, devs, map[string]string{"wp-001": "canary", "wp-002": "canary", "wp-003": "canary"}, map[string]sim.Profile{"wp-002": sim.Rollback})
	spec := w.spec(t, "wp1.yaml", "id: wp1\nrelease: "+w.release+"\nwaves:\n  - {name: canary, groups: [canary]}\n  - {percent: [100]}\n"+
		"bake: 1s\nprobation: 1s\nsuccess: 50%\nthresholds: {min_sample: 3, rollback: {warn: 10%, pause: 90%}}\n")
	w.must(t, "rollout", "create", spec)
	watch := w.startOtactl(t, w.url(), opID, opPassword, "rollout", "watch", "wp1")
	watch.waitOutput(t, 20*time.Second, "wp1 draft: 0/6 succeeded")
	w.must(t, "rollout", "start", "wp1")
	if code := watch.wait(t, 90*time.Second); code != 0 {
		t.Fatalf("watch: exit %d\n%s\n%s", code, watch.out, watch.err)
	}
	out := watch.out.String()
	if strings.Contains(out, "\x1b") {
		t.Errorf("escape sequences off a terminal:\n%q", out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i, want := range []string{"ALARM WARN wave canary: rollbacks 33.33% (1 of 3) passed the warning threshold 10%",
		"wp1 running: ", "| canary running ", "canary passed 2/3 1 rolled_back", "wp1 completed: 5/6 succeeded, 0 under way, 1 rolled_back"} {
		if !strings.Contains(out, want) {
			t.Errorf("watch output %d lacks %q:\n%s", i, want, out)
		}
	}
	if got := lines[len(lines)-1]; got != "rollout wp1 completed: 5 succeeded, 1 rolled_back" {
		t.Errorf("last line %q", got)
	}
	if n := strings.Count(out, "ALARM WARN wave canary:"); n != 1 {
		t.Errorf("the canary's alarm printed %d times:\n%s", n, out)
	}
	for i := 1; i < len(lines); i++ {
		if lines[i][8:] == lines[i-1][8:] {
			t.Errorf("line %d repeats the one before: %s", i, lines[i])
		}
	}
}

// TestOtactlRolloutWatchReconnect: watch follows the pushed summaries over
// a slow link, as an observer; when the link goes down it says so, connects
// again, subscribes again and goes on to the end. It asks the broker for
// nothing but the View, once per connection.
func TestOtactlRolloutWatchReconnect(t *testing.T) {
	t.Parallel()
	w := newCLIWorld(t)
	w.addOperator("eye", "observer", "the observer's password for the tests")
	devs := ids("rc-", 4)
	w.fleet(t, devs, nil, nil)
	w.must(t, "rollout", "create", w.spec(t, "rc1.yaml", "id: rc1\nrelease: "+w.release+"\nwaves:\n  - {percent: [50, 100]}\nbake: 1s\nprobation: 1s\n"))
	px, err := faultproxy.Start(w.Addr(), 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = px.Close() })
	px.SetThrottle(4096)
	watch := w.startOtactl(t, "mqtt://"+px.Addr(), "eye", "the observer's password for the tests", "--json", "rollout", "watch", "rc1")
	watch.waitOutput(t, 20*time.Second, `"state":"draft"`)

	gets := func() []audit.Record {
		var res struct {
			Records []audit.Record `json:"records"`
		}
		if err := w.admin().Call(context.Background(), "audit/list", map[string]any{"actor": "eye", "limit": 100}, &res); err != nil {
			t.Fatal(err)
		}
		return res.Records
	}
	px.SetDown(true)
	eventually(t, 30*time.Second, func() error {
		if n := strings.Count(watch.err.String(), "connecting again"); n < 2 {
			return fmt.Errorf("watch has said %d times that it connects again:\n%s", n, watch.err)
		}
		return nil
	})
	px.SetDown(false)
	eventually(t, 30*time.Second, func() error {
		if n := len(gets()); n != 2 {
			return fmt.Errorf("%d requests by the watcher", n)
		}
		return nil
	})
	// Everything from here comes by the new subscription.
	w.must(t, "rollout", "start", "rc1")
	if code := watch.wait(t, 90*time.Second); code != 0 {
		t.Fatalf("watch: exit %d\n%s\n%s", code, watch.out, watch.err)
	}
	vs := views(t, watch.out.String())
	if last := vs[len(vs)-1]; last.State != rollout.StateCompleted || last.Counts["succeeded"] != 4 {
		t.Fatalf("watch ended on %s %v", last.State, last.Counts)
	}
	running := 0
	for _, v := range vs {
		if v.State == rollout.StateRunning {
			running++
		}
	}
	if running == 0 {
		t.Errorf("no running View after the reconnection:\n%s", watch.out)
	}
	recs := gets()
	for _, r := range recs {
		if r.Action != "rollout/get" || r.Target != "rc1" || r.Result != "ok" {
			t.Errorf("the watcher asked %s %s (%s)", r.Action, r.Target, r.Result)
		}
	}
	if len(recs) != 2 {
		t.Errorf("the watcher made %d requests, want one per connection (2)", len(recs))
	}
}

// TestOtactlRolloutWatchTerminal: on a terminal (tmux), the live view: a
// bar per wave, the bake's countdown, the state and reason as they change;
// q stops watching; an abort ends it by itself.
func TestOtactlRolloutWatchTerminal(t *testing.T) {
	t.Parallel()
	tmux := needCommand(t, "tmux")
	w := newCLIWorld(t)
	devs := ids("tt-", 4)
	w.fleet(t, devs, map[string]string{"tt-001": "canary", "tt-002": "canary"}, nil)
	w.must(t, "rollout", "create", w.spec(t, "tt1.yaml", "id: tt1\nrelease: "+w.release+
		"\nwaves:\n  - {name: canary, groups: [canary]}\n  - {percent: [100]}\nbake: 1h\nprobation: 1s\n"))
	w.must(t, "rollout", "start", "tt1")

	sock := fmt.Sprintf("otamq-test-%d", time.Now().UnixNano())
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(tmux, append([]string{"-L", sock}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("tmux %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	t.Cleanup(func() { _ = exec.Command(tmux, "-L", sock, "kill-server").Run() })
	watch := func(name string) {
		run("new-session", "-d", "-s", name, "-x", "120", "-y", "30", "-e", "OTAMQ_URL="+w.url(), "-e", "OTAMQ_USER="+opID,
			"-e", "OTAMQ_PASSWORD="+opPassword, "-e", "TERM=xterm-256color",
			binary(t, "otactl")+" rollout watch tt1; echo EXIT=$?; sleep 120")
	}
	screen := func(name string, want ...string) string {
		t.Helper()
		var s string
		eventually(t, 60*time.Second, func() error {
			s = run("capture-pane", "-p", "-t", name)
			for _, x := range want {
				if !strings.Contains(s, x) {
					return fmt.Errorf("the screen lacks %q:\n%s", x, s)
				}
			}
			return nil
		})
		return s
	}
	watch("a")
	s := screen("a", "rollout tt1", "RUNNING", "canary baking", "2/2", "bake ends in 59m", "next: the bake of wave canary ends in 59m",
		"q: stop watching")
	if !strings.Contains(s, "████") || !strings.Contains(s, "░░░░") {
		t.Errorf("no bars:\n%s", s)
	}
	w.must(t, "rollout", "pause", "tt1", "--reason", "looking at the canary")
	screen("a", "PAUSED", "reason: looking at the canary", "otactl rollout resume tt1")
	run("send-keys", "-t", "a", "q")
	screen("a", "stopped watching rollout tt1 (paused)", "EXIT=0")

	watch("b")
	screen("b", "PAUSED", "reason: looking at the canary")
	w.must(t, "rollout", "abort", "tt1", "--reason", "enough")
	s = screen("b", "ABORTED", "reason: enough", "rollout tt1 aborted: 2 succeeded, 2 cancelled", "EXIT=0")
	if strings.Contains(s, "q: stop watching") {
		t.Errorf("the final frame still offers q:\n%s", s)
	}
}
