package test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/otamq/otamq/broker"
)

// startupCase is a broker that cannot start and what it must say.
type startupCase struct {
	name string
	// setup returns the broker's options (on dir) and the flags that say
	// the same to the otamq binary.
	setup func(t *testing.T, dir string) (mod func(*broker.Options), flags []string)
	key   string // the setting the error names
	want  string // in the error's message
	// flagHint is how the binary names the setting, and code its exit
	// status.
	flagHint string
	code     int
}

// occupied returns the address of a listening socket held for the test.
func occupied(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l.Addr().String()
}

func writeFile(t *testing.T, path, body string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

var startupCases = []startupCase{
	{
		name: "mqtt port in use",
		setup: func(t *testing.T, dir string) (func(*broker.Options), []string) {
			a := occupied(t)
			return func(o *broker.Options) { o.TCPAddr = a }, []string{"--mqtt-addr", a}
		},
		key: "mqtt.tcp_addr", want: "mqtt listener 127.0.0.1:", flagHint: "(set --mqtt-addr or mqtt.tcp_addr)", code: 1,
	},
	{
		name: "http port in use",
		setup: func(t *testing.T, dir string) (func(*broker.Options), []string) {
			a := occupied(t)
			return func(o *broker.Options) { o.HTTPAddr = a }, []string{"--http-addr", a}
		},
		key: "http.addr", want: ": address already in use", flagHint: "(set --http-addr or http.addr)", code: 1,
	},
	{
		name: "tls port in use",
		setup: func(t *testing.T, dir string) (func(*broker.Options), []string) {
			a := occupied(t)
			cert, key := testServerCert(t, dir)
			return func(o *broker.Options) { o.TLSAddr, o.TLSCert, o.TLSKey = a, cert, key },
				[]string{"--tls-addr", a, "--tls-cert", cert, "--tls-key", key}
		},
		key: "mqtt.tls_addr", want: "mqtt tls listener 127.0.0.1:", flagHint: "(set --tls-addr or mqtt.tls_addr)", code: 1,
	},
	{
		name: "bad address",
		setup: func(t *testing.T, dir string) (func(*broker.Options), []string) {
			return func(o *broker.Options) { o.TCPAddr = "127.0.0.1:http-ish" }, []string{"--mqtt-addr", "127.0.0.1:http-ish"}
		},
		key: "mqtt.tcp_addr", want: `mqtt listener "127.0.0.1:http-ish": port "http-ish" is not a number from 0 to 65535`,
		flagHint: "(set --mqtt-addr or mqtt.tcp_addr)", code: 2,
	},
	{
		name: "address without port",
		setup: func(t *testing.T, dir string) (func(*broker.Options), []string) {
			return func(o *broker.Options) { o.HTTPAddr = "localhost" }, []string{"--http-addr", "localhost"}
		},
		key: "http.addr", want: `http listener "localhost": missing port in address`, flagHint: "(set --http-addr or http.addr)", code: 2,
	},
	{
		name: "missing tls certificate",
		setup: func(t *testing.T, dir string) (func(*broker.Options), []string) {
			_, key := testServerCert(t, dir)
			missing := filepath.Join(dir, "nope.pem")
			return func(o *broker.Options) { o.TLSAddr, o.TLSCert, o.TLSKey = "127.0.0.1:0", missing, key },
				[]string{"--tls-addr", "127.0.0.1:0", "--tls-cert", missing, "--tls-key", key}
		},
		key: "mqtt.tls_cert", want: "nope.pem: no such file or directory", flagHint: "(set --tls-cert or mqtt.tls_cert)", code: 1,
	},
	{
		name: "missing tls key",
		setup: func(t *testing.T, dir string) (func(*broker.Options), []string) {
			cert, _ := testServerCert(t, dir)
			missing := filepath.Join(dir, "nope.key")
			return func(o *broker.Options) { o.TLSAddr, o.TLSCert, o.TLSKey = "127.0.0.1:0", cert, missing },
				[]string{"--tls-addr", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", missing}
		},
		key: "mqtt.tls_key", want: "nope.key: no such file or directory", flagHint: "(set --tls-key or mqtt.tls_key)", code: 1,
	},
	{
		name: "tls client ca without a certificate",
		setup: func(t *testing.T, dir string) (func(*broker.Options), []string) {
			cert, key := testServerCert(t, dir)
			ca := writeFile(t, filepath.Join(dir, "ca.pem"), "not a certificate\n")
			return func(o *broker.Options) { o.TLSAddr, o.TLSCert, o.TLSKey, o.TLSClientCA = "127.0.0.1:0", cert, key, ca },
				[]string{"--tls-addr", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key, "--tls-client-ca", ca}
		},
		key: "mqtt.tls_client_ca", want: "no PEM certificate in it", flagHint: "(set --tls-client-ca or mqtt.tls_client_ca)", code: 1,
	},
	{
		name: "data directory is a file",
		setup: func(t *testing.T, dir string) (func(*broker.Options), []string) {
			f := writeFile(t, filepath.Join(dir, "file"), "x")
			d := filepath.Join(f, "data")
			return func(o *broker.Options) { o.DataDir = d }, []string{"--data-dir", d}
		},
		key: "data_dir", want: "data directory ", flagHint: "(set --data-dir or data_dir)", code: 1,
	},
	{
		name: "first operator ID taken by a device",
		setup: func(t *testing.T, dir string) (func(*broker.Options), []string) {
			// A database with a device and no operator: the broker
			// fails at its very last step, after its hooks started.
			d := filepath.Join(dir, "taken")
			seedFleet(t, d, 1)
			return func(o *broker.Options) { o.DataDir, o.FirstOperator = d, "s00000" }, []string{"--data-dir", d, "--first-operator", "s00000"}
		},
		key: "admin.first_operator", want: "first operator s00000: the ID is already registered (as a device, gateway or observer)",
		flagHint: "(set --first-operator or admin.first_operator)", code: 1,
	},
}

// testServerCert returns a server certificate and its key.
func testServerCert(t *testing.T, _ string) (cert, key string) {
	t.Helper()
	cert, key, _ = newPKI(t, "startup").issue("localhost", true)
	return cert, key
}

// goroutinesBack waits until no more goroutines run than before, and dumps
// them when some are left.
func goroutinesBack(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after a failed broker.New, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// noOperatorCreated checks that a failed start left no operator: a broker
// that then starts on the same directory creates the first one and shows
// its generated password, and no password file was left behind.
func noOperatorCreated(t *testing.T, dataDir string) {
	t.Helper()
	if entries, err := os.ReadDir(dataDir); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), "first-operator") {
				t.Fatalf("a failed start left %s", e.Name())
			}
		}
	}
	b, err := broker.New(broker.Options{DataDir: dataDir, TCPAddr: "127.0.0.1:0", HTTPAddr: "off", Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	}()
	if b.FirstOperator == nil || b.FirstOperator.Password == "" {
		t.Fatal("the failed start had created the first operator: its password was never shown")
	}
	// Its password is in first-operator.txt, mode 0600, and no other file
	// of the bootstrap is left.
	st, err := os.Stat(b.FirstOperator.File)
	if err != nil || filepath.Base(b.FirstOperator.File) != "first-operator.txt" || st.Mode().Perm() != 0o600 {
		t.Fatalf("first operator file %s: %v %v", b.FirstOperator.File, st, err)
	}
	if body, _ := os.ReadFile(b.FirstOperator.File); !strings.Contains(string(body), "OTAMQ_PASSWORD="+b.FirstOperator.Password+"\n") {
		t.Fatalf("first operator file:\n%s", body)
	}
	entries, _ := os.ReadDir(dataDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "first-operator") && e.Name() != "first-operator.txt" {
			t.Errorf("bootstrap left %s", e.Name())
		}
	}
}

