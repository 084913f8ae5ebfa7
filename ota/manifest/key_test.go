package manifest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// The key ID scheme agreed with the agent: SHA-256 over 0x04‖X‖Y, first 8
// bytes. Computed here from the coordinates, not through PublicKeyPoint.
func TestKeyIDScheme(t *testing.T) {
	key := testKey(t, testKeyFile)
	point := make([]byte, 65)
	point[0] = 4
	key.X.FillBytes(point[1:33])
	key.Y.FillBytes(point[33:])
	sum := sha256.Sum256(point)
	if got := KeyIDOf(&key.PublicKey); !bytes.Equal(got[:], sum[:8]) {
		t.Fatalf("KeyIDOf = %s, want %x", got, sum[:8])
	}
	// Pinned for the committed test key, so that a change of scheme shows.
	if got := KeyIDOf(&key.PublicKey).String(); got != "c5e957cca2502440" {
		t.Fatalf("test key ID %s, want c5e957cca2502440", got)
	}
	if !bytes.Equal(PublicKeyPoint(&key.PublicKey), point) {
		t.Fatalf("PublicKeyPoint = %x", PublicKeyPoint(&key.PublicKey))
	}
	pub, err := ParsePublicKeyPoint(point)
	if err != nil || !pub.Equal(&key.PublicKey) {
		t.Fatalf("ParsePublicKeyPoint = %v, %v", pub, err)
	}
	point[64] ^= 1 // off the curve
	if _, err := ParsePublicKeyPoint(point); !errors.Is(err, ErrKeyType) {
		t.Fatalf("ParsePublicKeyPoint(off curve) = %v", err)
	}
	id, err := ParseKeyID("c5e957cca2502440")
	if err != nil || id != KeyIDOf(&key.PublicKey) {
		t.Fatalf("ParseKeyID = %s, %v", id, err)
	}
	for _, s := range []string{"", "c5e957cca25024", "c5e957cca250244g"} {
		if _, err := ParseKeyID(s); err == nil {
			t.Errorf("ParseKeyID(%q) accepted", s)
		}
	}
}

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	priv, pub := filepath.Join(dir, "k.key"), filepath.Join(dir, "k.pub")
	if err := WritePrivateKey(priv, key); err != nil {
		t.Fatal(err)
	}
	if err := WritePublicKey(pub, &key.PublicKey); err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "windows" {
		for path, want := range map[string]fs.FileMode{priv: 0o600, pub: 0o644} {
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			// The umask may only take bits away.
			if got := st.Mode().Perm(); got&^want != 0 || (path == priv && got != 0o600) {
				t.Errorf("%s has mode %04o, want %04o", filepath.Base(path), got, want)
			}
		}
	}
	gotPriv, err := LoadPrivateKey(priv)
	if err != nil || !gotPriv.Equal(key) {
		t.Fatalf("LoadPrivateKey = %v", err)
	}
	gotPub, err := LoadPublicKey(pub)
	if err != nil || !gotPub.Equal(&key.PublicKey) {
		t.Fatalf("LoadPublicKey = %v", err)
	}
	data, _ := os.ReadFile(priv)
	if !bytes.HasPrefix(data, []byte("-----BEGIN PRIVATE KEY-----\n")) {
		t.Errorf("private key file is not PKCS#8 PEM:\n%s", data)
	}
	data, _ = os.ReadFile(pub)
	if !bytes.HasPrefix(data, []byte("-----BEGIN PUBLIC KEY-----\n")) {
		t.Errorf("public key file is not SPKI PEM:\n%s", data)
	}

	// Never overwritten.
	before, _ := os.ReadFile(priv)
	other, _ := GenerateKey()
	if err := WritePrivateKey(priv, other); !errors.Is(err, fs.ErrExist) {
		t.Errorf("WritePrivateKey over an existing file = %v", err)
	}
	if err := WritePublicKey(pub, &other.PublicKey); !errors.Is(err, fs.ErrExist) {
		t.Errorf("WritePublicKey over an existing file = %v", err)
	}
	if after, _ := os.ReadFile(priv); !bytes.Equal(before, after) {
		t.Error("the existing key file changed")
	}

	// A private key others may read is refused.
	if runtime.GOOS != "windows" {
		for _, mode := range []fs.FileMode{0o644, 0o640, 0o604, 0o660} {
			if err := os.Chmod(priv, mode); err != nil {
				t.Fatal(err)
			}
			if _, err := LoadPrivateKey(priv); !errors.Is(err, ErrKeyPermissions) || !strings.Contains(err.Error(), "chmod 600") {
				t.Errorf("mode %04o: LoadPrivateKey = %v", mode, err)
			}
		}
		if err := os.Chmod(priv, 0o400); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadPrivateKey(priv); err != nil {
			t.Errorf("mode 0400: %v", err)
		}
	}
}

