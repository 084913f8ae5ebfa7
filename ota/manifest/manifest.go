package manifest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/fxamacker/cbor/v2"

	"github.com/otamq/otamq/ota/wire"
)

// Format is the manifest format this package writes and accepts (payload
// key 1).
const Format = 1

// Limits of a manifest payload, beyond wire.MaxManifestSize for the whole
// signed manifest. Devices keep at most MaxHardware target names (the
// agent's OTA_CFG_MAX_TARGETS default).
const (
	MaxHardware      = 16
	MaxComponents    = 32
	MaxBuildIDLen    = 64
	MaxComponentName = 64
)

// Kind is what an image is (payload key 10).
type Kind uint8

// Kinds of image.
const (
	KindFirmware     Kind = 0
	KindConfig       Kind = 1
	KindFeatureFlags Kind = 2
)

var kindNames = [...]string{"firmware", "configuration", "feature-flags"}

// String returns the kind's name as build descriptions spell it.
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "kind-" + strconv.Itoa(int(k))
}

// Valid reports whether k is a kind the contract defines.
func (k Kind) Valid() bool { return int(k) < len(kindNames) }

// ParseKind returns the Kind named s ("firmware", "configuration",
// "feature-flags").
func ParseKind(s string) (Kind, error) {
	for i, n := range kindNames {
		if n == s {
			return Kind(i), nil
		}
	}
	return 0, fmt.Errorf("kind %q: want one of %s", s, strings.Join(kindNames[:], ", "))
}

// MarshalText writes the kind's name.
func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText reads a kind's name.
func (k *Kind) UnmarshalText(b []byte) error {
	v, err := ParseKind(string(b))
	if err != nil {
		return err
	}
	*k = v
	return nil
}

// Digest is a SHA-256 digest. It prints and marshals as lowercase hex.
type Digest [sha256.Size]byte

