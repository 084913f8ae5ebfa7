package manifest

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

// FuzzParseSigned feeds signed manifests to Parse and Verify: they never
// panic, agree with each other, and what they accept is consistent (the
// payload decodes to the same manifest, whose own encoding decodes to it
// again).
func FuzzParseSigned(f *testing.F) {
	key := testKey(f, testKeyFile)
	keys, _ := NewKeySet(&key.PublicKey)
	good, err := Sign(designManifest(), key)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	withComponents := designManifest()
	withComponents.Components = []Component{{Name: "esp-idf", Version: "v5.3.1", Digest: seq32}}
	if b, err := Sign(withComponents, key); err == nil {
		f.Add(b)
	}
	for _, c := range refusedManifests(f) {
		f.Add(c.in)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		p, perr := Parse(in)
		v, verr := Verify(in, keys)
		if perr != nil {
			if !errors.Is(perr, ErrMalformed) {
				t.Fatalf("Parse error %v does not wrap ErrMalformed", perr)
			}
			if verr == nil {
				t.Fatalf("Verify accepted what Parse refused (%v)", perr)
			}
			return
		}
		if !bytes.Equal(p.Raw, in) || !bytes.Contains(in, p.Payload) {
			t.Fatal("Raw or Payload are not the input's bytes")
		}
		if verr == nil && !reflect.DeepEqual(v, p) {
			t.Fatalf("Verify = %+v, Parse = %+v", v, p)
		}
		if verr != nil && !errors.Is(verr, ErrUnknownKey) && !errors.Is(verr, ErrBadSignature) {
			t.Fatalf("Parse accepted, Verify = %v", verr)
		}
		checkRoundTrip(t, &p.Manifest)
	})
}

// FuzzParsePayload feeds manifest payloads to DecodePayload.
func FuzzParsePayload(f *testing.F) {
	f.Add(mustEncode(f, designManifest()))
	f.Add(pairs(f, 12, "future", 10, 1, 8, seq32[:], 7, 5, 5, []string{"esp32-v2"}, 3, "1.0.0", 2, 0, 1, 1))
	for _, c := range refusedPayloads(f) {
		f.Add(c.in)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		m, err := DecodePayload(in)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		checkRoundTrip(t, m)
	})
}

func checkRoundTrip(t *testing.T, m *Manifest) {
	t.Helper()
	enc, err := m.Encode()
	if err != nil {
		t.Fatalf("accepted manifest does not encode: %v", err)
	}
	again, err := DecodePayload(enc)
	if err != nil || !reflect.DeepEqual(again, m) {
		t.Fatalf("round trip: %+v -> %+v, %v", m, again, err)
	}
}
