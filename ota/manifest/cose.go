package manifest

import (
	"bytes"
	"crypto"
	"crypto/rand"
	_ "crypto/sha256" // ES256 hashes with SHA-256 (go-cose looks it up by crypto.Hash)
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"

	"github.com/otamq/otamq/ota/wire"
)

// The fixed parts of a signed manifest (docs/PROTOCOL.md, "Manifests").
const (
	// coseSign1Tag is CBOR tag 18, COSE_Sign1, in its one-byte head.
	coseSign1Tag = 0xd2
	// SignatureLen is the length of an ES256 signature, raw r‖s.
	SignatureLen = 64
)

// protectedES256 is the protected header, the map {1: -7} (alg: ES256) in
// its deterministic encoding; it is the only protected header accepted.
var protectedES256 = []byte{0xa1, 0x01, 0x26}

// Signed is a parsed signed manifest. Until Verify has returned nil for it,
// nothing in it is authenticated.
type Signed struct {
	// Raw is the signed manifest exactly as received: what is stored and
	// sent to devices, never re-encoded.
	Raw []byte
	// KeyID names the key that claims to have signed it.
	KeyID KeyID
	// Payload is the signed payload bytes, a slice of Raw.
	Payload []byte
	// Manifest is the decoded, validated payload.
	Manifest Manifest

	protected []byte // a slice of Raw
	signature []byte // a slice of Raw
}

// envelope is a COSE_Sign1 after its tag: [protected, unprotected, payload,
// signature].
type envelope struct {
	_           struct{} `cbor:",toarray"`
	Protected   []byte
	Unprotected map[int64]cbor.RawMessage
	Payload     []byte
	Signature   []byte
}

// parseEnvelope checks the COSE_Sign1 structure of b without looking into
// the payload.
func parseEnvelope(b []byte) (*Signed, error) {
	if len(b) == 0 {
		return nil, malformed("empty")
	}
	if len(b) > wire.MaxManifestSize {
		return nil, malformed("%d bytes, limit %d", len(b), wire.MaxManifestSize)
	}
	if b[0] != coseSign1Tag {
		return nil, malformed("does not start with CBOR tag 18 (COSE_Sign1, byte d2) but with byte %02x", b[0])
	}
	var e envelope
	if err := decMode.Unmarshal(b[1:], &e); err != nil {
		return nil, malformed("COSE_Sign1: %v", err)
	}
	if !bytes.Equal(e.Protected, protectedES256) {
		return nil, malformed("protected header is h'%x', want {1: -7} (h'a10126', ES256 only)", e.Protected)
	}
	if len(e.Unprotected) != 1 || e.Unprotected[4] == nil {
		return nil, malformed("unprotected header must be exactly {4: key ID}, it has %d labels", len(e.Unprotected))
	}
	var kid []byte
	if raw := e.Unprotected[4]; raw[0]>>5 != 2 || decMode.Unmarshal(raw, &kid) != nil {
		return nil, malformed("key ID (header label 4) is not a byte string")
	}
	s := &Signed{Raw: b}
	if len(kid) != len(s.KeyID) {
		return nil, malformed("key ID is %d bytes, want %d", len(kid), len(s.KeyID))
	}
	copy(s.KeyID[:], kid)
	if len(e.Payload) == 0 {
		return nil, malformed("payload missing (detached payloads are not supported)")
	}
	if len(e.Signature) != SignatureLen {
		return nil, malformed("signature is %d bytes, want %d (ES256 r‖s)", len(e.Signature), SignatureLen)
	}
	// The envelope's bytes must be exactly the deterministic encoding of
	// its parts (no non-minimal heads, which only hand-made encoders write).
	// Then the positions of the parts in b are known, and Payload and the
	// signature are kept as slices of the received bytes.
	if !bytes.Equal(b, assemble(e.Protected, s.KeyID, e.Payload, e.Signature)) {
		return nil, malformed("COSE_Sign1 is not in deterministic encoding (a CBOR head is longer than needed)")
	}
	s.signature = b[len(b)-SignatureLen:]
	payloadEnd := len(b) - SignatureLen - 2 // 58 40
	s.Payload = b[payloadEnd-len(e.Payload) : payloadEnd]
	s.protected = b[3 : 3+len(protectedES256)] // after d2 84 43
	return s, nil
}

// Parse checks the structure of a signed manifest (a tagged COSE_Sign1,
// protected header {1: -7}, unprotected header {4: 8-byte key ID}, a
// 64-byte signature, at most wire.MaxManifestSize bytes) and decodes and
// validates its payload. It does not check the signature: call Verify
// before trusting anything in the result. b is kept, not copied. Errors wrap
// ErrMalformed.
func Parse(b []byte) (*Signed, error) {
	s, err := parseEnvelope(b)
	if err != nil {
		return nil, err
	}
	m, err := DecodePayload(s.Payload)
	if err != nil {
		return nil, err
	}
	s.Manifest = *m
	return s, nil
}

