package main

import (
	"context"
	"crypto/ecdsa"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/otamq/otamq/ota/manifest"
)

// maxPublicKeyFile bounds what key add and key show read: a PEM public key
// is under 200 bytes; anything near this is another file.
const maxPublicKeyFile = 8 << 10

// readPublicKeyFile reads a release public key file, checking it here
// before anything is sent: it must be small and hold a PEM "PUBLIC KEY"
// (P-256). A file that cannot be read is an error; one that is not a public
// key is a usage error. It returns the key and its canonical PEM, which is
// what key add sends (never the file's other bytes: a file that also held
// the private key must not carry it to the broker).
func readPublicKeyFile(path string) (*ecdsa.PublicKey, []byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, nil, usagef("%s is not a file: want the public key file (PEM) from otactl keygen, e.g. release.pub", path)
	}
	if st.Size() > maxPublicKeyFile {
		return nil, nil, usagef("%s is %d bytes, not a public key (a PEM public key is a few hundred bytes): want the .pub file from otactl keygen", path, st.Size())
	}
	data, err := io.ReadAll(io.LimitReader(f, maxPublicKeyFile+1))
	if err != nil {
		return nil, nil, err
	}
	if len(data) > maxPublicKeyFile {
		return nil, nil, usagef("%s is more than %d bytes, not a public key: want the .pub file from otactl keygen", path, maxPublicKeyFile)
	}
	pub, err := manifest.ParsePublicKey(data)
	if err != nil {
		if errors.Is(err, manifest.ErrKeyFormat) || errors.Is(err, manifest.ErrKeyType) {
			return nil, nil, usagef("%s: %v", path, err)
		}
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	canonical, err := manifest.MarshalPublicKey(pub)
	if err != nil {
		return nil, nil, err
	}
	return pub, canonical, nil
}

// keyInfo is a release public key in every form integrators use.
type keyInfo struct {
	KeyID manifest.KeyID `json:"key_id"`
	// PEM is the SubjectPublicKeyInfo, for otactl key add and verify.
	PEM string `json:"pem"`
	// Point is the uncompressed point 0x04‖X‖Y (65 bytes) in hex: the form
	// devices keep their trusted keys in.
	Point string `json:"point_hex"`
	// CArray declares the point as the agent's trusted key array
	// (ota_agent_config_t.keys).
	CArray string `json:"c_array"`
}

func newKeyInfo(pub *ecdsa.PublicKey, source string) (keyInfo, error) {
	pem, err := manifest.MarshalPublicKey(pub)
	if err != nil {
		return keyInfo{}, err
	}
	kid := manifest.KeyIDOf(pub)
	point := manifest.PublicKeyPoint(pub)
	return keyInfo{KeyID: kid, PEM: string(pem), Point: hex.EncodeToString(point), CArray: cArray(point, kid, source)}, nil
}

// cArray renders point as the declaration the agent's configuration takes
// for its trusted keys (const uint8_t (*keys)[65], one row per key), ready
// to replace the placeholder in the ESP-IDF example's main.c.
func cArray(point []byte, kid manifest.KeyID, source string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "/* otamq release key %s (%s): uncompressed P-256 point 0x04 || X || Y */\n", kid, source)
	fmt.Fprintf(&b, "static const uint8_t release_keys[1][%d] = {{\n", len(point))
	const perLine = 13
	for i := 0; i < len(point); i += perLine {
		b.WriteString("   ")
		for j := i; j < min(i+perLine, len(point)); j++ {
			fmt.Fprintf(&b, " 0x%02x,", point[j])
		}
		b.WriteString("\n")
	}
	b.WriteString("}};\n")
	return b.String()
}

// printKeyInfo writes k for people.
func printKeyInfo(w io.Writer, k keyInfo) {
	fmt.Fprintf(w, "key ID: %s\n\n", k.KeyID)
	fmt.Fprintf(w, "public key (PEM, for otactl key add):\n%s\n", k.PEM)
	fmt.Fprintf(w, "uncompressed point (65 bytes, 0x04 || X || Y), hex:\n%s\n\n", k.Point)
	fmt.Fprintf(w, "as a C array, for the agent's trusted keys (ota_agent_config_t.keys, nkeys = 1):\n%s", k.CArray)
}

var keyShow = command{
	run: func(_ context.Context, e *env, args []string) error {
		if len(args) != 1 {
			return usagef("want the public key file (PEM), e.g. release.pub")
		}
		pub, _, err := readPublicKeyFile(args[0])
		if err != nil {
			return err
		}
		k, err := newKeyInfo(pub, filepath.Base(args[0]))
		if err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(k)
		}
		printKeyInfo(e.out, k)
		return nil
	},
}
