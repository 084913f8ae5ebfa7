package manifest

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
)

func TestEncodeDesignExample(t *testing.T) {
	got := mustEncode(t, designManifest())
	if want := unhex(t, designPayloadHex); !bytes.Equal(got, want) {
		t.Fatalf("encodes as\n%x\nwant\n%x", got, want)
	}
	m, err := DecodePayload(got)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(m, designManifest()) {
		t.Fatalf("decoded %+v", m)
	}
}

func TestEncodeComponentsAndOptionalKeys(t *testing.T) {
	m := &Manifest{Sequence: 1, Version: "2.0.0-rc.1+build.5", Hardware: []string{"rpi4"}, ImageSize: 1, ImageDigest: seq32,
		Kind: KindFeatureFlags, Components: []Component{{Name: "esp-idf", Version: "v5.3.1", Digest: seq32}}}
	b := mustEncode(t, m)
	// Keys 4 and 6 are left out when empty; 9 and 10 are always written.
	var keys map[uint64]cbor.RawMessage
	if err := decMode.Unmarshal(b, &keys); err != nil {
		t.Fatal(err)
	}
	for _, k := range []uint64{4, 6} {
		if _, ok := keys[k]; ok {
			t.Errorf("key %d written for an empty value", k)
		}
	}
	for _, k := range []uint64{1, 2, 3, 5, 7, 8, 9, 10, 11} {
		if _, ok := keys[k]; !ok {
			t.Errorf("key %d missing", k)
		}
	}
	if want := "83 67657370" + "2d696466 6676352e332e31 5820"; !bytes.Contains(b, unhex(t, want)) {
		t.Errorf("component not encoded as [name, version, digest]: %x", b)
	}
	got, err := DecodePayload(b)
	if err != nil || !reflect.DeepEqual(got, m) {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
}

// refusedPayloads are payloads DecodePayload must refuse, each with a
// word its error must contain. The fuzz targets start from them too.
func refusedPayloads(t testing.TB) []struct {
	name string
	in   []byte
	want string
} {
	d := seq32[:]
	good := func(kv ...any) []byte {
		base := []any{1, 1, 2, 17, 3, "1.2.4", 5, []string{"esp32-v2"}, 7, 1024, 8, d}
		return pairs(t, append(base, kv...)...)
	}
	without := func(key int) []byte {
		base := []any{1, 1, 2, 17, 3, "1.2.4", 5, []string{"esp32-v2"}, 7, 1024, 8, d}
		var kv []any
		for i := 0; i < len(base); i += 2 {
			if base[i] != key {
				kv = append(kv, base[i], base[i+1])
			}
		}
		return pairs(t, kv...)
	}
	return []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "empty"},
		{"too large", make([]byte, 8*1024+1), "limit"},
		{"not a map", unhex(t, "8101"), "cannot unmarshal"},
		{"duplicate key", good(3, "1.2.5"), "duplicate"},
		{"indefinite map", append(append([]byte{0xbf}, good()[1:]...), 0xff), "indefinite"},
		{"indefinite text", pairs(t, 1, 1, 3, cbor.RawMessage(unhex(t, "7f 6131 ff"))), "indefinite"},
		{"tag", good(4, cbor.RawMessage(unhex(t, "c0 6161"))), "tag"},
		{"key 0", good(0, 1), "key 0"},
		{"negative key", good(-1, 1), "cannot unmarshal"},
		{"text key", good("x", 1), "cannot unmarshal"},
		{"null for text", good(6, nil), "major type 7"},
		{"float size", pairs(t, 7, 1.5), "major type 7"},
		{"uint for text", good(4, 5), "major type 0"},
		{"text in hardware", pairs(t, 1, 1, 2, 1, 3, "1.0.0", 5, []any{1}, 7, 1, 8, d), "cannot unmarshal"},
		{"trailing bytes", append(good(), 0), "extraneous"},
		{"invalid utf8", good(4, cbor.RawMessage(unhex(t, "61ff"))), "UTF-8"},
		{"format missing", without(1), "format (1) missing"},
		{"format 2", pairs(t, 1, 2), "format (1) is 2"},
		{"sequence missing", without(2), "sequence (2) missing"},
		{"version missing", without(3), "version (3) missing"},
		{"version not semver", pairs(t, 1, 1, 2, 1, 3, "1.2", 5, []string{"a"}, 7, 1, 8, d), "semantic version"},
		{"version with v", pairs(t, 1, 1, 2, 1, 3, "v1.2.3", 5, []string{"a"}, 7, 1, 8, d), "semantic version"},
		{"hardware missing", without(5), "hardware (5) missing"},
		{"hardware empty", good(5, []string{}), "duplicate"}, // a second key 5
		{"hardware empty list", pairs(t, 1, 1, 2, 1, 3, "1.0.0", 5, []string{}, 7, 1, 8, d), "hardware (5) missing"},
		{"hardware empty name", pairs(t, 1, 1, 2, 1, 3, "1.0.0", 5, []string{""}, 7, 1, 8, d), "entry 0 is empty"},
		{"hardware twice", pairs(t, 1, 1, 2, 1, 3, "1.0.0", 5, []string{"a", "a"}, 7, 1, 8, d), "twice"},
		{"hardware long name", pairs(t, 1, 1, 2, 1, 3, "1.0.0", 5, []string{strings.Repeat("h", 65)}, 7, 1, 8, d), "limit 64"},
		{"hardware 17", pairs(t, 1, 1, 2, 1, 3, "1.0.0", 5, strings.Split("a b c d e f g h i j k l m n o p q", " "), 7, 1, 8, d), "limit 16"},
		{"size missing", without(7), "image size (7) missing"},
		{"size zero", good(7, 0), "duplicate"},
		{"size zero only", pairs(t, 1, 1, 2, 1, 3, "1.0.0", 5, []string{"a"}, 7, 0, 8, d), "image size (7) missing or zero"},
		{"size overflow", pairs(t, 7, cbor.RawMessage(unhex(t, "1bffffffffffffffff")), 10, 300), "overflows"},
		{"digest missing", without(8), "image digest (8) is 0 bytes"},
		{"digest 31", pairs(t, 1, 1, 2, 1, 3, "1.0.0", 5, []string{"a"}, 7, 1, 8, d[:31]), "is 31 bytes"},
		{"digest text", pairs(t, 1, 1, 2, 1, 3, "1.0.0", 5, []string{"a"}, 7, 1, 8, "x"), "major type 3"},
		{"min bootloader not semver", good(6, "2.1"), "minimum bootloader (6)"},
		{"kind 3", good(10, 3), "kind (10) 3"},
		{"kind overflow", good(10, 256), "overflows"},
		{"secure version overflow", good(9, uint64(1)<<32), "overflows"},
		{"component not array", good(11, []any{"x"}), "cannot unmarshal"},
		{"component of 2", good(11, []any{[]any{"a", "1"}}), "cannot unmarshal"},
		{"component short digest", good(11, []any{[]any{"a", "1", d[:4]}}), "component 0: digest is 4 bytes"},
		{"component no name", good(11, []any{[]any{"", "1", d}}), "component 0: name missing"},
		{"component twice", good(11, []any{[]any{"a", "1", d}, []any{"a", "2", d}}), "listed twice"},
		{"components 33", good(11, make([]any, 33)), "exceeded max number of elements"},
		{"nested too deep", good(12, []any{[]any{[]any{[]any{1}}}}), "exceeded max nested level"},
	}
}

