package test

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/wire"
)

// TestOtactlReleaseFlow: an operator's whole path with the CLI: a key pair,
// a signed release, trusting the key, uploading with progress, offering,
// commanding, reading the device's timeline, revoking the key.
func TestOtactlReleaseFlow(t *testing.T) {
	b := startBroker(t)
	dir := t.TempDir()
	must := func(stdin string, args ...string) (string, string) {
		t.Helper()
		out, errOut, code := b.otactl(stdin, args...)
		if code != 0 {
			t.Fatalf("otactl %v: exit %d\n%s%s", args, code, out, errOut)
		}
		return out, errOut
	}
	must("", "keygen", "--out", dir, "--name", "rel")
	img := make([]byte, 700_000)
	_, _ = rand.Read(img)
	imgPath := filepath.Join(dir, "fw.bin")
	if err := os.WriteFile(imgPath, img, 0o600); err != nil {
		t.Fatal(err)
	}
	build := filepath.Join(dir, "build.yaml")
	if err := os.WriteFile(build, []byte("version: 8.1.0\nhardware: [esp32-v2]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	must("", "sign", "--key", filepath.Join(dir, "rel.key"), "--build", build, imgPath)
	manifestPath := imgPath + ".manifest"

	// Not yet trusted: the upload is refused with the reason.
	out, errOut, code := b.otactl("", "release", "upload", imgPath, manifestPath)
	if code != 1 || !strings.Contains(errOut, "unknown_key") {
		t.Fatalf("upload before trusting the key: exit %d\n%s%s", code, out, errOut)
	}
	out, _ = must("", "key", "add", filepath.Join(dir, "rel.pub"), "--name", "ci")
	if !strings.Contains(out, "trusted key") {
		t.Fatalf("key add: %s", out)
	}
	// An image that is not the manifest's is caught before uploading.
	other := filepath.Join(dir, "other.bin")
	_ = os.WriteFile(other, img[:1000], 0o600)
	_, errOut, code = b.otactl("", "release", "upload", other, manifestPath)
	if code != 1 || !strings.Contains(errOut, "does not match") {
		t.Fatalf("mismatching image: exit %d\n%s", code, errOut)
	}

	out, errOut = must("", "release", "upload", imgPath, manifestPath, "--part-size", "65536")
	if !strings.Contains(out, "release 8.1.0@") || !strings.Contains(errOut, "100%") {
		t.Fatalf("upload output:\n%s\nprogress:\n%s", out, errOut)
	}
	id := strings.Fields(strings.TrimPrefix(out, "release "))[0]
	id = strings.TrimSuffix(id, ":")
	// Uploading the same release again is a no-op.
	must("", "release", "upload", imgPath, manifestPath)
	out, _ = must("", "release", "list")
	if !strings.Contains(out, id) || !strings.Contains(out, "esp32-v2") {
		t.Fatalf("release list:\n%s", out)
	}
	out, _ = must("", "release", "get", id)
	if !strings.Contains(out, "(trusted)") || !strings.Contains(out, "700000") {
		t.Fatalf("release get:\n%s", out)
	}

	tok := b.register("d1", "device", "", map[string]any{"hardware": "esp32-v2"})
	d := b.device("d1", tok)
	d.subscribe("dm/d1/ota/manifest")
	d.subscribe("dm/d1/cmd")
	out, _ = must("", "offer", "create", id, "d1", "--rollout", "r-cli", "--on-command")
	if !strings.Contains(out, "rollout r-cli") || !strings.Contains(out, "d1") {
		t.Fatalf("offer create:\n%s", out)
	}
	if o := d.offerAt("d1", 0); o.RolloutID != "r-cli" || o.InstallMode != wire.InstallOnCommand {
		t.Fatalf("offer received %+v", o)
	}
	out, _ = must("", "offer", "list")
	if !strings.Contains(out, "r-cli") || !strings.Contains(out, "on command") {
		t.Fatalf("offer list:\n%s", out)
	}
	must("", "command", "send", "install", "d1", "--rollout", "r-cli")
	d.waitFor("dm/d1/cmd", 10*time.Second)
	d.publish("dm/d1/ev", wire.Event{Code: wire.EvInstallStarted, RolloutID: "r-cli", TargetVersion: "8.1.0"}.Encode())
	out, _ = must("", "device", "timeline", "d1")
	if !strings.Contains(out, "update.install.started") || !strings.Contains(out, "offer") {
		t.Fatalf("timeline:\n%s", out)
	}

	// Revoking the key names the release it affects, and the release can
	// no longer be offered.
	out, _ = must("", "key", "list")
	kid := strings.Fields(strings.Split(out, "\n")[1])[0]
	out, _ = must("", "key", "revoke", kid)
	if !strings.Contains(out, id) {
		t.Fatalf("key revoke does not name the affected release:\n%s", out)
	}
	_, errOut, code = b.otactl("", "offer", "create", id, "d1")
	if code != 1 || !strings.Contains(errOut, "revoked") {
		t.Fatalf("offer after revocation: exit %d\n%s", code, errOut)
	}
	out, _ = must("", "offer", "cancel", "d1")
	if !strings.Contains(out, "cancelled") {
		t.Fatalf("offer cancel:\n%s", out)
	}
}
