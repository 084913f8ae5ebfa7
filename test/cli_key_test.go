package test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// pointOfPub reads a PEM public key file without otamq's code and returns
// its uncompressed point 0x04‖X‖Y in hex.
func pointOfPub(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	ek, err := k.(*ecdsa.PublicKey).ECDH()
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(ek.Bytes())
}

// cArrayOf returns the C declaration in otactl's output.
func cArrayOf(t *testing.T, out string) string {
	t.Helper()
	start := strings.Index(out, "/* otamq release key")
	end := strings.Index(out, "}};\n")
	if start < 0 || end < start {
		t.Fatalf("no C array in:\n%s", out)
	}
	return out[start : end+4]
}

// TestOtactlKeygenPrintsKeyForIntegrators: keygen and key show print the key
// ID, the PEM, the 65-byte point in hex and a C array that compiles as the
// agent's trusted keys and holds the same bytes.
func TestOtactlKeygenPrintsKeyForIntegrators(t *testing.T) {
	dir := t.TempDir()
	out, errOut, code := offlineOtactl(t, dir, "keygen", "--name", "fleet")
	if code != 0 {
		t.Fatalf("keygen: exit %d\n%s%s", code, out, errOut)
	}
	pub := filepath.Join(dir, "fleet.pub")
	pubPEM, err := os.ReadFile(pub)
	if err != nil {
		t.Fatal(err)
	}
	kid, point := keyIDOfPub(t, pub), pointOfPub(t, pub)
	for _, want := range []string{"key ID: " + kid + "\n", string(pubPEM), "\n" + point + "\n", "static const uint8_t release_keys[1][65] = {{\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("keygen output lacks %q:\n%s", want, out)
		}
	}

	// key show prints the same for the public key file, offline.
	show, errOut, code := offlineOtactl(t, dir, "key", "show", "fleet.pub")
	if code != 0 {
		t.Fatalf("key show: exit %d\n%s%s", code, show, errOut)
	}
	if !strings.HasSuffix(out, show) {
		t.Errorf("key show differs from what keygen printed:\nkeygen:\n%s\nkey show:\n%s", out, show)
	}
	js, _, code := offlineOtactl(t, dir, "key", "show", "fleet.pub", "--json")
	var k struct {
		KeyID  string `json:"key_id"`
		PEM    string `json:"pem"`
		Point  string `json:"point_hex"`
		CArray string `json:"c_array"`
	}
	if err := json.Unmarshal([]byte(js), &k); code != 0 || err != nil || k.KeyID != kid || k.PEM != string(pubPEM) || k.Point != point ||
		k.CArray != cArrayOf(t, show) {
		t.Fatalf("key show --json: exit %d, %v\n%s", code, err, js)
	}

	// The C array pastes into an application as the agent's trusted keys:
	// it compiles, with the agent's warnings as errors, against the
	// agent's configuration type, and holds the point's bytes.
	gcc := needCommand(t, "gcc")
	src := `#include <stdio.h>
#include <string.h>
#include "otamq/ota_agent.h"

` + cArrayOf(t, show) + `
int main(void)
{
    ota_agent_config_t cfg;
    size_t i;
    memset(&cfg, 0, sizeof(cfg));
    cfg.keys = release_keys;
    cfg.nkeys = 1;
    for (i = 0; i < sizeof(release_keys[0]); i++)
        printf("%02x", cfg.keys[0][i]);
    printf("\n");
    return 0;
}
`
	cfile := filepath.Join(dir, "keys.c")
	if err := os.WriteFile(cfile, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "keys")
	cc := exec.Command(gcc, "-std=c99", "-Wall", "-Wextra", "-Wconversion", "-Werror", "-I", filepath.Join(repoRoot(), "agent-c", "include"),
		"-o", exe, cfile)
	if b, err := cc.CombinedOutput(); err != nil {
		t.Fatalf("the C array does not compile as the agent's keys: %v\n%s\n%s", err, b, src)
	}
	got, err := exec.Command(exe).Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(got)) != point {
		t.Fatalf("the C array holds %s, the key's point is %s", got, point)
	}
}

// TestOtactlKeyFileChecks: key show and key add check the file here: a
// file that is not a public key is a usage error (exit 2) that says what it
// is, before anything is sent; a missing file is an error (exit 1).
func TestOtactlKeyFileChecks(t *testing.T) {
	b := startBroker(t)
	sent := &publishLog{topic: "dm/admin/key/add"}
	if err := b.Server().AddHook(sent, nil); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, errOut, code := offlineOtactl(t, dir, "keygen", "--name", "release"); code != 0 {
		t.Fatal(errOut)
	}
	write := func(name string, data []byte) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	big := make([]byte, 300_000)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&p384.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		file string
		code int
		want string
	}{
		{write("big.bin", big), 2, "big.bin is 300000 bytes, not a public key"},
		{write("notes.txt", []byte("hello\n")), 2, "no PEM block"},
		{filepath.Join(dir, "release.key"), 2, "this is a private key; give the public key (.pub)"},
		{write("p384.pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), 2, "P-384"},
		{dir, 2, "is not a file"},
		{filepath.Join(dir, "missing.pub"), 1, "no such file or directory"},
	}
	for _, c := range cases {
		for _, verb := range []string{"show", "add"} {
			out, errOut, code := b.otactl("", "key", verb, c.file)
			if code != c.code || !strings.Contains(errOut, c.want) {
				t.Errorf("key %s %s: exit %d, want %d with %q\n%s%s", verb, filepath.Base(c.file), code, c.code, c.want, out, errOut)
			}
		}
	}
	// Nothing reached the broker.
	if n := len(sent.payloads()); n != 0 {
		t.Fatalf("%d key/add requests reached the broker", n)
	}

	// A public key followed by other PEM blocks (here the private key):
	// only the public key is sent.
	pubPEM, _ := os.ReadFile(filepath.Join(dir, "release.pub"))
	privPEM, _ := os.ReadFile(filepath.Join(dir, "release.key"))
	both := write("both.pem", append(append([]byte{}, pubPEM...), privPEM...))
	out, errOut, code := b.otactl("", "key", "add", both, "--name", "ci")
	if code != 0 || !strings.Contains(out, "trusted key "+keyIDOfPub(t, filepath.Join(dir, "release.pub"))) {
		t.Fatalf("key add: exit %d\n%s%s", code, out, errOut)
	}
	got := sent.payloads()
	if len(got) != 1 || !strings.Contains(got[0], "PUBLIC KEY") || strings.Contains(got[0], "PRIVATE KEY") {
		t.Fatalf("key/add sent %q", got)
	}
}

// publishLog records the payloads of the publishes on one topic.
type publishLog struct {
	mqtt.HookBase
	topic string
	mu    sync.Mutex
	got   []string
}

func (h *publishLog) ID() string           { return "test-publish-log" }
func (h *publishLog) Provides(b byte) bool { return b == mqtt.OnPacketRead }

func (h *publishLog) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type == packets.Publish && pk.TopicName == h.topic {
		h.mu.Lock()
		h.got = append(h.got, string(pk.Payload))
		h.mu.Unlock()
	}
	return pk, nil
}

func (h *publishLog) payloads() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.got...)
}