func pemOf(t *testing.T, typ string, der []byte, err error) []byte {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func TestParseKeysRefuseOtherKinds(t *testing.T) {
	p256, _ := GenerateKey()
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	edPub, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	pkcs8 := func(k any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		return pemOf(t, "PRIVATE KEY", der, err)
	}
	spki := func(k any) []byte { der, err := x509.MarshalPKIXPublicKey(k); return pemOf(t, "PUBLIC KEY", der, err) }
	sec1 := func(k *ecdsa.PrivateKey) []byte {
		der, err := x509.MarshalECPrivateKey(k)
		return pemOf(t, "EC PRIVATE KEY", der, err)
	}

	for _, c := range []struct {
		name string
		in   []byte
		want error
		text string
	}{
		{"P-256 PKCS#8", pkcs8(p256), nil, ""},
		{"P-256 SEC 1 (openssl ecparam)", sec1(p256), nil, ""},
		{"P-384", pkcs8(p384), ErrKeyType, "P-384"},
		{"P-384 SEC 1", sec1(p384), ErrKeyType, "P-384"},
		{"RSA", pkcs8(rsaKey), ErrKeyType, "rsa"},
		{"Ed25519", pkcs8(edPriv), ErrKeyType, "ed25519"},
		{"public key", spki(&p256.PublicKey), ErrKeyFormat, "public key"},
		{"encrypted", pemOf(t, "ENCRYPTED PRIVATE KEY", []byte{1}, nil), ErrKeyFormat, "encrypted"},
		{"certificate", pemOf(t, "CERTIFICATE", []byte{1}, nil), ErrKeyFormat, "CERTIFICATE"},
		{"bad DER", pemOf(t, "PRIVATE KEY", []byte{1, 2}, nil), ErrKeyFormat, "PRIVATE KEY: asn1"},
		{"not PEM", []byte("hello"), ErrKeyFormat, "no PEM"},
	} {
		k, err := ParsePrivateKey(c.in)
		if c.want == nil {
			if err != nil || !k.Equal(p256) {
				t.Errorf("private %s: %v", c.name, err)
			}
			continue
		}
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.text) {
			t.Errorf("private %s: %v, want %v mentioning %q", c.name, err, c.want, c.text)
		}
	}

	for _, c := range []struct {
		name string
		in   []byte
		want error
		text string
	}{
		{"P-256", spki(&p256.PublicKey), nil, ""},
		{"P-384", spki(&p384.PublicKey), ErrKeyType, "P-384"},
		{"RSA", spki(&rsaKey.PublicKey), ErrKeyType, "rsa"},
		{"Ed25519", spki(edPub), ErrKeyType, "ed25519"},
		{"private key", pkcs8(p256), ErrKeyFormat, "private key"},
		{"SEC 1 private key", sec1(p256), ErrKeyFormat, "private key"},
		{"bad DER", pemOf(t, "PUBLIC KEY", []byte{1, 2}, nil), ErrKeyFormat, "PUBLIC KEY: asn1"},
		{"not PEM", nil, ErrKeyFormat, "no PEM"},
	} {
		k, err := ParsePublicKey(c.in)
		if c.want == nil {
			if err != nil || !k.Equal(&p256.PublicKey) {
				t.Errorf("public %s: %v", c.name, err)
			}
			continue
		}
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.text) {
			t.Errorf("public %s: %v, want %v mentioning %q", c.name, err, c.want, c.text)
		}
	}
}
