package manifest

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseBuild(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "out"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "out", "boot.bin"), []byte("abc"), 0o644); err != nil {
		t.Fatal(err)
	}
	abc := "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	in := `
version: 1.2.4
build_id: "20251124-143022"
hardware: [esp32-v2, esp32-v3]
min_bootloader: 2.1.0
secure_version: 2
kind: feature-flags
components:
  - name: esp-idf
    version: v5.3.1
    digest: ` + strings.ToUpper(abc) + `
  - name: bootloader
    version: 2.1.0
    file: out/boot.bin
`
	b, err := ParseBuild([]byte(in), dir)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1764000000, 0)
	m, err := b.Manifest(1000, seq32, now)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := ParseDigest(abc)
	want := &Manifest{Sequence: 1764000000, Version: "1.2.4", BuildID: "20251124-143022", Hardware: []string{"esp32-v2", "esp32-v3"},
		MinBootloader: "2.1.0", ImageSize: 1000, ImageDigest: seq32, SecureVersion: 2, Kind: KindFeatureFlags,
		Components: []Component{{"esp-idf", "v5.3.1", d}, {"bootloader", "2.1.0", d}}}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("manifest\n%+v\nwant\n%+v", m, want)
	}

	// An explicit sequence, even 0, wins over the default; kind defaults
	// to firmware.
	b, err = ParseBuild([]byte("version: 1.0.0\nhardware: [a]\nsequence: 0\n"), dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err = b.Manifest(1, seq32, now)
	if err != nil || m.Sequence != 0 || m.Kind != KindFirmware || m.SecureVersion != 0 {
		t.Fatalf("manifest %+v, %v", m, err)
	}

	// A missing component file is reported when the manifest is made.
	b, err = ParseBuild([]byte("version: 1.0.0\nhardware: [a]\ncomponents: [{name: x, version: '1', file: nope.bin}]\n"), dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Manifest(1, seq32, now); !errors.Is(err, ErrBuild) || !strings.Contains(err.Error(), "nope.bin") {
		t.Fatalf("missing file: %v", err)
	}
}

func TestParseBuildRefuses(t *testing.T) {
	const ok = "version: 1.0.0\nhardware: [a]\n"
	for _, c := range []struct{ name, in, want string }{
		{"empty", "", "empty"},
		{"unknown field", ok + "hardwares: [b]\n", "not found"},
		{"typo in component", ok + "components: [{name: x, version: '1', digets: " + strings.Repeat("a", 64) + "}]\n", "not found"},
		{"two documents", ok + "---\n" + ok, "more than one"},
		{"no version", "hardware: [a]\n", "version (3) missing"},
		{"null version", "version: ~\nhardware: [a]\n", "version (3) missing"},
		{"version as float", "version: 1.2\nhardware: [a]\n", "semantic version"},
		{"no hardware", "version: 1.0.0\n", "hardware (5) missing"},
		{"hardware as string", "version: 1.0.0\nhardware: a\n", "cannot unmarshal"},
		{"kind", ok + "kind: feature_flags\n", "want one of firmware, configuration, feature-flags"},
		{"secure version float", ok + "secure_version: 1.5\n", "not an unsigned integer"},
		{"secure version quoted", ok + "secure_version: \"2\"\n", "not an unsigned integer"},
		{"secure version negative", ok + "secure_version: -1\n", "not an unsigned integer"},
		{"secure version too big", ok + "secure_version: 4294967296\n", "above 4294967295"},
		{"sequence float", ok + "sequence: 1e9\n", "not an unsigned integer"},
		{"sequence too big", ok + "sequence: 18446744073709551616\n", "not an unsigned integer"},
		{"component without digest", ok + "components: [{name: x, version: '1'}]\n", "give digest or file"},
		{"component with both", ok + "components: [{name: x, version: '1', file: f, digest: " + strings.Repeat("a", 64) + "}]\n", "not both"},
		{"component bad digest", ok + "components: [{name: x, version: '1', digest: abc}]\n", "64 hex digits"},
		{"component without name", ok + "components: [{version: '1', digest: " + strings.Repeat("a", 64) + "}]\n", "name missing"},
		{"every problem at once", "version: x\nhardware: []\nkind: k\n", "feature-flags; version (3)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			b, err := ParseBuild([]byte(c.in), ".")
			if err == nil {
				t.Fatalf("accepted: %+v", b)
			}
			if !errors.Is(err, ErrBuild) {
				t.Errorf("error %v does not wrap ErrBuild", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
		})
	}
}

// The documented example stays valid.
func TestBuildExample(t *testing.T) {
	b, err := LoadBuild(filepath.Join("..", "..", "config", "build.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if b.Version != "1.2.4" || len(b.Hardware) != 2 || len(b.Components) != 2 || b.Sequence != nil {
		t.Fatalf("example reads as %+v", b)
	}
}