// TestStartupFailureInProcess: broker.New fails with a *SettingError that
// names the setting, leaves no goroutine running, and creates no operator.
func TestStartupFailureInProcess(t *testing.T) {
	for _, c := range startupCases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			mod, _ := c.setup(t, dir)
			o := broker.Options{DataDir: filepath.Join(dir, "data"), TCPAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Logger: testLogger()}
			mod(&o)
			before := runtime.NumGoroutine()
			b, err := broker.New(o)
			if err == nil {
				_ = b.Shutdown(context.Background())
				t.Fatal("broker.New succeeded")
			}
			var se *broker.SettingError
			if !errors.As(err, &se) || !containsKey(se.Keys, c.key) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q (%T), want a SettingError for %s saying %q", err, err, c.key, c.want)
			}
			goroutinesBack(t, before)
			if _, err := os.Stat(o.DataDir); err == nil {
				noOperatorCreated(t, o.DataDir)
			}
		})
	}
}

func containsKey(keys []string, k string) bool {
	for _, x := range keys {
		if x == k {
			return true
		}
	}
	return false
}

// TestStartupFailureLockedDataDir: a second broker on a data directory in
// use says so, and leaves nothing running.
func TestStartupFailureLockedDataDir(t *testing.T) {
	first := startBroker(t)
	before := runtime.NumGoroutine()
	_, err := broker.New(broker.Options{DataDir: first.opts.DataDir, TCPAddr: "127.0.0.1:0", HTTPAddr: "off", Logger: testLogger()})
	want := "data directory " + first.opts.DataDir + " is in use by another otamq (lock held) (set data_dir)"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %q", err, want)
	}
	goroutinesBack(t, before)
	// The first broker still works.
	first.register("dev-1", "device", "")
}

