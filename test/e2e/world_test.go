package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/rollout"
	"github.com/otamq/otamq/test/faultproxy"
	"github.com/otamq/otamq/test/testkit"
)

const (
	opID       = "ops"
	opPassword = "e2e operator password"
)

// world is one broker process on a data directory of its own, the operator's
// release key pair, and the agents of the scenario.
type world struct {
	t      *testing.T
	dir    string
	addr   string // the broker's MQTT address, the same across restarts
	broker *brokerProc
	logs   *syncBuffer // the broker's log, every run of it
	key    string      // the release's private key file (otactl keygen)
	pub    string      // its public key file, trusted by the broker and the agents
	agents []*agent
	config string // the broker's configuration file, "" for none
	// proxies are the fault proxies between agents and the broker, by
	// the device behind each; reported on failure
	proxies map[string]*faultproxy.Proxy

	mu       sync.Mutex
	rollouts []string // created, for the status on failure
}

// newWorld starts the broker, with config (YAML, config/otamq.example.yaml)
// as its configuration file unless "", and makes and trusts a release key
// with otactl. On failure the world prints the broker's log, each agent's
// log and the status of every rollout it created.
func newWorld(t *testing.T, config string) *world {
	t.Helper()
	built(t, "otactl")
	built(t, "otamq-agent")
	w := &world{t: t, dir: t.TempDir(), addr: freePort(t), logs: &syncBuffer{}}
	if config != "" {
		w.config = filepath.Join(w.dir, "otamq.yaml")
		if err := os.WriteFile(w.config, []byte(config), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	w.start()
	t.Cleanup(func() { w.broker.kill() })
	t.Cleanup(w.report)
	w.must("keygen", "--out", w.dir, "--name", "release")
	w.key, w.pub = filepath.Join(w.dir, "release.key"), filepath.Join(w.dir, "release.pub")
	w.must("key", "add", w.pub, "--name", "e2e")
	return w
}

// report prints, when the test failed, what a person needs to see why.
func (w *world) report() {
	if !w.t.Failed() {
		return
	}
	w.mu.Lock()
	ids := append([]string(nil), w.rollouts...)
	w.mu.Unlock()
	for _, id := range ids {
		out, errOut, code := w.otactl("rollout", "status", id)
		w.t.Logf("otactl rollout status %s (exit %d):\n%s%s", id, code, out, errOut)
		out, errOut, code = w.otactl("rollout", "devices", id)
		w.t.Logf("otactl rollout devices %s (exit %d):\n%s%s", id, code, out, errOut)
	}
	for _, a := range w.agents {
		a.stop()
		w.t.Logf("agent %s (group %s) log:\n%s", a.id, a.group, a.out.String())
		if px := w.proxies[a.id]; px != nil {
			w.t.Logf("fault proxy of %s: %+v", a.id, px.Stats())
		}
	}
	w.t.Logf("broker log:\n%s", w.logs.String())
}

// proxy starts a fault proxy to the broker for device id (seeded by the
// run's seed and n) and returns its MQTT URL.
func (w *world) proxy(id string, n uint64) (*faultproxy.Proxy, string) {
	w.t.Helper()
	px, err := faultproxy.Start(w.addr, int64(suite.seed+n))
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { _ = px.Close() })
	if w.proxies == nil {
		w.proxies = map[string]*faultproxy.Proxy{}
	}
	w.proxies[id] = px
	return px, "mqtt://" + px.Addr()
}

// brokerProc is one run of the otamq binary.
type brokerProc struct {
	cmd    *exec.Cmd
	http   string
	exited chan struct{}
}

// start runs otamq on the world's data directory and MQTT address and waits
// for its "otamq started" line.
func (w *world) start() {
	w.t.Helper()
	args := []string{"--data-dir", filepath.Join(w.dir, "data"), "--mqtt-addr", w.addr,
		"--http-addr", "127.0.0.1:0", "--log-format", "json", "--first-operator", opID}
	if w.config != "" {
		args = append(args, "--config", w.config)
	}
	cmd := exec.Command(built(w.t, "otamq"), args...)
	cmd.Env = append(os.Environ(), "OTAMQ_FIRST_OPERATOR_PASSWORD="+opPassword)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		w.t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	p := &brokerProc{cmd: cmd, exited: make(chan struct{})}
	started := make(chan string, 1)
	fmt.Fprintf(w.logs, "---- otamq started as pid %d\n", cmd.Process.Pid)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(w.logs, line)
			var rec struct{ Msg, HTTP string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "otamq started" {
				select {
				case started <- rec.HTTP:
				default:
				}
			}
		}
		_ = cmd.Wait()
		close(p.exited)
	}()
	select {
	case p.http = <-started:
	case <-p.exited:
		w.t.Fatalf("otamq exited at start:\n%s", w.logs.String())
	case <-time.After(30 * time.Second):
		w.t.Fatalf("otamq did not start:\n%s", w.logs.String())
	}
	w.broker = p
}

