// Package test holds otamq's black-box tests: a real broker (in-process or
// as a subprocess) on loopback, real MQTT clients (paho.golang and Debian's
// mosquitto clients), real bbolt files, real processes killed with SIGKILL.
package test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/cmd/otactl/rpc"
	"github.com/otamq/otamq/ota/access"
	"github.com/otamq/otamq/ota/fleet"
)

const (
	opID       = "ops"
	opPassword = "operator password for tests"
)

// binDir holds the otamq and otactl binaries built once for the tests that
// run them as processes.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "otamq-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

var buildOnce sync.Map // binary name -> *buildResult

type buildResult struct {
	once sync.Once
	path string
	err  error
}

// binary builds ./cmd/<name> once per test run and returns its path.
func binary(t testing.TB, name string) string {
	t.Helper()
	v, _ := buildOnce.LoadOrStore(name, &buildResult{})
	br := v.(*buildResult)
	br.once.Do(func() {
		br.path = filepath.Join(binDir, name)
		cmd := exec.Command("go", "build", "-o", br.path, "./cmd/"+name)
		cmd.Dir = repoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			br.err = fmt.Errorf("go build %s: %v\n%s", name, err, out)
		}
	})
	if br.err != nil {
		t.Fatal(br.err)
	}
	return br.path
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// needCommand fails (never skips) when a tool that `make deps` installs is
// missing: a skipped check must not look like a passing one.
func needCommand(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: run `make deps` (it installs the Debian packages in .ci/packages)", name)
	}
	return p
}

// testLogger discards logs unless OTAMQ_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("OTAMQ_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// testRules grant a telemetry tree outside the prefix, so the ACL tests can
// see delivery (or its absence) on topics devices publish to.
var testRules = []access.Rule{
	{Filter: "telemetry/{id}/#", Roles: []fleet.Role{fleet.RoleDevice, fleet.RoleGateway}, Access: "write"},
	{Filter: "telemetry/#", Roles: []fleet.Role{fleet.RoleOperator, fleet.RoleObserver}, Access: "read"},
}

// tb is a broker running in this process.
type tb struct {
	*broker.Broker
	t    testing.TB
	opts broker.Options
	adm  *rpc.Client
}

// startBroker runs a broker on loopback ports chosen by the kernel, with a
// fresh data directory and a known first operator.
func startBroker(t testing.TB, mods ...func(*broker.Options)) *tb {
	t.Helper()
	o := broker.Options{
		DataDir:               t.TempDir(),
		TCPAddr:               "127.0.0.1:0",
		HTTPAddr:              "127.0.0.1:0",
		FirstOperator:         opID,
		FirstOperatorPassword: opPassword,
		FlushInterval:         200 * time.Millisecond,
		Rules:                 testRules,
		Logger:                testLogger(),
	}
	for _, m := range mods {
		m(&o)
	}
	b, err := broker.New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	x := &tb{Broker: b, t: t, opts: o}
	t.Cleanup(func() {
		if x.adm != nil {
			_ = x.adm.Close()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return x
}

// url is the broker's plain MQTT URL.
func (b *tb) url() string { return "mqtt://" + b.Addr() }

// admin returns an operator client (connected once per broker).
func (b *tb) admin() *rpc.Client {
	b.t.Helper()
	if b.adm == nil {
		c, err := rpc.Dial(context.Background(), rpc.Config{URL: b.url(), Username: opID, Password: opPassword})
		if err != nil {
			b.t.Fatal(err)
		}
		b.adm = c
	}
	return b.adm
}

// register registers a device (role device or gateway) and returns its
// token.
func (b *tb) register(id, role, parent string, extra ...map[string]any) string {
	b.t.Helper()
	req := map[string]any{"id": id, "role": role, "parent": parent}
	for _, e := range extra {
		for k, v := range e {
			req[k] = v
		}
	}
	var res struct{ Token string }
	if err := b.admin().Call(context.Background(), "device/register", req, &res); err != nil {
		b.t.Fatal(err)
	}
	return res.Token
}

// addOperator adds an operator or observer with a password.
func (b *tb) addOperator(id, role, password string) {
	b.t.Helper()
	if err := b.admin().Call(context.Background(), "operator/add", map[string]any{"id": id, "role": role, "password": password}, nil); err != nil {
		b.t.Fatal(err)
	}
}

// eventually polls cond until it returns nil or the deadline passes.
func eventually(t testing.TB, within time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	delay := 5 * time.Millisecond
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %v", within, err)
		}
		time.Sleep(delay)
		delay = min(2*delay, 200*time.Millisecond)
	}
}

// client is a paho MQTT v5 client that records what it receives.
type client struct {
	t   testing.TB
	id  string
	cli *paho.Client
	ca  *paho.Connack

	mu   sync.Mutex
	msgs []*paho.Publish
	got  chan struct{} // signalled on every message
}

type clientOpts struct {
	username, password string
	maxPacket          uint32
	will               *paho.WillMessage
	keepAlive          uint16
	conn               net.Conn
}

// dialClient connects a paho v5 client. A refused CONNECT returns the
// CONNACK and an error.
func dialClient(t testing.TB, addr, id string, o clientOpts) (*client, error) {
	t.Helper()
	conn := o.conn
	if conn == nil {
		var err error
		if conn, err = net.DialTimeout("tcp", addr, 5*time.Second); err != nil {
			return nil, err
		}
	}
	c := &client{t: t, id: id, got: make(chan struct{}, 1)}
	c.cli = paho.NewClient(paho.ClientConfig{
		ClientID: id,
		Conn:     conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			c.mu.Lock()
			c.msgs = append(c.msgs, pr.Packet)
			c.mu.Unlock()
			select {
			case c.got <- struct{}{}:
			default:
			}
			return true, nil
		}},
	})
	cp := &paho.Connect{ClientID: id, KeepAlive: o.keepAlive, CleanStart: true, WillMessage: o.will}
	if o.keepAlive == 0 {
		cp.KeepAlive = 30
	}
	if o.username != "" {
		cp.Username, cp.UsernameFlag = o.username, true
	}
	if o.password != "" {
		cp.Password, cp.PasswordFlag = []byte(o.password), true
	}
	if o.maxPacket > 0 {
		mp := o.maxPacket
		cp.Properties = &paho.ConnectProperties{MaximumPacketSize: &mp}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, err := c.cli.Connect(ctx, cp)
	c.ca = ca
	if err != nil {
		_ = conn.Close()
		return c, err
	}
	t.Cleanup(func() { _ = c.cli.Disconnect(&paho.Disconnect{}) })
	return c, nil
}