func TestDecodePayloadRefuses(t *testing.T) {
	for _, c := range refusedPayloads(t) {
		t.Run(c.name, func(t *testing.T) {
			m, err := DecodePayload(c.in)
			if err == nil {
				t.Fatalf("accepted: %+v", m)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("error %v does not wrap ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
		})
	}
}

func TestDecodePayloadAcceptsAnyOrderAndLaterKeys(t *testing.T) {
	// Keys in reverse order, and keys 12 and 100 from later contract
	// versions, with values of any type.
	in := pairs(t, 100, map[int]string{1: "x"}, 12, "future", 10, 1, 8, seq32[:], 7, 5, 5, []string{"esp32-v2"},
		3, "1.0.0", 2, 0, 1, 1)
	m, err := DecodePayload(in)
	if err != nil {
		t.Fatal(err)
	}
	want := &Manifest{Sequence: 0, Version: "1.0.0", Hardware: []string{"esp32-v2"}, ImageSize: 5, ImageDigest: seq32, Kind: KindConfig}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("decoded %+v, want %+v", m, want)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	m := &Manifest{Version: "x", Hardware: []string{"a", ""}, Kind: 7, Components: []Component{{}}}
	err := m.Validate()
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("Validate = %v", err)
	}
	for _, want := range []string{"version (3)", "entry 1 is empty", "image size (7)", "image digest (8)", "kind (10) 7",
		"component 0: name missing", "component 0: version missing", "component 0: digest missing"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not mention %q", err, want)
		}
	}
	if _, err := m.Encode(); !errors.Is(err, ErrMalformed) {
		t.Errorf("Encode of an invalid manifest = %v", err)
	}
	if err := designManifest().Validate(); err != nil {
		t.Errorf("design example: %v", err)
	}
}

func TestCheckImage(t *testing.T) {
	m := designManifest()
	other := seq32
	other[31] ^= 1
	for _, c := range []struct {
		name   string
		size   uint64
		digest Digest
		want   error
	}{
		{"ok", m.ImageSize, seq32, nil},
		{"short", m.ImageSize - 1, seq32, ErrSizeMismatch},
		{"long", m.ImageSize + 1, other, ErrSizeMismatch},
		{"other bytes", m.ImageSize, other, ErrDigestMismatch},
	} {
		err := m.CheckImage(c.size, c.digest)
		if !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
			t.Errorf("%s: CheckImage = %v, want %v", c.name, err, c.want)
		}
	}
	size, d, err := HashImage(strings.NewReader("abc"))
	if err != nil || size != 3 || d.String() != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Errorf("HashImage(abc) = %d %s %v", size, d, err)
	}
}

func TestKindAndDigestText(t *testing.T) {
	for _, k := range []Kind{KindFirmware, KindConfig, KindFeatureFlags} {
		got, err := ParseKind(k.String())
		if err != nil || got != k {
			t.Errorf("ParseKind(%q) = %v, %v", k, got, err)
		}
	}
	if _, err := ParseKind("feature_flags"); err == nil {
		t.Error("ParseKind accepted feature_flags")
	}
	if Kind(3).Valid() || Kind(3).String() != "kind-3" {
		t.Errorf("Kind(3) = %s valid=%v", Kind(3), Kind(3).Valid())
	}
	b, err := json.Marshal(designManifest())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"image_digest":"`+hex.EncodeToString(seq32[:])+`"`) || !strings.Contains(string(b), `"kind":"firmware"`) {
		t.Errorf("JSON: %s", b)
	}
	var back Manifest
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(&back, designManifest()) {
		t.Errorf("JSON round trip: %+v %v", back, err)
	}
	for _, s := range []string{"", "00", strings.Repeat("g", 64), strings.Repeat("0", 63)} {
		if _, err := ParseDigest(s); err == nil {
			t.Errorf("ParseDigest(%q) accepted", s)
		}
	}
}