// kill ends the broker with SIGKILL and waits until it is gone.
func (p *brokerProc) kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// freePort is a loopback address nobody listens on now, so that a
// restarted broker keeps its address.
func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// otactl runs otactl as the operator against the world's broker.
func (w *world) otactl(args ...string) (stdout, stderr string, code int) {
	cmd := exec.Command(built(w.t, "otactl"), args...)
	cmd.Env = append(os.Environ(), "OTAMQ_URL=mqtt://"+w.addr, "OTAMQ_USER="+opID, "OTAMQ_PASSWORD="+opPassword)
	cmd.Dir = w.dir
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = 0
	if err != nil {
		code = -1
		if x, ok := err.(*exec.ExitError); ok {
			code = x.ExitCode()
		}
	}
	return o.String(), e.String(), code
}

// must runs otactl and fails the test unless it exits 0.
func (w *world) must(args ...string) string {
	w.t.Helper()
	out, errOut, code := w.otactl(args...)
	if code != 0 {
		w.t.Fatalf("otactl %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// mustJSON runs otactl --json and decodes its output into v.
func (w *world) mustJSON(v any, args ...string) {
	w.t.Helper()
	out := w.must(append([]string{"--json"}, args...)...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		w.t.Fatalf("otactl --json %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// group is a group of the fleet and how many devices it has.
type group struct {
	name string
	n    int
}

// agentOpts are how the agents of a group run: the broker URL they are
// given ("" for the broker's own address) and flags added to the agent's.
type agentOpts struct {
	url   string
	flags []string
}

// fleet registers the devices of groups with otactl device import (IDs
// dev-01..., shuffled into the groups by the seed), starts an agent for
// each on its factory image 1.0.0 (with opts(id, group) unless opts is
// nil) and waits until all are online.
func (w *world) fleet(seed uint64, groups []group, opts func(id, group string) agentOpts) []*agent {
	w.t.Helper()
	var names []string
	for _, g := range groups {
		for range g.n {
			names = append(names, g.name)
		}
	}
	rng(seed).Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	csv := "id,hardware,groups\n"
	ids := make([]string, len(names))
	for i, g := range names {
		ids[i] = fmt.Sprintf("dev-%02d", i+1)
		csv += ids[i] + ",esp32-v2," + g + "\n"
	}
	tok := w.importDevices(csv)
	var out []*agent
	for i, id := range ids {
		var o agentOpts
		if opts != nil {
			o = opts(id, names[i])
		}
		out = append(out, w.startAgent(id, names[i], tok[id], o))
	}
	w.waitFleet(out, "1.0.0")
	return out
}

// importDevices registers the devices of csv (id,hardware,groups rows
// after the header) with otactl device import and returns their tokens by
// ID.
func (w *world) importDevices(csv string) map[string]string {
	w.t.Helper()
	file, tokens := filepath.Join(w.dir, "fleet.csv"), filepath.Join(w.dir, "fleet.tokens")
	if err := os.WriteFile(file, []byte(csv), 0o600); err != nil {
		w.t.Fatal(err)
	}
	w.must("device", "import", file, "--tokens", tokens)
	b, err := os.ReadFile(tokens)
	if err != nil {
		w.t.Fatal(err)
	}
	tok := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n")[1:] {
		id, t, _ := strings.Cut(line, ",")
		tok[id] = t
	}
	return tok
}

// device is a row of otactl --json device list.
type device struct {
	ID     string       `json:"id"`
	Groups []string     `json:"groups"`
	Status fleet.Status `json:"status"`
}

// devices is the broker's view of every device (otactl device list --all).
func (w *world) devices() map[string]device {
	w.t.Helper()
	var rows []device
	w.mustJSON(&rows, "device", "list", "--all")
	out := map[string]device{}
	for _, r := range rows {
		out[r.ID] = r
	}
	return out
}

// waitFleet waits until every agent of as is online on version, by the
// broker's device list.
func (w *world) waitFleet(as []*agent, version string) {
	w.t.Helper()
	eventually(w.t, 60*time.Second, func() error {
		devs := w.devices()
		for _, a := range as {
			if st := devs[a.id].Status; !st.Online || st.Firmware != version {
				return fmt.Errorf("%s: online %v, firmware %q; want online on %s", a.id, st.Online, st.Firmware, version)
			}
		}
		return nil
	})
}

// entry is a device timeline entry (otactl --json device timeline).
type entry struct {
	Time      time.Time `json:"time"`
	Source    string    `json:"source"`
	Type      string    `json:"type"`
	RolloutID string    `json:"rollout_id"`
	Version   string    `json:"version"`
	Error     string    `json:"error"`
	Detail    string    `json:"detail"`
}

// timeline is device id's timeline about rollout r (its offers with
// retries and stepping stones included), oldest first.
func (w *world) timeline(id, r string) []entry {
	w.t.Helper()
	var all []entry
	w.mustJSON(&all, "device", "timeline", id, "--limit", "100")
	var out []entry
	for i := len(all) - 1; i >= 0; i-- {
		e := all[i]
		if e.RolloutID == r || strings.HasPrefix(e.RolloutID, r+"~") {
			out = append(out, e)
		}
	}
	return out
}

// release is a release the operator signed and uploaded.
type release struct {
	ID      string `json:"id"`
	Version string `json:"version"`
	Size    int    `json:"size"`
	Seq     uint64 `json:"sequence"`
}

// signWith builds a simulated firmware image of size bytes (agent-c/README.md,
// "Simulated firmware image header": behaviour b, version v, random data
// from seed) and signs it with key (a private key file of otactl keygen)
// with otactl sign (sequence seq); it returns the image's file (the manifest
// is beside it, FILE.manifest).
func (w *world) signWith(key string, seed uint64, v string, b behaviour, seq uint64, size int) string {
	w.t.Helper()
	img := make([]byte, size)
	r := rng(seed ^ seq)
	for i := 64; i < size; i++ {
		img[i] = byte(r.Uint32())
	}
	copy(img, []byte{0xe9, 'S', 'I', 'M', 1, byte(b)})
	copy(img[16:48], v)
	file := filepath.Join(w.dir, "firmware-"+v+".bin")
	build := filepath.Join(w.dir, "build-"+v+".yaml")
	if err := os.WriteFile(file, img, 0o600); err != nil {
		w.t.Fatal(err)
	}
	desc := fmt.Sprintf("version: %s\nbuild_id: e2e-%d\nhardware: [esp32-v2]\nsequence: %d\n", v, suite.seed, seq)
	if err := os.WriteFile(build, []byte(desc), 0o600); err != nil {
		w.t.Fatal(err)
	}
	w.must("sign", "--key", key, "--build", build, file)
	return file
}

// release builds and signs an image with the world's key (signWith) and
// uploads it with otactl release upload.
func (w *world) release(seed uint64, v string, b behaviour, seq uint64, size int) release {
	w.t.Helper()
	file := w.signWith(w.key, seed, v, b, seq, size)
	var rel release
	w.mustJSON(&rel, "release", "upload", file, file+".manifest")
	if rel.Version != v || rel.Size != size || rel.Seq != seq {
		w.t.Fatalf("uploaded %+v, want version %s, size %d, sequence %d", rel, v, size, seq)
	}
	return rel
}

// behaviour of a simulated image once booted (agent-c/README.md).
type behaviour byte

const (
	healthy     behaviour = 0
	crashAtBoot behaviour = 1 // panics at boot
	healthFail  behaviour = 2 // runs, its health check fails
)

// rollout creates rollout id from spec with otactl rollout create and
// starts it with otactl rollout start.
func (w *world) rollout(id, spec string) {
	w.t.Helper()
	file := filepath.Join(w.dir, "rollout-"+id+".yaml")
	if err := os.WriteFile(file, []byte("id: "+id+"\n"+spec), 0o600); err != nil {
		w.t.Fatal(err)
	}
	w.must("rollout", "create", file)
	w.mu.Lock()
	w.rollouts = append(w.rollouts, id)
	w.mu.Unlock()
	w.must("rollout", "start", id)
}

// status is otactl --json rollout status id.
func (w *world) status(id string) rollout.View {
	w.t.Helper()
	var v rollout.View
	w.mustJSON(&v, "rollout", "status", id)
	return v
}

// waitRollout polls the rollout's status until cond holds.
func (w *world) waitRollout(id string, within time.Duration, cond func(rollout.View) error) rollout.View {
	w.t.Helper()
	var v rollout.View
	eventually(w.t, within, func() error {
		v = w.status(id)
		if err := cond(v); err != nil {
			return fmt.Errorf("rollout %s %s (%s): %v: %v", id, v.State, v.Reason, nonzero(v.Counts), err)
		}
		return nil
	})
	return v
}

// rolloutDevices is otactl --json rollout devices id.
func (w *world) rolloutDevices(id string) map[string]rollout.DeviceView {
	w.t.Helper()
	var ds []rollout.DeviceView
	w.mustJSON(&ds, "rollout", "devices", id)
	out := map[string]rollout.DeviceView{}
	for _, d := range ds {
		out[d.Device] = d
	}
	return out
}

func nonzero(m map[string]int) map[string]int {
	out := map[string]int{}
	for k, n := range m {
		if n != 0 {
			out[k] = n
		}
	}
	return out
}

// metrics are the broker's /metrics, parsed.
type metrics map[string]*dto.MetricFamily

func (w *world) metrics() metrics {
	w.t.Helper()
	resp, err := http.Get("http://" + w.broker.http + "/metrics")
	if err != nil {
		w.t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		w.t.Fatal(err)
	}
	return mf
}

// sum adds the values of metric name's series whose labels include every
// name=value pair of labels.
func (m metrics) sum(name string, labels ...string) float64 {
	f := m[name]
	if f == nil {
		return 0
	}
	var s float64
	for _, x := range f.Metric {
		have := map[string]string{}
		for _, l := range x.Label {
			have[l.GetName()] = l.GetValue()
		}
		ok := true
		for i := 0; i+1 < len(labels); i += 2 {
			ok = ok && have[labels[i]] == labels[i+1]
		}
		if !ok {
			continue
		}
		switch {
		case x.Counter != nil:
			s += x.Counter.GetValue()
		case x.Gauge != nil:
			s += x.Gauge.GetValue()
		case x.Untyped != nil:
			s += x.Untyped.GetValue()
		}
	}
	return s
}

// syncBuffer is testkit.SyncBuffer.
type syncBuffer = testkit.SyncBuffer
