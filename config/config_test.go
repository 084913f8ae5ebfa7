package config

import (
	"io"
	"os"
	"strings"
	"testing"

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

func TestInvalidReportedTogether(t *testing.T) {
	f, err := Parse([]byte(`
prefix: "a/b"
mqtt:
  tcp_addr: "off"
  max_packet_size: 10
rules:
  - filter: "dm/x/#"
    access: sometimes
`))
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.Options(io.Discard)
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"no MQTT listener", "max_packet_size", "prefix", "rule 1", "access"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
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