// device connects a registered device with its token.
func (b *tb) device(id, token string) *client {
	b.t.Helper()
	c, err := dialClient(b.t, b.Addr(), id, clientOpts{username: id, password: token})
	if err != nil {
		b.t.Fatalf("connect %s: %v", id, err)
	}
	return c
}

// operator connects an operator or observer.
func (b *tb) operator(id, password string) *client {
	b.t.Helper()
	c, err := dialClient(b.t, b.Addr(), id, clientOpts{username: id, password: password})
	if err != nil {
		b.t.Fatalf("connect %s: %v", id, err)
	}
	return c
}

// publish sends at QoS 1 and returns the PUBACK reason code.
func (c *client) publish(topic string, payload []byte) byte {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pr, err := c.cli.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: payload})
	if pr == nil {
		c.t.Fatalf("%s publish %s: %v", c.id, topic, err)
	}
	return pr.ReasonCode
}

// subscribe subscribes at QoS 1 and returns the SUBACK reason code.
func (c *client) subscribe(filter string) byte {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sa, err := c.cli.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if sa == nil || len(sa.Reasons) != 1 {
		c.t.Fatalf("%s subscribe %s: %v", c.id, filter, err)
	}
	return sa.Reasons[0]
}

// received returns the topics received so far.
func (c *client) received() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, len(c.msgs))
	for i, m := range c.msgs {
		out[i] = m.Topic
	}
	return out
}

// waitFor waits until a message on topic has arrived and returns it.
func (c *client) waitFor(topic string, within time.Duration) *paho.Publish {
	c.t.Helper()
	var found *paho.Publish
	eventually(c.t, within, func() error {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, m := range c.msgs {
			if m.Topic == topic {
				found = m
				return nil
			}
		}
		return fmt.Errorf("%s has not received %s (got %v)", c.id, topic, topicsOf(c.msgs))
	})
	return found
}

func topicsOf(ms []*paho.Publish) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Topic)
	}
	return out
}

// serverPublish publishes as the broker itself (like an offer or a command
// would be sent).
func (b *tb) serverPublish(topic string, payload []byte) {
	b.t.Helper()
	if err := b.Server().Publish(topic, payload, false, 1); err != nil {
		b.t.Fatal(err)
	}
}

// mosq runs a mosquitto client tool and returns its combined output.
func mosq(t testing.TB, tool string, args ...string) (string, error) {
	t.Helper()
	needCommand(t, tool)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// hostPort splits the broker address for the mosquitto tools.
func (b *tb) hostPort() (string, string) {
	h, p, _ := net.SplitHostPort(b.Addr())
	return h, p
}

// metric scrapes /metrics and returns the value of the sample whose line
// starts with name (including labels), or an error.
func (b *tb) metric(series string) (string, error) {
	out, err := httpGet("http://" + b.HTTPAddr() + "/metrics")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, series+" ") {
			return strings.TrimSpace(strings.TrimPrefix(line, series)), nil
		}
	}
	return "", fmt.Errorf("no series %s in /metrics", series)
}

// httpGet returns the body of a GET.
func httpGet(url string) (string, error) {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), nil
}

func atoi(s string) int {
	var f float64
	_, _ = fmt.Sscan(s, &f)
	return int(f)
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

func dialTCP(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}
