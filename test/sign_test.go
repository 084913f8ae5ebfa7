package test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// offlineOtactl runs otactl in dir without any broker settings (the
// offline commands need none; OTAMQ_KEY, the mTLS key, must never be
// taken as the signing key).
func offlineOtactl(t *testing.T, dir string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(binary(t, "otactl"), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "OTAMQ_URL=mqtt://127.0.0.1:1", "OTAMQ_KEY="+filepath.Join(dir, "keys", "release.key"))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatal(err)
		}
		code = ee.ExitCode()
	}
	return out.String(), errb.String(), code
}

// keyIDOfPub computes the agreed key ID from a public key file without
// otamq's code: SHA-256 over the uncompressed point 0x04‖X‖Y, first 8
// bytes, in hex.
func keyIDOfPub(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PUBLIC KEY" {
		t.Fatalf("%s is not a PEM public key:\n%s", path, data)
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pub, ok := k.(*ecdsa.PublicKey)
	if !ok || pub.Curve.Params().Name != "P-256" {
		t.Fatalf("%s holds a %T", path, k)
	}
	ek, err := pub.ECDH()
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(ek.Bytes())
	return hex.EncodeToString(sum[:8])
}

func TestOtactlKeygenSignVerify(t *testing.T) {
	dir := t.TempDir()
	run := func(wantCode int, args ...string) (string, string) {
		t.Helper()
		out, errOut, code := offlineOtactl(t, dir, args...)
		if code != wantCode {
			t.Fatalf("otactl %s: exit %d, want %d\n%s%s", strings.Join(args, " "), code, wantCode, out, errOut)
		}
		return out, errOut
	}

	// keygen: a 0600 private key, a public key, the key ID printed.
	out, _ := run(0, "keygen", "--out", "keys")
	priv, pub := filepath.Join(dir, "keys", "release.key"), filepath.Join(dir, "keys", "release.pub")
	kid := keyIDOfPub(t, pub)
	if !strings.Contains(out, "key ID: "+kid) {
		t.Fatalf("keygen prints\n%s\nwant key ID %s", out, kid)
	}
	if runtime.GOOS != "windows" {
		st, err := os.Stat(priv)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Fatalf("private key mode %04o", st.Mode().Perm())
		}
	}
	keyBefore, _ := os.ReadFile(priv)
	_, errOut := run(1, "keygen", "--out", "keys")
	if !strings.Contains(errOut, "refusing to overwrite") {
		t.Errorf("second keygen says: %s", errOut)
	}
	if keyAfter, _ := os.ReadFile(priv); !bytes.Equal(keyBefore, keyAfter) {
		t.Fatal("second keygen replaced the key")
	}
	out, _ = run(0, "keygen", "--out", "keys", "--name", "other", "--json")
	var otherKey struct {
		KeyID string `json:"key_id"`
	}
	if err := json.Unmarshal([]byte(out), &otherKey); err != nil || otherKey.KeyID != keyIDOfPub(t, filepath.Join(dir, "keys", "other.pub")) {
		t.Fatalf("keygen --json: %v\n%s", err, out)
	}

	// sign: a build description, a component hashed from a file, an image.
	image := make([]byte, 200_000)
	if _, err := rand.Read(image); err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("app.bin", image)
	write("boot.bin", []byte("bootloader"))
	write("build.yaml", []byte(`version: 1.2.4
build_id: "20251124-143022"
hardware: [esp32-v2, esp32-v3]
min_bootloader: 2.1.0
secure_version: 2
kind: firmware
sequence: 17
components:
  - {name: bootloader, version: 2.1.0, file: boot.bin}
`))
	sum := sha256.Sum256(image)
	digest := hex.EncodeToString(sum[:])

	// Without --key after "sign", OTAMQ_KEY (set to the signing key here)
	// is not used.
	run(2, "sign", "--build", "build.yaml", "app.bin")
	run(2, "sign", "--key", priv, "app.bin")
	out, _ = run(0, "sign", "--key", priv, "--build", "build.yaml", "app.bin")
	for _, want := range []string{"app.bin.manifest", "1.2.4", "esp32-v2, esp32-v3", "200000 bytes", digest, kid, "17"} {
		if !strings.Contains(out, want) {
			t.Errorf("sign summary lacks %q:\n%s", want, out)
		}
	}
	manifestFile := filepath.Join(dir, "app.bin.manifest")
	signed, err := os.ReadFile(manifestFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(signed, []byte{0xd2, 0x84, 0x43, 0xa1, 0x01, 0x26}) {
		t.Fatalf("manifest does not start as a tagged COSE_Sign1 with {1: -7}: %x", signed[:8])
	}
	_, errOut = run(1, "sign", "--key", priv, "--build", "build.yaml", "app.bin")
	if !strings.Contains(errOut, "refusing to overwrite") {
		t.Errorf("sign over an existing manifest: %s", errOut)
	}

	// verify: ok, in text and JSON.
	out, _ = run(0, "verify", "--pub", pub, "--image", "app.bin", "app.bin.manifest")
	if !strings.Contains(out, "ok: signed by key "+kid) || !strings.Contains(out, "app.bin matches") || !strings.Contains(out, digest) {
		t.Errorf("verify ok:\n%s", out)
	}
	type result struct {
		OK    bool
		KeyID string `json:"key_id"`
		Error struct {
			Code, Message string
			Expected      string `json:"expected_key_id"`
		}
		Manifest struct {
			Version   string
			Hardware  []string
			ImageSize uint64 `json:"image_size"`
			Digest    string `json:"image_digest"`
			Sequence  uint64
		}
	}
	verifyJSON := func(wantCode int, args ...string) result {
		t.Helper()
		out, _ := run(wantCode, append([]string{"verify", "--json"}, args...)...)
		var r result
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("verify --json output is not JSON: %v\n%s", err, out)
		}
		return r
	}
	r := verifyJSON(0, "--pub", pub, "--image", "app.bin", "app.bin.manifest")
	if !r.OK || r.KeyID != kid || r.Manifest.Version != "1.2.4" || r.Manifest.ImageSize != 200_000 || r.Manifest.Digest != digest ||
		r.Manifest.Sequence != 17 || len(r.Manifest.Hardware) != 2 {
		t.Errorf("verify --json: %+v", r)
	}

	// A byte of the image digest inside the manifest changed: still
	// well-formed, so the signature is what fails.
	at := bytes.Index(signed, sum[:])
	if at < 0 {
		t.Fatal("the manifest does not hold the image digest")
	}
	tampered := bytes.Clone(signed)
	tampered[at+5] ^= 0x01
	write("tampered.manifest", tampered)
	r = verifyJSON(1, "--pub", pub, "--image", "app.bin", "tampered.manifest")
	if r.OK || r.Error.Code != "bad_signature" || !strings.Contains(r.Error.Message, "bad signature") {
		t.Errorf("tampered payload byte: %+v", r)
	}
	// The COSE tag changed: malformed.
	tampered = bytes.Clone(signed)
	tampered[0] = 0xd1
	write("tag.manifest", tampered)
	_, errOut = run(1, "verify", "--pub", pub, "tag.manifest")
	if !strings.Contains(errOut, "malformed") || !strings.Contains(errOut, "tag 18") {
		t.Errorf("wrong tag: %s", errOut)
	}
	// Truncated: malformed.
	write("short.manifest", signed[:len(signed)-1])
	if r = verifyJSON(1, "--pub", pub, "short.manifest"); r.Error.Code != "malformed" {
		t.Errorf("truncated manifest: %+v", r)
	}

	// The image changed, or lost a byte.
	tamperedImage := bytes.Clone(image)
	tamperedImage[100_000] ^= 0x80
	write("tampered.bin", tamperedImage)
	_, errOut = run(1, "verify", "--pub", pub, "--image", "tampered.bin", "app.bin.manifest")
	if !strings.Contains(errOut, "digest mismatch") || !strings.Contains(errOut, digest) {
		t.Errorf("tampered image: %s", errOut)
	}
	write("short.bin", image[:len(image)-1])
	if r = verifyJSON(1, "--pub", pub, "--image", "short.bin", "app.bin.manifest"); r.Error.Code != "size_mismatch" ||
		!strings.Contains(r.Error.Message, "199999") {
		t.Errorf("short image: %+v", r)
	}

	// Another public key: both key IDs are named.
	otherPub := filepath.Join(dir, "keys", "other.pub")
	_, errOut = run(1, "verify", "--pub", otherPub, "app.bin.manifest")
	if !strings.Contains(errOut, "another key") || !strings.Contains(errOut, kid) || !strings.Contains(errOut, otherKey.KeyID) {
		t.Errorf("other key: %s", errOut)
	}
	if r = verifyJSON(1, "--pub", otherPub, "app.bin.manifest"); r.Error.Code != "unknown_key" || r.KeyID != kid || r.Error.Expected != otherKey.KeyID {
		t.Errorf("other key --json: %+v", r)
	}

	// Usage errors.
	run(2, "verify", "app.bin.manifest")
	run(2, "verify", "--pub", pub)
	// The private key where the public one belongs.
	_, errOut = run(1, "verify", "--pub", priv, "app.bin.manifest")
	if !strings.Contains(errOut, "private key") {
		t.Errorf("--pub with the private key: %s", errOut)
	}

	// A private key file others may read is refused; after chmod 600 it
	// signs again.
	if runtime.GOOS != "windows" {
		if err := os.Chmod(priv, 0o644); err != nil {
			t.Fatal(err)
		}
		_, errOut = run(1, "sign", "--key", priv, "--build", "build.yaml", "--force", "app.bin")
		if !strings.Contains(errOut, "mode 0644") || !strings.Contains(errOut, "chmod 600") {
			t.Errorf("world-readable key: %s", errOut)
		}
		if after, _ := os.ReadFile(manifestFile); !bytes.Equal(after, signed) {
			t.Error("a refused sign changed the manifest file")
		}
		if err := os.Chmod(priv, 0o600); err != nil {
			t.Fatal(err)
		}
		run(0, "sign", "--key", priv, "--build", "build.yaml", "--force", "--out", "again.manifest", "app.bin")
		run(0, "verify", "--pub", pub, "--image", "app.bin", "again.manifest")
	}

	// The key ID is 16 hex digits everywhere it is printed.
	if !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(kid) {
		t.Errorf("key ID %q", kid)
	}
}