// String returns d in lowercase hex.
func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// MarshalText writes d in hex.
func (d Digest) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText reads d from hex.
func (d *Digest) UnmarshalText(b []byte) error {
	v, err := ParseDigest(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// ParseDigest reads a SHA-256 digest written as 64 hex digits.
func ParseDigest(s string) (Digest, error) {
	var d Digest
	if len(s) != 2*len(d) {
		return d, fmt.Errorf("digest %q: want %d hex digits (SHA-256), got %d", s, 2*len(d), len(s))
	}
	if _, err := hex.Decode(d[:], []byte(s)); err != nil {
		return d, fmt.Errorf("digest %q: %w", s, err)
	}
	return d, nil
}

// Component is one entry of a manifest's SBOM summary (payload key 11).
type Component struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Digest  Digest `json:"digest"`
}

// Manifest is the payload of a signed manifest (docs/PROTOCOL.md, "Manifests"): what a
// release is, which hardware it is for and which image bytes it stands for.
// Its format (key 1) is always Format.
type Manifest struct {
	// Sequence increases strictly per fleet; devices refuse a lower one than
	// they last accepted.
	Sequence uint64 `json:"sequence"`
	// Version is the image's semantic version (without a leading "v").
	Version string `json:"version"`
	// BuildID identifies the build; optional.
	BuildID string `json:"build_id,omitempty"`
	// Hardware lists the hardware models the image runs on: at least one,
	// at most MaxHardware, no duplicates.
	Hardware []string `json:"hardware"`
	// MinBootloader is the oldest bootloader version (semver) the image
	// needs; optional.
	MinBootloader string `json:"min_bootloader,omitempty"`
	// ImageSize is the image's length in bytes, more than zero.
	ImageSize uint64 `json:"image_size"`
	// ImageDigest is the SHA-256 of the image.
	ImageDigest Digest `json:"image_digest"`
	// SecureVersion is the anti-rollback counter: devices refuse an image
	// whose secure version is below their own.
	SecureVersion uint32 `json:"secure_version"`
	Kind          Kind   `json:"kind"`
	// Components is the SBOM summary; optional.
	Components []Component `json:"components,omitempty"`
}

// payload is the CBOR form of a Manifest. Format and Sequence are pointers
// so that the decoder sees whether they were present.
type payload struct {
	Format        *uint64     `cbor:"1,keyasint,omitempty"`
	Sequence      *uint64     `cbor:"2,keyasint,omitempty"`
	Version       string      `cbor:"3,keyasint"`
	BuildID       string      `cbor:"4,keyasint,omitempty"`
	Hardware      []string    `cbor:"5,keyasint"`
	MinBootloader string      `cbor:"6,keyasint,omitempty"`
	ImageSize     uint64      `cbor:"7,keyasint"`
	ImageDigest   []byte      `cbor:"8,keyasint"`
	SecureVersion uint32      `cbor:"9,keyasint"`
	Kind          Kind        `cbor:"10,keyasint"`
	Components    []component `cbor:"11,keyasint,omitempty"`
}

type component struct {
	_       struct{} `cbor:",toarray"`
	Name    string
	Version string
	Digest  []byte
}

// CBOR major type each known payload key must have (0 uint, 2 bstr,
// 3 tstr, 4 array). The library would silently take null or undefined
// as a zero value; the contract says a wrong type is refused.
var payloadMajor = [...]byte{1: 0, 2: 0, 3: 3, 4: 3, 5: 4, 6: 3, 7: 0, 8: 2, 9: 0, 10: 0, 11: 4}

const maxPayloadKey = uint64(len(payloadMajor) - 1)

var (
	decMode cbor.DecMode
	encMode cbor.EncMode
)

func init() {
	var err error
	// As ota/wire's decoder, for operator input: arrays up to MaxComponents
	// (the largest list a payload has), three levels of nesting (payload map,
	// component list, component).
	opts := wire.StrictDecOptions()
	opts.MaxArrayElements = MaxComponents
	decMode, err = opts.DecMode()
	if err != nil {
		panic(err) // static options; cannot fail
	}
	encMode, err = cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		panic(err)
	}
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// Validate reports every problem of m at once, in one error wrapping
// ErrMalformed, or nil.
func (m *Manifest) Validate() error {
	var p []string
	add := func(format string, args ...any) { p = append(p, fmt.Sprintf(format, args...)) }
	switch {
	case m.Version == "":
		add("version (3) missing")
	case len(m.Version) > wire.MaxVersionLen:
		add("version (3) is %d bytes, limit %d", len(m.Version), wire.MaxVersionLen)
	default:
		if err := wire.CheckVersion(m.Version); err != nil {
			add("version (3): %v", err)
		}
	}
	if len(m.BuildID) > MaxBuildIDLen {
		add("build ID (4) is %d bytes, limit %d", len(m.BuildID), MaxBuildIDLen)
	}
	switch {
	case len(m.Hardware) == 0:
		add("target hardware (5) missing or empty")
	case len(m.Hardware) > MaxHardware:
		add("target hardware (5) lists %d models, limit %d", len(m.Hardware), MaxHardware)
	}
	for i, h := range m.Hardware {
		switch {
		case h == "":
			add("target hardware (5) entry %d is empty", i)
		case len(h) > wire.MaxHardwareLen:
			add("target hardware (5) entry %d is %d bytes, limit %d", i, len(h), wire.MaxHardwareLen)
		case slices.Contains(m.Hardware[:i], h):
			add("target hardware (5) lists %q twice", h)
		}
	}
	if m.MinBootloader != "" {
		if len(m.MinBootloader) > wire.MaxVersionLen {
			add("minimum bootloader (6) is %d bytes, limit %d", len(m.MinBootloader), wire.MaxVersionLen)
		} else if err := wire.CheckVersion(m.MinBootloader); err != nil {
			add("minimum bootloader (6): %v", err)
		}
	}
	if m.ImageSize == 0 {
		add("image size (7) missing or zero")
	}
	if m.ImageDigest == (Digest{}) {
		add("image digest (8) missing or all zero")
	}
	if !m.Kind.Valid() {
		add("kind (10) %d is not defined", m.Kind)
	}
	if len(m.Components) > MaxComponents {
		add("components (11) lists %d, limit %d", len(m.Components), MaxComponents)
	}
	for i, c := range m.Components {
		switch {
		case c.Name == "":
			add("component %d: name missing", i)
		case len(c.Name) > MaxComponentName:
			add("component %d: name is %d bytes, limit %d", i, len(c.Name), MaxComponentName)
		case slices.ContainsFunc(m.Components[:i], func(o Component) bool { return o.Name == c.Name }):
			add("component %q listed twice", c.Name)
		}
		switch {
		case c.Version == "":
			add("component %d: version missing", i)
		case len(c.Version) > wire.MaxVersionLen:
			add("component %d: version is %d bytes, limit %d", i, len(c.Version), wire.MaxVersionLen)
		}
		if c.Digest == (Digest{}) {
			add("component %d: digest missing or all zero", i)
		}
	}
	if len(p) > 0 {
		return malformed("%s", strings.Join(p, "; "))
	}
	return nil
}

// Encode validates m and returns the deterministic CBOR encoding of its
// payload (keys 1 to 10 always, 4, 6 and 11 only when set): the bytes that
// get signed.
func (m *Manifest) Encode() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	format, seq := uint64(Format), m.Sequence
	p := payload{
		Format: &format, Sequence: &seq, Version: m.Version, BuildID: m.BuildID, Hardware: m.Hardware,
		MinBootloader: m.MinBootloader, ImageSize: m.ImageSize, ImageDigest: m.ImageDigest[:],
		SecureVersion: m.SecureVersion, Kind: m.Kind,
	}
	for _, c := range m.Components {
		p.Components = append(p.Components, component{Name: c.Name, Version: c.Version, Digest: bytes.Clone(c.Digest[:])})
	}
	b, err := encMode.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	return b, nil
}

