package config

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/otamq/otamq/broker"
)

// The example documents the defaults: parsing it must give exactly the
// options an empty file gives, after the broker fills in its defaults.
func TestExampleIsValidAndMatchesDefaults(t *testing.T) {
	f, err := Load("otamq.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got, err := f.Options(io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	empty, err := File{}.Options(io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if a, b := broker.Effective(got), broker.Effective(empty); a != b {
		t.Fatalf("example file differs from the defaults:\nexample:  %s\ndefaults: %s", a, b)
	}
}

func TestUnknownFieldRefused(t *testing.T) {
	_, err := Parse([]byte("mqtt:\n  tcp_adr: 1.2.3.4:1883\n"))
	if err == nil || !strings.Contains(err.Error(), "tcp_adr") {
		t.Fatalf("typo accepted or not named: %v", err)
	}
}

// Every problem of a file is reported at once, each naming its key: the
// decoding problems Load finds and the value problems Options finds.
func TestInvalidReportedTogether(t *testing.T) {
	path := filepath.Join(t.TempDir(), "otamq.yaml")
	if err := os.WriteFile(path, []byte(`
prefix: "a/b"
mqtt:
  tcp_addr: "off"
  tcp_adr: 1.2.3.4:1883
  max_packet_size: 10
  connect_timeout: 10
  session_expiry: forever
  max_clients: many
  max_packet_size: 11
http:
  addr: "127.0.0.1:99999"
fleet: 3
rules:
  - filter: "telemetry/#"
    access: sometimes
  - filter: "t/#"
    access: read
    rolez: [device]
log:
  level: loud
  format: xml
`), 0o600); err != nil {
		t.Fatal(err)
	}
	f, loadErr := Load(path)
	if loadErr == nil {
		t.Fatal("Load accepted the file")
	}
	_, optErr := f.Options(io.Discard)
	if optErr == nil {
		t.Fatal("Options accepted the file")
	}
	msg := errors.Join(loadErr, optErr).Error()
	for _, want := range []string{
		path + ": line 5: mqtt.tcp_adr: unknown setting (did you mean mqtt.tcp_addr?)",
		"line 7: mqtt.connect_timeout: duration 10: add a unit, e.g. 10s",
		"line 8: mqtt.session_expiry: duration \"forever\"",
		"line 9: mqtt.max_clients: \"many\" is not an integer",
		"line 10: mqtt.max_packet_size: given twice (first on line 6)",
		"line 13: fleet: want a mapping",
		"line 19: rules[1].rolez: unknown setting (did you mean rules[1].roles?)",
		"no MQTT listener: the plain one is off and no TLS one is set (set mqtt.tcp_addr and mqtt.tls_addr)",
		"max packet size 10 is below 1024 bytes (set mqtt.max_packet_size)",
		`http listener "127.0.0.1:99999": port "99999" is not a number from 0 to 65535 (set http.addr)`,
		"(set prefix)",
		`access "sometimes" must be read, write or readwrite (set rules[0])`,
		`log level "loud": want debug, info, warn or error (set log.level)`,
		`log format "xml": want text or json (set log.format)`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("the errors do not say %q:\n%s", want, msg)
		}
	}
	// One problem per line, each naming a key.
	for _, line := range strings.Split(msg, "\n") {
		if !strings.Contains(line, "(set ") && !regexp.MustCompile(`line \d+: [a-z_\[\]0-9.]+: `).MatchString(line) {
			t.Errorf("line names no key: %q", line)
		}
	}
}

// A valid file passes Load, and the durations with units arrive.
func TestDurations(t *testing.T) {
	f, err := Parse([]byte("mqtt:\n  connect_timeout: 1m30s\n  session_expiry: 2h\nfleet:\n  flush_interval: 500ms\n"))
	if err != nil {
		t.Fatal(err)
	}
	if f.MQTT.ConnectTimeout != 90*time.Second || f.MQTT.SessionExpiry != 2*time.Hour || f.Fleet.FlushInterval != 500*time.Millisecond {
		t.Fatalf("decoded %+v %+v", f.MQTT, f.Fleet)
	}
	for _, bad := range []string{"-5s", "10", "1.5", "[1]"} {
		if _, err := Parse([]byte("mqtt:\n  connect_timeout: " + bad + "\n")); err == nil || !strings.Contains(err.Error(), "mqtt.connect_timeout") {
			t.Errorf("connect_timeout %s: %v", bad, err)
		}
	}
}

// An empty file, or one with only comments, is the defaults.
func TestEmptyFile(t *testing.T) {
	for _, body := range []string{"", "# nothing\n", "---\n"} {
		f, err := Parse([]byte(body))
		if err != nil {
			t.Fatalf("%q: %v", body, err)
		}
		if !reflect.DeepEqual(f, File{}) {
			t.Fatalf("%q: %+v", body, f)
		}
	}
	if _, err := Parse([]byte("- a\n- b\n")); err == nil || !strings.Contains(err.Error(), "want a mapping") {
		t.Fatalf("a list as the file: %v", err)
	}
}

func TestLogLevels(t *testing.T) {
	if _, err := (Log{Level: "loud"}).Logger(os.Stderr); err == nil {
		t.Error("bad level accepted")
	}
	if _, err := (Log{Format: "xml"}).Logger(os.Stderr); err == nil {
		t.Error("bad format accepted")
	}
}
