package manifest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/veraison/go-cose"
)

// hsm is a crypto.Signer that is not an *ecdsa.PrivateKey, as an HSM or KMS
// key would be: it only exposes Public and Sign (ASN.1 signatures).
type hsm struct{ key *ecdsa.PrivateKey }

func (h hsm) Public() crypto.PublicKey { return &h.key.PublicKey }

func (h hsm) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return h.key.Sign(r, digest, opts)
}

func TestSignVerify(t *testing.T) {
	key := testKey(t, testKeyFile)
	kid := KeyIDOf(&key.PublicKey)
	keys, err := NewKeySet(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	for name, signer := range map[string]crypto.Signer{"ecdsa key": key, "hsm": hsm{key}} {
		t.Run(name, func(t *testing.T) {
			m := designManifest()
			b, err := Sign(m, signer)
			if err != nil {
				t.Fatal(err)
			}
			// 18([h'a10126', {4: h'kid'}, h'payload', h'sig'])
			prefix := append(unhex(t, "d2 84 43a10126 a1 04 48"), kid[:]...)
			prefix = append(append(prefix, 0x58, byte(len(unhex(t, designPayloadHex)))), unhex(t, designPayloadHex)...)
			if !bytes.HasPrefix(b, append(prefix, 0x58, 0x40)) || len(b) != len(prefix)+2+64 {
				t.Fatalf("signed manifest\n%x\ndoes not have the contract's layout\n%x 5840 <64 bytes>", b, prefix)
			}

			s, err := Verify(b, keys)
			if err != nil {
				t.Fatal(err)
			}
			if s.KeyID != kid || !reflect.DeepEqual(&s.Manifest, m) || !bytes.Equal(s.Raw, b) ||
				!bytes.Equal(s.Payload, unhex(t, designPayloadHex)) {
				t.Fatalf("Verify = %+v", s)
			}
			p, err := Parse(b)
			if err != nil || !reflect.DeepEqual(p, s) {
				t.Fatalf("Parse = %+v, %v; Verify gave %+v", p, err, s)
			}
			if err := p.Verify(keys); err != nil {
				t.Fatalf("Signed.Verify: %v", err)
			}

			// An independent reader of the same bytes: go-cose's own
			// COSE_Sign1 decoding and verification.
			var msg cose.Sign1Message
			if err := msg.UnmarshalCBOR(b); err != nil {
				t.Fatal(err)
			}
			v, err := cose.NewVerifier(cose.AlgorithmES256, &key.PublicKey)
			if err != nil {
				t.Fatal(err)
			}
			if err := msg.Verify(nil, v); err != nil {
				t.Fatalf("go-cose does not verify it: %v", err)
			}
			if got, _ := msg.Headers.Unprotected[cose.HeaderLabelKeyID].([]byte); !bytes.Equal(got, kid[:]) {
				t.Errorf("go-cose reads key ID %x", got)
			}
		})
	}
}

func TestSignRefuses(t *testing.T) {
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	key := testKey(t, testKeyFile)
	for _, c := range []struct {
		name   string
		m      *Manifest
		signer crypto.Signer
		want   error
	}{
		{"P-384 key", designManifest(), p384, ErrKeyType},
		{"Ed25519 key", designManifest(), ed, ErrKeyType},
		{"invalid manifest", &Manifest{Version: "1.0.0"}, key, ErrMalformed},
		{"signer returning garbage", designManifest(), badSigner{key}, nil},
	} {
		b, err := Sign(c.m, c.signer)
		if err == nil || (c.want != nil && !errors.Is(err, c.want)) {
			t.Errorf("%s: Sign = %x, %v; want %v", c.name, b, err, c.want)
		}
	}
}

// badSigner signs with another key than the one it says it has: Sign must
// notice, not write a manifest no device accepts.
type badSigner struct{ key *ecdsa.PrivateKey }

func (b badSigner) Public() crypto.PublicKey { return &b.key.PublicKey }

func (b badSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	return other.Sign(r, digest, opts)
}

// refusedManifests are signed manifests Verify must refuse, each with the
// sentinel error and a word of the message. The fuzz targets start from
// them too.
func refusedManifests(t testing.TB) []struct {
	name string
	in   []byte
	want error
	text string
} {
	key, other := testKey(t, testKeyFile), testKey(t, unknownKeyFile)
	payload := unhex(t, designPayloadHex)
	good, sigAt := cose1{key: key, payload: payload}.build(t)
	sig := good[sigAt:]
	otherKid := KeyIDOf(&other.PublicKey)
	mainKid := KeyIDOf(&key.PublicKey)
	tampered := bytes.Replace(bytes.Clone(good), []byte("1.2.4"), []byte("1.2.5"), 1)
	flippedSig := bytes.Clone(good)
	flippedSig[len(flippedSig)-1] ^= 1
	signedPayload := func(p []byte) []byte { return cose1{key: key, payload: p}.bytes(t) }
	withProtected := func(p []byte) []byte { return cose1{key: key, protected: p, payload: payload}.bytes(t) }
	return []struct {
		name string
		in   []byte
		want error
		text string
	}{
		{"empty", nil, ErrMalformed, "empty"},
		{"too large", append([]byte{0xd2}, make([]byte, 8*1024)...), ErrMalformed, "limit 8192"},
		{"untagged", good[1:], ErrMalformed, "tag 18"},
		{"tag 17", append([]byte{0xd1}, good[1:]...), ErrMalformed, "tag 18"},
		{"tag 18 non-minimal", append([]byte{0xd8, 0x12}, good[1:]...), ErrMalformed, "tag 18"},
		{"two tags", append([]byte{0xd2}, good...), ErrMalformed, "tag"},
		{"truncated by one", good[:len(good)-1], ErrMalformed, "unexpected EOF"},
		{"truncated to the head", good[:2], ErrMalformed, "EOF"},
		{"trailing byte", append(bytes.Clone(good), 0), ErrMalformed, "extraneous"},
		{"array of 3", append([]byte{0xd2, 0x83}, good[2:sigAt-2]...), ErrMalformed, "number of elements"},
		{"array of 5", cose1{key: key, head: unhex(t, "d285"), payload: payload, tail: []byte{0}}.bytes(t), ErrMalformed, "number of elements"},
		{"map instead of array", append(unhex(t, "d2a2"), good[2:]...), ErrMalformed, "cannot unmarshal"},
		{"indefinite array", cose1{key: key, head: unhex(t, "d29f"), payload: payload, tail: []byte{0xff}}.bytes(t), ErrMalformed, "indefinite"},
		{"indefinite payload", cose1{key: key, payload: payload,
			rawPayload: append(append(append(appendHead([]byte{0x5f}, 2, 3), payload[:3]...), appendHead(nil, 2, uint64(len(payload)-3))...), append(payload[3:], 0xff)...)}.bytes(t),
			ErrMalformed, "indefinite"},
		{"non-minimal payload head", cose1{key: key, payload: payload,
			rawPayload: append([]byte{0x59, 0, byte(len(payload))}, payload...)}.bytes(t), ErrMalformed, "deterministic"},
		{"non-minimal signature head", append(good[:sigAt-2:sigAt-2], append([]byte{0x59, 0, 64}, sig...)...), ErrMalformed, "deterministic"},
		{"non-minimal key ID head", cose1{key: key, unprotected: append(unhex(t, "a1 04 5808"), mainKid[:]...), payload: payload}.bytes(t), ErrMalformed, "deterministic"},
		{"non-minimal header map head", cose1{key: key, unprotected: append(unhex(t, "b801 04 48"), mainKid[:]...), payload: payload}.bytes(t), ErrMalformed, "deterministic"},
		{"protected {1: -35} (ES384)", withProtected(unhex(t, "a1013822")), ErrMalformed, "protected header"},
		{"protected empty", withProtected([]byte{}), ErrMalformed, "protected header"},
		{"protected {}", withProtected([]byte{0xa0}), ErrMalformed, "protected header"},
		{"protected with kid", cose1{key: key, protected: append(unhex(t, "a2 0126 0448"), mainKid[:]...), unprotected: []byte{0xa0}, payload: payload}.bytes(t), ErrMalformed, "protected header"},
		{"protected with an extra label", withProtected(unhex(t, "a2 0126 0300")), ErrMalformed, "protected header"},
		{"protected with crit", withProtected(unhex(t, "a2 0126 028104")), ErrMalformed, "protected header"},
		{"protected non-minimal -7", withProtected(unhex(t, "a1 01 3806")), ErrMalformed, "protected header"},
		{"protected as map, not bstr", cose1{key: key, rawProt: unhex(t, "a10126"), payload: payload}.bytes(t), ErrMalformed, "cannot unmarshal"},
		{"unprotected empty", cose1{key: key, unprotected: []byte{0xa0}, payload: payload}.bytes(t), ErrMalformed, "exactly {4: key ID}"},
		{"unprotected extra label", cose1{key: key, unprotected: append(append(unhex(t, "a2 0448"), mainKid[:]...), 0x03, 0x00), payload: payload}.bytes(t), ErrMalformed, "exactly {4: key ID}"},
		{"unprotected duplicate kid", cose1{key: key, unprotected: append(append(append(unhex(t, "a2 0448"), mainKid[:]...), 0x04, 0x48), mainKid[:]...), payload: payload}.bytes(t), ErrMalformed, "duplicate"},
		{"kid as text", cose1{key: key, unprotected: append(unhex(t, "a1 0468"), "c5e957cc"...), payload: payload}.bytes(t), ErrMalformed, "not a byte string"},
		{"kid of 7 bytes", cose1{key: key, unprotected: append(unhex(t, "a1 0447"), mainKid[:7]...), payload: payload}.bytes(t), ErrMalformed, "7 bytes"},
		{"tag inside", cose1{key: key, unprotected: append(unhex(t, "a1 04 c2 48"), mainKid[:]...), payload: payload}.bytes(t), ErrMalformed, "tag"},
		{"payload null (detached)", cose1{key: key, payload: payload, rawPayload: []byte{0xf6}}.bytes(t), ErrMalformed, "payload missing"},
		{"signature of 63 bytes", cose1{key: key, payload: payload, sig: sig[:63]}.bytes(t), ErrMalformed, "63 bytes"},
		{"signature of 65 bytes", cose1{key: key, payload: payload, sig: append(bytes.Clone(sig), 0)}.bytes(t), ErrMalformed, "65 bytes"},
		{"signature empty", cose1{key: key, payload: payload, sig: []byte{}}.bytes(t), ErrMalformed, "0 bytes"},
		{"unknown key", cose1{key: other, payload: payload}.bytes(t), ErrUnknownKey, otherKid.String()},
		{"wrong kid", cose1{key: key, kid: &otherKid, payload: payload}.bytes(t), ErrUnknownKey, otherKid.String()},
		{"forged kid", cose1{key: other, kid: &mainKid, payload: payload}.bytes(t), ErrBadSignature, mainKid.String()},
		{"tampered payload", tampered, ErrBadSignature, "not signed by"},
		{"tampered signature", flippedSig, ErrBadSignature, "not signed by"},
		{"zero signature", cose1{key: key, payload: payload, sig: make([]byte, 64)}.bytes(t), ErrBadSignature, "not signed by"},
		{"signed payload format 2", signedPayload(bytes.Replace(payload, []byte{0x01, 0x01}, []byte{0x01, 0x02}, 1)), ErrMalformed, "format (1) is 2"},
		{"signed payload duplicate key", signedPayload(append(append([]byte{0xab}, payload[1:]...), unhex(t, "0365312e322e35")...)), ErrMalformed, "duplicate"},
		{"signed payload not a map", signedPayload(unhex(t, "8101")), ErrMalformed, "cannot unmarshal"},
		{"signed payload empty hardware", signedPayload(bytes.Replace(payload, unhex(t, "0582 6865737033322d7632 6865737033322d7633"), unhex(t, "0580"), 1)), ErrMalformed, "hardware (5) missing"},
	}
}

func TestVerifyRefuses(t *testing.T) {
	key := testKey(t, testKeyFile)
	keys, _ := NewKeySet(&key.PublicKey)
	for _, c := range refusedManifests(t) {
		t.Run(c.name, func(t *testing.T) {
			s, err := Verify(c.in, keys)
			if err == nil {
				t.Fatalf("accepted: %+v", s.Manifest)
			}
			if !errors.Is(err, c.want) {
				t.Errorf("error %v does not wrap %v", err, c.want)
			}
			if !strings.Contains(err.Error(), c.text) {
				t.Errorf("error %q does not mention %q", err, c.text)
			}
			// Parse, without the signature, agrees on what is malformed.
			if _, perr := Parse(c.in); (perr != nil) != errors.Is(err, ErrMalformed) {
				t.Errorf("Parse = %v, Verify = %v", perr, err)
			}
		})
	}
}

// Every single-bit change and every truncation of a signed manifest is
// refused.
func TestVerifyRefusesEveryChange(t *testing.T) {
	key := testKey(t, testKeyFile)
	keys, _ := NewKeySet(&key.PublicKey)
	good, err := Sign(designManifest(), key)
	if err != nil {
		t.Fatal(err)
	}
	for i := range good {
		for bit := range 8 {
			b := bytes.Clone(good)
			b[i] ^= 1 << bit
			if _, err := Verify(b, keys); err == nil {
				t.Fatalf("bit %d of byte %d flipped: accepted", bit, i)
			}
		}
		if _, err := Verify(good[:i], keys); err == nil {
			t.Fatalf("truncated to %d bytes: accepted", i)
		}
	}
}

func TestKeySetRefusesOtherCurves(t *testing.T) {
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if _, err := NewKeySet(&p384.PublicKey); !errors.Is(err, ErrKeyType) {
		t.Errorf("NewKeySet(P-384) = %v", err)
	}
	// A key set handing out a P-384 key under a P-256 key's ID (a broken
	// Keys implementation) still never verifies.
	key := testKey(t, testKeyFile)
	b, _ := Sign(designManifest(), key)
	if _, err := Verify(b, KeySet{KeyIDOf(&key.PublicKey): &p384.PublicKey}); err == nil {
		t.Error("verified with a P-384 key")
	}
}
