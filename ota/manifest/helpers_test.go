package manifest

import (
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"
)

// The test keys in testdata were generated once with GenerateKey and
// WritePrivateKey. They sign the shared test vectors and protect nothing.
const (
	testKeyFile    = "vectors.key"
	unknownKeyFile = "vectors-unknown.key"
)

func testKey(t testing.TB, name string) *ecdsa.PrivateKey {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	k, err := ParsePrivateKey(data)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// seq32 is the digest 00 01 .. 1f of the examples in docs/PROTOCOL.md.
var seq32 = func() (d Digest) {
	for i := range d {
		d[i] = byte(i)
	}
	return d
}()

// designManifest is the manifest payload example of docs/PROTOCOL.md.
func designManifest() *Manifest {
	return &Manifest{
		Sequence: 17, Version: "1.2.4", BuildID: "20251124-143022", Hardware: []string{"esp32-v2", "esp32-v3"},
		MinBootloader: "2.1.0", ImageSize: 1048576, ImageDigest: seq32, SecureVersion: 2, Kind: KindFirmware,
	}
}

// designPayloadHex is designManifest's deterministic encoding, written out
// by hand from the CBOR rules (RFC 8949 §4.2.1).
const designPayloadHex = "aa" +
	"0101" + // 1: 1
	"0211" + // 2: 17
	"0365312e322e34" + // 3: "1.2.4"
	"046f32303235313132342d313433303232" + // 4: "20251124-143022"
	"0582 6865737033322d7632 6865737033322d7633" + // 5: ["esp32-v2", "esp32-v3"]
	"0665322e312e30" + // 6: "2.1.0"
	"071a00100000" + // 7: 1048576
	"085820 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f" + // 8: h'00..1f'
	"0902" + // 9: 2
	"0a00" // 10: 0

// cose1 assembles a COSE_Sign1 from parts, so that tests and vectors can
// build the wrong ones as well. Zero fields take the contract's values.
type cose1 struct {
	head        []byte // tag and array head; default d2 84
	protected   []byte // the protected header map; default a10126
	rawProt     []byte // the whole protected item, replacing bstr(protected)
	unprotected []byte // the unprotected map item; default {4: kid}
	payload     []byte // the payload (signed as given)
	rawPayload  []byte // the whole payload item, replacing bstr(payload)
	sig         []byte // the signature; default ES256 by key over the parts
	tail        []byte // appended after the signature item (e.g. ff)
	key         *ecdsa.PrivateKey
	kid         *KeyID // default: the key's ID
}

// build returns the bytes and the offset of the signature's content.
func (c cose1) build(t testing.TB) ([]byte, int) {
	t.Helper()
	prot := c.protected
	if prot == nil {
		prot = protectedES256
	}
	kid := KeyIDOf(&c.key.PublicKey)
	if c.kid != nil {
		kid = *c.kid
	}
	sig := c.sig
	if sig == nil {
		sig = es256(t, c.key, prot, c.payload)
	}
	b := append([]byte{}, c.head...)
	if c.head == nil {
		b = append(b, 0xd2, 0x84)
	}
	if c.rawProt != nil {
		b = append(b, c.rawProt...)
	} else {
		b = appendHead(b, 2, uint64(len(prot)))
		b = append(b, prot...)
	}
	if c.unprotected != nil {
		b = append(b, c.unprotected...)
	} else {
		b = append(b, 0xa1, 0x04, 0x48)
		b = append(b, kid[:]...)
	}
	if c.rawPayload != nil {
		b = append(b, c.rawPayload...)
	} else {
		b = appendHead(b, 2, uint64(len(c.payload)))
		b = append(b, c.payload...)
	}
	b = appendHead(b, 2, uint64(len(sig)))
	off := len(b)
	b = append(b, sig...)
	return append(b, c.tail...), off
}

func (c cose1) bytes(t testing.TB) []byte {
	b, _ := c.build(t)
	return b
}

// es256 signs the Sig_structure of protected and payload with key through
// go-cose, returning raw r‖s.
func es256(t testing.TB, key *ecdsa.PrivateKey, protected, payload []byte) []byte {
	t.Helper()
	s, err := cose.NewSigner(cose.AlgorithmES256, key)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := s.Sign(rand.Reader, sigStructure(protected, payload))
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

func mustEncode(t testing.TB, m *Manifest) []byte {
	t.Helper()
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pairs encodes a CBOR map with the given keys and values in the order
// given (not necessarily deterministic order); values are encoded with
// the deterministic encoder, except cbor.RawMessage values, copied as they
// are.
func pairs(t testing.TB, kv ...any) []byte {
	t.Helper()
	b := appendHead(nil, 5, uint64(len(kv)/2))
	for i := 0; i < len(kv); i += 2 {
		for _, v := range kv[i : i+2] {
			if raw, ok := v.(cbor.RawMessage); ok {
				b = append(b, raw...) // as given, even if not well-formed
				continue
			}
			e, err := encMode.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			b = append(b, e...)
		}
	}
	return b
}