// runOtamq runs the otamq binary and returns its output and exit status.
func runOtamq(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t, "otamq"), args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatal(err)
		}
		code = ee.ExitCode()
	}
	return out.String(), errb.String(), code
}

// TestStartupFailureBinary: the otamq binary says what is wrong in one
// line naming the flag and the configuration key, exits 1 (2 for a value
// refused before starting), never panics, and shows no operator.
func TestStartupFailureBinary(t *testing.T) {
	for _, c := range startupCases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			_, flags := c.setup(t, dir)
			args := append([]string{"--data-dir", filepath.Join(dir, "data"), "--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}, flags...)
			stdout, stderr, code := runOtamq(t, nil, args...)
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			last := lines[len(lines)-1]
			if code != c.code || !strings.HasPrefix(last, "otamq: ") || !strings.Contains(last, c.want) || !strings.HasSuffix(last, c.flagHint) {
				t.Fatalf("exit %d, last line %q; want exit %d, a line with %q ending %q\nstderr:\n%s", code, last, c.code, c.want, c.flagHint, stderr)
			}
			if strings.Contains(stderr, "panic") || strings.Contains(stdout, "First operator") {
				t.Fatalf("stdout:\n%s\nstderr:\n%s", stdout, stderr)
			}
		})
	}
	// The exact line the operator sees for a port in use.
	addr := occupied(t)
	_, stderr, code := runOtamq(t, nil, "--data-dir", t.TempDir(), "--mqtt-addr", addr, "--http-addr", "off")
	want := "otamq: mqtt listener " + addr + ": address already in use (set --mqtt-addr or mqtt.tcp_addr)\n"
	if code != 1 || !strings.HasSuffix(stderr, want) {
		t.Fatalf("exit %d, stderr:\n%s\nwant it to end with %q", code, stderr, want)
	}
}

// TestStartupFailureBinaryLocked: a second otamq process on the data
// directory of a running one.
func TestStartupFailureBinaryLocked(t *testing.T) {
	dir := t.TempDir()
	p := startProc(t, dir)
	_, stderr, code := runOtamq(t, nil, "--data-dir", dir, "--mqtt-addr", "127.0.0.1:0", "--http-addr", "off")
	want := "otamq: data directory " + dir + " is in use by another otamq (lock held) (set --data-dir or data_dir)\n"
	if code != 1 || !strings.HasSuffix(stderr, want) || strings.Contains(stderr, "panic") {
		t.Fatalf("exit %d, stderr:\n%s\nwant it to end with %q", code, stderr, want)
	}
	p.stop()
}
