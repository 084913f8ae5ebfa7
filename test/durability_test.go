package test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	bolt "go.etcd.io/bbolt"

	"github.com/otamq/otamq/cmd/otactl/rpc"
)

// proc is an otamq broker running as a child process.
type proc struct {
	t        testing.TB
	cmd      *exec.Cmd
	mqtt     string
	http     string
	exited   chan struct{}
	mu       sync.Mutex
	logLines []string
}

// startProc runs the otamq binary on dataDir with kernel-chosen ports and
// waits for its "started" log line.
func startProc(t testing.TB, dataDir string, extra ...string) *proc {
	t.Helper()
	args := append([]string{"--data-dir", dataDir, "--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--log-format", "json",
		"--first-operator", opID}, extra...)
	cmd := exec.Command(binary(t, "otamq"), args...)
	cmd.Env = append(os.Environ(), "OTAMQ_FIRST_OPERATOR_PASSWORD="+opPassword)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, exited: make(chan struct{})}
	started := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.logLines = append(p.logLines, line)
			p.mu.Unlock()
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "otamq started" {
				p.mqtt, _ = rec["mqtt"].(string)
				p.http, _ = rec["http"].(string)
				once.Do(func() { close(started) })
			}
		}
	}()
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() { p.kill() })
	select {
	case <-started:
	case <-p.exited:
		t.Fatalf("otamq exited at start:\n%s", p.logs())
	case <-time.After(30 * time.Second):
		t.Fatalf("otamq did not start:\n%s", p.logs())
	}
	return p
}

func (p *proc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.logLines, "\n")
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop() {
	p.t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		p.t.Fatalf("otamq did not stop on SIGTERM:\n%s", p.logs())
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		p.t.Fatalf("otamq exited with %d:\n%s", code, p.logs())
	}
}

func (p *proc) admin() *rpc.Client {
	p.t.Helper()
	c, err := rpc.Dial(context.Background(), rpc.Config{URL: "mqtt://" + p.mqtt, Username: opID, Password: opPassword})
	if err != nil {
		p.t.Fatal(err)
	}
	return c
}

// TestDurabilityKill9 registers devices from many goroutines and kills the
// broker with SIGKILL while requests are in flight. After a restart every
// registration that was acknowledged must be there, with its token working
// and its audit record written, and the database must pass bbolt's
// consistency check.
func TestDurabilityKill9(t *testing.T) {
	dataDir := t.TempDir()
	p := startProc(t, dataDir)
	adm := p.admin()

	const workers = 16
	var mu sync.Mutex
	acked := map[string]string{} // id -> token
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("dev-%02d-%04d", w, i)
				var res struct{ Token string }
				if err := adm.Call(context.Background(), "device/register", map[string]any{"id": id, "hardware": "esp32-v2"}, &res); err != nil {
					return // the broker is gone
				}
				mu.Lock()
				acked[id] = res.Token
				mu.Unlock()
			}
		}()
	}
	// Kill once a good number of registrations were acknowledged, with
	// more still in flight.
	eventually(t, 60*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(acked) < 300 {
			return fmt.Errorf("%d acknowledged", len(acked))
		}
		return nil
	})
	p.kill()
	close(stop)
	wg.Wait()
	mu.Lock()
	snapshot := make(map[string]string, len(acked))
	for k, v := range acked {
		snapshot[k] = v
	}
	mu.Unlock()
	t.Logf("killed with %d registrations acknowledged", len(snapshot))

	// Restart on the same data.
	p2 := startProc(t, dataDir)
	adm2 := p2.admin()
	have := map[string]bool{}
	after := ""
	for {
		var page struct {
			Devices []struct{ ID string } `json:"devices"`
			Next    string                `json:"next"`
		}
		if err := adm2.Call(context.Background(), "device/list", map[string]any{"limit": 1000, "after": after}, &page); err != nil {
			t.Fatal(err)
		}
		for _, d := range page.Devices {
			have[d.ID] = true
		}
		if page.Next == "" {
			break
		}
		after = page.Next
	}
	missing := 0
	for id := range snapshot {
		if !have[id] {
			missing++
			if missing < 5 {
				t.Errorf("acknowledged registration %s lost", id)
			}
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged registrations lost", missing, len(snapshot))
	}
	// Tokens work: connect a sample of the devices.
	n := 0
	for id, tok := range snapshot {
		if n == 10 {
			break
		}
		n++
		c, err := dialClient(t, p2.mqtt, id, clientOpts{username: id, password: tok})
		if err != nil {
			t.Fatalf("%s cannot connect with its acknowledged token: %v", id, err)
		}
		_ = c.cli.Disconnect(&paho.Disconnect{})
	}
	// Every acknowledged registration has its audit record.
	var audit struct {
		Records []struct{ Target, Result string } `json:"records"`
	}
	if err := adm2.Call(context.Background(), "audit/list", map[string]any{"action": "device/register", "limit": 1000}, &audit); err != nil {
		t.Fatal(err)
	}
	audited := map[string]bool{}
	for _, r := range audit.Records {
		if r.Result == "ok" {
			audited[r.Target] = true
		}
	}
	if len(snapshot) <= 1000 {
		for id := range snapshot {
			if !audited[id] {
				t.Fatalf("registration %s has no audit record", id)
			}
		}
	}
	_ = adm2.Close()
	p2.stop()

	// The file is consistent.
	db, err := bolt.Open(filepath.Join(dataDir, "otamq.db"), 0o600, &bolt.Options{Timeout: 5 * time.Second, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return err
		}
		return nil
	}); err != nil {
		t.Fatalf("bbolt check: %v", err)
	}
}

// TestGracefulShutdownKeepsStatus: heartbeats are coalesced in memory, and
// a SIGTERM writes them before exit.
func TestGracefulShutdownKeepsStatus(t *testing.T) {
	dataDir := t.TempDir()
	// A long flush interval: only the shutdown flush can save the status.
	cfg := filepath.Join(t.TempDir(), "otamq.yaml")
	if err := os.WriteFile(cfg, []byte("fleet:\n  flush_interval: 1h\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, dataDir, "--config", cfg)
	adm := p.admin()
	var res struct{ Token string }
	if err := adm.Call(context.Background(), "device/register", map[string]any{"id": "d1"}, &res); err != nil {
		t.Fatal(err)
	}
	c, err := dialClient(t, p.mqtt, "d1", clientOpts{username: "d1", password: res.Token})
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if rc := c.publish("dm/d1/hb", hbPayload); rc != 0 {
			t.Fatalf("heartbeat: 0x%02x", rc)
		}
	}
	_ = adm.Close()
	p.stop()

	p2 := startProc(t, dataDir)
	adm2 := p2.admin()
	defer adm2.Close()
	var v struct {
		Status struct {
			Heartbeats       int    `json:"heartbeats"`
			Online           bool   `json:"online"`
			DisconnectReason string `json:"disconnect_reason"`
		} `json:"status"`
	}
	if err := adm2.Call(context.Background(), "device/get", map[string]any{"id": "d1"}, &v); err != nil {
		t.Fatal(err)
	}
	if v.Status.Heartbeats != 5 || v.Status.Online {
		t.Fatalf("after restart: %+v", v.Status)
	}
}