// Verify checks s's signature over the received bytes with the key that
// keys has for s.KeyID. It returns an error wrapping ErrUnknownKey or
// ErrBadSignature, or nil.
func (s *Signed) Verify(keys Keys) error {
	pub, ok := keys.Lookup(s.KeyID)
	if !ok {
		return fmt.Errorf("%w: key ID %s", ErrUnknownKey, s.KeyID)
	}
	v, err := cose.NewVerifier(cose.AlgorithmES256, pub)
	if err != nil {
		return fmt.Errorf("%w: key %s: %v", ErrKeyType, s.KeyID, err)
	}
	if err := v.Verify(sigStructure(s.protected, s.Payload), s.signature); err != nil {
		if errors.Is(err, cose.ErrVerification) {
			return fmt.Errorf("%w: not signed by key %s as received", ErrBadSignature, s.KeyID)
		}
		return fmt.Errorf("%w: key %s: %v", ErrBadSignature, s.KeyID, err)
	}
	return nil
}

// Verify parses a signed manifest, checks its signature with the trusted key
// its key ID names and only then decodes and validates the payload. This is
// what to call on an upload. Errors wrap ErrMalformed, ErrUnknownKey or
// ErrBadSignature.
func Verify(b []byte, keys Keys) (*Signed, error) {
	s, err := parseEnvelope(b)
	if err != nil {
		return nil, err
	}
	if err := s.Verify(keys); err != nil {
		return nil, err
	}
	m, err := DecodePayload(s.Payload)
	if err != nil {
		return nil, fmt.Errorf("signed by %s, but: %w", s.KeyID, err)
	}
	s.Manifest = *m
	return s, nil
}

// Sign encodes m deterministically and signs it with signer, which must hold
// a P-256 key: an *ecdsa.PrivateKey or any crypto.Signer, such as an HSM
// or KMS key, that returns ASN.1 ECDSA signatures. It returns the tagged
// COSE_Sign1 bytes, checked against the signer's public key before they are
// returned.
func Sign(m *Manifest, signer crypto.Signer) ([]byte, error) {
	pub, err := checkPublic(signer.Public())
	if err != nil {
		return nil, err
	}
	kid := KeyIDOf(pub)
	payload, err := m.Encode()
	if err != nil {
		return nil, err
	}
	cs, err := cose.NewSigner(cose.AlgorithmES256, signer)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	sig, err := cs.Sign(rand.Reader, sigStructure(protectedES256, payload))
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	out := assemble(protectedES256, kid, payload, sig)
	if len(out) > wire.MaxManifestSize {
		return nil, malformed("signed manifest is %d bytes, limit %d (fewer components or shorter names)", len(out), wire.MaxManifestSize)
	}
	if _, err := Verify(out, KeySet{kid: pub}); err != nil {
		return nil, fmt.Errorf("sign: the signer's output does not verify: %w", err)
	}
	return out, nil
}

// sigStructure returns the ToBeSigned bytes of RFC 9052 §4.4: the array
// ["Signature1", protected, external_aad, payload] with an empty
// external_aad, around the protected and payload byte strings as given.
func sigStructure(protected, payload []byte) []byte {
	const context = "Signature1"
	b := make([]byte, 0, 1+1+len(context)+9+len(protected)+1+9+len(payload))
	b = appendHead(b, 4, 4)
	b = appendHead(b, 3, uint64(len(context)))
	b = append(b, context...)
	b = appendHead(b, 2, uint64(len(protected)))
	b = append(b, protected...)
	b = appendHead(b, 2, 0)
	b = appendHead(b, 2, uint64(len(payload)))
	return append(b, payload...)
}

// assemble writes a tagged COSE_Sign1 in deterministic encoding:
// 18([protected, {4: kid}, payload, signature]).
func assemble(protected []byte, kid KeyID, payload, sig []byte) []byte {
	b := make([]byte, 0, 32+len(protected)+len(payload)+len(sig))
	b = append(b, coseSign1Tag)
	b = appendHead(b, 4, 4)
	b = appendHead(b, 2, uint64(len(protected)))
	b = append(b, protected...)
	b = appendHead(b, 5, 1)
	b = appendHead(b, 0, 4)
	b = appendHead(b, 2, uint64(len(kid)))
	b = append(b, kid[:]...)
	b = appendHead(b, 2, uint64(len(payload)))
	b = append(b, payload...)
	b = appendHead(b, 2, uint64(len(sig)))
	return append(b, sig...)
}

// appendHead appends a CBOR head in its shortest form.
func appendHead(dst []byte, major byte, v uint64) []byte { return wire.AppendHead(dst, major, v) }