// DecodePayload decodes and validates a manifest payload (the COSE
// payload, not the signed manifest). Keys may come in any order; unknown keys
// above 11 are ignored (room for later contract versions); duplicate keys,
// indefinite lengths, tags, other key types and a wrong type for a known key
// are refused. Every error wraps ErrMalformed.
func DecodePayload(b []byte) (*Manifest, error) {
	if len(b) == 0 {
		return nil, malformed("empty payload")
	}
	if len(b) > wire.MaxManifestSize {
		return nil, malformed("payload is %d bytes, limit %d", len(b), wire.MaxManifestSize)
	}
	var keys map[uint64]cbor.RawMessage
	if err := decMode.Unmarshal(b, &keys); err != nil {
		return nil, malformed("payload: %v", err)
	}
	for k, v := range keys {
		switch {
		case k == 0:
			return nil, malformed("payload key 0 is not defined")
		case k > maxPayloadKey:
			continue
		case v[0]>>5 != payloadMajor[k]:
			return nil, malformed("payload key %d has CBOR major type %d, want %d", k, v[0]>>5, payloadMajor[k])
		}
	}
	var p payload
	if err := decMode.Unmarshal(b, &p); err != nil {
		return nil, malformed("payload: %v", err)
	}
	if p.Format == nil {
		return nil, malformed("format (1) missing")
	}
	if *p.Format != Format {
		return nil, malformed("format (1) is %d, want %d", *p.Format, Format)
	}
	if p.Sequence == nil {
		return nil, malformed("sequence (2) missing")
	}
	m := &Manifest{
		Sequence: *p.Sequence, Version: p.Version, BuildID: p.BuildID, Hardware: p.Hardware,
		MinBootloader: p.MinBootloader, ImageSize: p.ImageSize, SecureVersion: p.SecureVersion, Kind: p.Kind,
	}
	if len(p.ImageDigest) != len(m.ImageDigest) {
		return nil, malformed("image digest (8) is %d bytes, want %d", len(p.ImageDigest), len(m.ImageDigest))
	}
	copy(m.ImageDigest[:], p.ImageDigest)
	for i, c := range p.Components {
		mc := Component{Name: c.Name, Version: c.Version}
		if len(c.Digest) != len(mc.Digest) {
			return nil, malformed("component %d: digest is %d bytes, want %d", i, len(c.Digest), len(mc.Digest))
		}
		copy(mc.Digest[:], c.Digest)
		m.Components = append(m.Components, mc)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m, nil
}

// HasHardware reports whether hw is one of m's target hardware models.
func (m *Manifest) HasHardware(hw string) bool { return slices.Contains(m.Hardware, hw) }

// CheckImage compares an image's size and SHA-256 with m's. It returns an
// error wrapping ErrSizeMismatch or ErrDigestMismatch, or nil.
func (m *Manifest) CheckImage(size uint64, digest Digest) error {
	if size != m.ImageSize {
		return fmt.Errorf("%w: image is %d bytes, manifest says %d", ErrSizeMismatch, size, m.ImageSize)
	}
	if digest != m.ImageDigest {
		return fmt.Errorf("%w: image SHA-256 is %s, manifest says %s", ErrDigestMismatch, digest, m.ImageDigest)
	}
	return nil
}

// HashImage reads r to its end and returns the number of bytes and their
// SHA-256.
func HashImage(r io.Reader) (size uint64, digest Digest, err error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return 0, Digest{}, err
	}
	copy(digest[:], h.Sum(nil))
	return uint64(n), digest, nil
}
