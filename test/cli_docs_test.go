package test

import (
	"bufio"
	"encoding/hex"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/wire"
)

// repoTextFiles returns the repository's text files (sources, documents,
// configuration), without build output, data and fuzz corpora.
func repoTextFiles(t *testing.T) map[string][]byte {
	t.Helper()
	root := repoRoot()
	skip := map[string]bool{".git": true, "bin": true, "data": true, "build": true, "corpus": true, "out": true, "testdata": true}
	files := map[string][]byte{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != root && (skip[d.Name()] || strings.HasPrefix(d.Name(), ".") && d.Name() != ".ci") {
			return filepath.SkipDir
		}
		if !d.Type().IsRegular() || d.Name() == ".git" {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if len(b) < 1<<20 && utf8.Valid(b) {
			rel, _ := filepath.Rel(root, p)
			files[rel] = b
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 100 {
		t.Fatalf("found only %d text files under %s", len(files), root)
	}
	return files
}

// TestDocReferencesExist: comments and documents point to documents the
// repository has: never to a DESIGN.md (which is not in it), and every
// docs/NAME.md they name exists.
func TestDocReferencesExist(t *testing.T) {
	ref := regexp.MustCompile(`\bdocs/[A-Z]+\.md\b`)
	for name, b := range repoTextFiles(t) {
		if name == filepath.Join("test", "cli_docs_test.go") {
			continue // this test names what it looks for
		}
		sc := bufio.NewScanner(strings.NewReader(string(b)))
		sc.Buffer(nil, 1<<20)
		for n := 1; sc.Scan(); n++ {
			line := sc.Text()
			if strings.Contains(line, "DESIGN.md") {
				t.Errorf("%s:%d points to DESIGN.md, which is not in the repository (docs/PROTOCOL.md, docs/ARCHITECTURE.md...): %s", name, n, line)
			}
			for _, r := range ref.FindAllString(line, -1) {
				if _, err := os.Stat(filepath.Join(repoRoot(), r)); err != nil {
					t.Errorf("%s:%d names %s, which does not exist", name, n, r)
				}
			}
		}
	}
}

// protocolExamples returns the hex examples of docs/PROTOCOL.md by name.
func protocolExamples(t *testing.T) map[string][]byte {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join(repoRoot(), "docs", "PROTOCOL.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(doc), "## Examples (hex)\n\n```\n")
	block, _, ok2 := strings.Cut(block, "```")
	if !ok || !ok2 {
		t.Fatal("docs/PROTOCOL.md has no examples block")
	}
	out := map[string][]byte{}
	for _, line := range strings.Split(block, "\n") {
		if line == "" || line[0] == ' ' {
			continue // the diagnostic notation
		}
		if len(line) < 12 {
			t.Fatalf("example line %q", line)
		}
		b, err := hex.DecodeString(strings.ReplaceAll(line[11:], " ", ""))
		if err != nil {
			t.Fatalf("example %q: %v", line, err)
		}
		out[strings.TrimSpace(line[:11])] = b
	}
	return out
}

// TestProtocolExamples: the hex examples device integrators copy from
// docs/PROTOCOL.md are what the broker's encoders produce for the values
// written beside them, and what its decoders read back.
func TestProtocolExamples(t *testing.T) {
	ex := protocolExamples(t)
	seq32 := make([]byte, 32)
	for i := range seq32 {
		seq32[i] = byte(i)
	}
	birth := wire.Birth{FirmwareVersion: "1.2.3", Hardware: "esp32-v2", Bootloader: "2.1.0", Slot: 0, BootReason: wire.BootOTAReboot,
		BootsSinceCommit: 1, OTAState: wire.StateTrial, AgentVersion: "0.3.0", Connectivity: wire.ConnWiFi, UTCOffsetMinutes: 60, SecureVersion: 2}
	hb := wire.Heartbeat{UptimeSeconds: 3600, HealthFlags: 7, WatchdogResets: 0, FreeHeap: 120000, RSSI: -61, OTAState: wire.StateIdle}
	ev := wire.Event{Code: wire.EvDownloadCompleted, RolloutID: "r-2025-11-24", TargetVersion: "1.2.4", Progress: 100, DeviceTime: 1764000000}
	req := wire.BlockRequest{Digest: seq32, Offset: 8192, Size: 4096, Count: 8, RequestID: 42}
	blkErr := wire.BlockError{RequestID: 42, Offset: 8192, Code: wire.BlockRateLimited, RetryAfterMS: 250, Message: "rate limited"}
	cmd := wire.Command{Verb: wire.VerbInstall, RolloutID: "r-2025-11-24"}
	var digest manifest.Digest
	copy(digest[:], seq32)
	m := &manifest.Manifest{Sequence: 17, Version: "1.2.4", BuildID: "20251124-143022", Hardware: []string{"esp32-v2", "esp32-v3"},
		MinBootloader: "2.1.0", ImageSize: 1048576, ImageDigest: digest, SecureVersion: 2, Kind: manifest.KindFirmware}
	mEnc, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	for name, enc := range map[string][]byte{
		"birth": birth.Encode(), "heartbeat": hb.Encode(), "event": ev.Encode(), "block req": req.Encode(),
		"block": wire.AppendBlock(nil, 42, 8192, 1048576, []byte{0xde, 0xad, 0xbe, 0xef}), "block err": blkErr.Encode(),
		"command": cmd.Encode(), "manifest": mEnc,
	} {
		if got, ok := ex[name]; !ok {
			t.Errorf("docs/PROTOCOL.md has no %q example", name)
		} else if hex.EncodeToString(got) != hex.EncodeToString(enc) {
			t.Errorf("%s example:\n%x\nthe encoder gives\n%x", name, got, enc)
		}
	}
	if len(ex) != 8 {
		t.Errorf("examples %d, want the 8 checked here", len(ex))
	}
	decoded := []struct {
		name string
		got  any
		err  error
		want any
	}{}
	add := func(name string, got any, err error, want any) {
		decoded = append(decoded, struct {
			name string
			got  any
			err  error
			want any
		}{name, got, err, want})
	}
	b, err := wire.DecodeBirth(ex["birth"])
	add("birth", b, err, birth)
	h, err := wire.DecodeHeartbeat(ex["heartbeat"])
	add("heartbeat", h, err, hb)
	e, err := wire.DecodeEvent(ex["event"])
	add("event", e, err, ev)
	r, err := wire.DecodeBlockRequest(ex["block req"])
	add("block req", r, err, req)
	_, be, err := wire.DecodeBlock(ex["block err"], 4096)
	add("block err", be, err, &blkErr)
	dm, err := manifest.DecodePayload(ex["manifest"])
	add("manifest", dm, err, m)
	for _, d := range decoded {
		if d.err != nil || !reflect.DeepEqual(d.got, d.want) {
			t.Errorf("%s example decodes as %+v, %v; want %+v", d.name, d.got, d.err, d.want)
		}
	}
}

// TestReadmeTourWritesOnlyIgnoredFiles: everything the README's tour
// writes (the keys, including the private one, images, manifests) lands
// where git ignores it, and the README names the Debian packages of the
// tools it uses, which `make deps` installs.
func TestReadmeTourWritesOnlyIgnoredFiles(t *testing.T) {
	git := needCommand(t, "git")
	readme, err := os.ReadFile(filepath.Join(repoRoot(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, tour, ok := strings.Cut(string(readme), "## Five minutes with otamq")
	tour, _, _ = strings.Cut(tour, "\n## ")
	if !ok {
		t.Fatal("README.md has no tour")
	}
	var written []string
	outFlag := regexp.MustCompile(`--out (\S+)`)
	redirect := regexp.MustCompile(`> (\S+)`)
	for _, block := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(tour, -1) {
		for _, line := range strings.Split(block[1], "\n") {
			line, _, _ = strings.Cut(line, "#")
			f := strings.Fields(line)
			switch {
			case len(f) == 0:
				continue
			case f[0] == "mkdir":
				written = append(written, f[len(f)-1]+"/")
			case len(f) > 1 && f[0] == "./bin/otactl" && f[1] == "keygen":
				dir := "."
				if m := outFlag.FindStringSubmatch(line); m != nil {
					dir = m[1]
				}
				written = append(written, filepath.Join(dir, "release.key"), filepath.Join(dir, "release.pub"))
			case len(f) > 1 && f[0] == "./bin/otactl" && f[1] == "sign":
				written = append(written, f[len(f)-1]+".manifest")
			}
			for _, m := range redirect.FindAllStringSubmatch(line, -1) {
				written = append(written, m[1])
			}
		}
	}
	if len(written) < 5 {
		t.Fatalf("found only %v written by the tour", written)
	}
	for _, p := range written {
		cmd := exec.Command(git, "check-ignore", "-q", p)
		cmd.Dir = repoRoot()
		if err := cmd.Run(); err != nil {
			t.Errorf("the tour writes %s, which git does not ignore (%v)", p, err)
		}
	}
	pkgs, err := os.ReadFile(filepath.Join(repoRoot(), ".ci", "packages"))
	if err != nil {
		t.Fatal(err)
	}
	for tool, pkg := range map[string]string{"mosquitto_pub": "mosquitto-clients", "mosquitto_sub": "mosquitto-clients", "xxd": "xxd"} {
		if strings.Contains(tour, tool) && (!strings.Contains(tour, "`"+pkg+"`") || !regexp.MustCompile(`(?m)^`+pkg+`$`).Match(pkgs)) {
			t.Errorf("the tour uses %s but does not name its package %s, or .ci/packages lacks it", tool, pkg)
		}
	}
}
