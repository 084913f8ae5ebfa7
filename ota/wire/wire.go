package wire

import (
	"errors"
	"fmt"

	"github.com/Masterminds/semver/v3"
	"github.com/fxamacker/cbor/v2"
)

// ErrMalformed is wrapped by every decoding and validation error.
var ErrMalformed = errors.New("malformed message")

// Size limits of encoded messages. A decoder refuses anything larger before
// parsing it.
const (
	MaxBirthSize        = 1024
	MaxHeartbeatSize    = 256
	MaxEventSize        = 512
	MaxBlockRequestSize = 128
	MaxCommandSize      = 256
	// MaxManifestSize bounds a signed manifest (COSE_Sign1 bytes).
	MaxManifestSize = 8 * 1024
	MaxOfferSize    = MaxManifestSize + 256
)

// The highest key each message defines, the otamq extensions included
// (docs/PROTOCOL.md); decoders skip higher ones.
const (
	birthKeys        = 11
	heartbeatKeys    = 7
	eventKeys        = 7
	offerKeys        = 6
	blockRequestKeys = 5
	blockKeys        = 7
	commandKeys      = 3
)

// Field limits.
const (
	MaxVersionLen   = 64  // firmware, bootloader and agent versions
	MaxHardwareLen  = 64  // hardware model names
	MaxRolloutIDLen = 64  // rollout IDs
	MaxDetailLen    = 128 // event detail text
	MaxMessageLen   = 128 // block error message text
	DigestLen       = 32  // SHA-256
)

var (
	decMode cbor.DecMode
	encMode cbor.EncMode
)

func init() {
	var err error
	decMode, err = StrictDecOptions().DecMode()
	if err != nil {
		panic(err) // static options; cannot fail
	}
	encMode, err = cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		panic(err)
	}
}

// StrictDecOptions are the decoding options for untrusted CBOR (DEPENDENCY
// NOTES): duplicate keys, indefinite lengths, tags and invalid UTF-8 are
// refused; nesting is 4 levels, arrays 16 elements and maps 32 pairs at
// most. Decoders of other untrusted CBOR start from these and change only
// what their format needs.
func StrictDecOptions() cbor.DecOptions {
	return cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		IndefLength:      cbor.IndefLengthForbidden,
		TagsMd:           cbor.TagsForbidden,
		MaxNestedLevels:  4,
		MaxArrayElements: 16,
		MaxMapPairs:      32,
		UTF8:             cbor.UTF8RejectInvalid,
	}
}

// decode decodes b, of at most max bytes, into v, a message whose own keys
// are 1 to maxKey (see checkShape).
func decode(kind string, b []byte, max int, maxKey uint64, v any) error {
	if len(b) == 0 {
		return fmt.Errorf("%w: %s: empty payload", ErrMalformed, kind)
	}
	if len(b) > max {
		return fmt.Errorf("%w: %s: %d bytes, limit %d", ErrMalformed, kind, len(b), max)
	}
	if err := checkShape(b, maxKey); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrMalformed, kind, err)
	}
	if err := decMode.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrMalformed, kind, err)
	}
	return nil
}

func encode(v any) []byte {
	b, err := encMode.Marshal(v)
	if err != nil {
		// Only unsupported Go types make Marshal fail; ours are fixed.
		panic(fmt.Sprintf("wire: encode %T: %v", v, err))
	}
	return b
}

func bad(kind, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrMalformed, kind, fmt.Sprintf(format, args...))
}

func checkText(kind, field, s string, max int, required bool) error {
	if required && s == "" {
		return bad(kind, "%s missing", field)
	}
	if len(s) > max {
		return bad(kind, "%s is %d bytes, limit %d", field, len(s), max)
	}
	return nil
}

// CheckVersion reports whether s is a semantic version (semver 2.0, without a
// leading "v").
func CheckVersion(s string) error {
	if _, err := semver.StrictNewVersion(s); err != nil {
		return fmt.Errorf("%q is not a semantic version: %w", s, err)
	}
	return nil
}

// Birth is what a device publishes once after every connect.
type Birth struct {
	FirmwareVersion  string       `cbor:"1,keyasint"`
	Hardware         string       `cbor:"2,keyasint"`
	Bootloader       string       `cbor:"3,keyasint"`
	Slot             uint8        `cbor:"4,keyasint"`
	BootReason       BootReason   `cbor:"5,keyasint"`
	BootsSinceCommit uint32       `cbor:"6,keyasint"`
	OTAState         OTAState     `cbor:"7,keyasint"`
	AgentVersion     string       `cbor:"8,keyasint"`
	Connectivity     Connectivity `cbor:"9,keyasint"`
	UTCOffsetMinutes int16        `cbor:"10,keyasint"`
	SecureVersion    uint32       `cbor:"11,keyasint"`
	// ReplayGuard (key 12, an otamq extension) is the lowest firmware
	// manifest sequence number the device takes: the sequence number of the
	// manifest of the image it runs (docs/PROTOCOL.md, "Sequence numbers").
	// 0 (or absent, from devices that do not send it): none known.
	ReplayGuard uint64 `cbor:"12,keyasint,omitempty"`
}

// DecodeBirth decodes and validates a birth message.
func DecodeBirth(b []byte) (Birth, error) {
	const kind = "birth"
	var m Birth
	if err := decode(kind, b, MaxBirthSize, birthKeys, &m); err != nil {
		return Birth{}, err
	}
	if err := checkText(kind, "firmware version (1)", m.FirmwareVersion, MaxVersionLen, true); err != nil {
		return Birth{}, err
	}
	if err := CheckVersion(m.FirmwareVersion); err != nil {
		return Birth{}, bad(kind, "firmware version (1): %v", err)
	}
	if err := checkText(kind, "hardware (2)", m.Hardware, MaxHardwareLen, true); err != nil {
		return Birth{}, err
	}
	if err := checkText(kind, "bootloader version (3)", m.Bootloader, MaxVersionLen, false); err != nil {
		return Birth{}, err
	}
	if err := checkText(kind, "agent version (8)", m.AgentVersion, MaxVersionLen, false); err != nil {
		return Birth{}, err
	}
	if m.Slot > 1 {
		return Birth{}, bad(kind, "slot (4) is %d, want 0 or 1", m.Slot)
	}
	if !m.OTAState.Valid() {
		return Birth{}, bad(kind, "ota state (7) %d is not defined", m.OTAState)
	}
	if m.UTCOffsetMinutes < -14*60 || m.UTCOffsetMinutes > 14*60 {
		return Birth{}, bad(kind, "utc offset (10) %d minutes is out of range", m.UTCOffsetMinutes)
	}
	return m, nil
}

// Encode returns the deterministic CBOR encoding of m.
func (m Birth) Encode() []byte { return encode(m) }

// Heartbeat is a device's periodic liveness and health report.
type Heartbeat struct {
	UptimeSeconds  uint64   `cbor:"1,keyasint"`
	HealthFlags    uint8    `cbor:"2,keyasint"`
	WatchdogResets uint32   `cbor:"3,keyasint"`
	FreeHeap       uint32   `cbor:"4,keyasint"`
	RSSI           int16    `cbor:"5,keyasint"`
	OTAState       OTAState `cbor:"6,keyasint"`
	// DownloadOffset is present only while downloading.
	DownloadOffset *uint64 `cbor:"7,keyasint,omitempty"`
}

// DecodeHeartbeat decodes and validates a heartbeat.
func DecodeHeartbeat(b []byte) (Heartbeat, error) {
	const kind = "heartbeat"
	m, ok := Heartbeat{}, false
	if len(b) <= MaxHeartbeatSize {
		m, ok = fastHeartbeat(b)
	}
	if !ok {
		lib := new(Heartbeat) // separate, so that m itself stays on the stack
		if err := decode(kind, b, MaxHeartbeatSize, heartbeatKeys, lib); err != nil {
			return Heartbeat{}, err
		}
		m = *lib
	}
	if !m.OTAState.Valid() {
		return Heartbeat{}, bad(kind, "ota state (6) %d is not defined", m.OTAState)
	}
	if m.RSSI > 0 || m.RSSI < -200 {
		return Heartbeat{}, bad(kind, "rssi (5) %d dBm is out of range", m.RSSI)
	}
	return m, nil
}

// Encode returns the deterministic CBOR encoding of m.
func (m Heartbeat) Encode() []byte { return encode(m) }

// Event reports update progress and results.
type Event struct {
	Code          EventCode `cbor:"1,keyasint"`
	RolloutID     string    `cbor:"2,keyasint,omitempty"`
	TargetVersion string    `cbor:"3,keyasint,omitempty"`
	Progress      uint8     `cbor:"4,keyasint,omitempty"`
	Error         ErrorCode `cbor:"5,keyasint,omitempty"`
	Detail        string    `cbor:"6,keyasint,omitempty"`
	DeviceTime    uint64    `cbor:"7,keyasint,omitempty"`
}

// DecodeEvent decodes and validates an event. Unknown event codes are
// refused: the contract lists every code a device may send.
func DecodeEvent(b []byte) (Event, error) {
	const kind = "event"
	var m Event
	if err := decode(kind, b, MaxEventSize, eventKeys, &m); err != nil {
		return Event{}, err
	}
	if !m.Code.Valid() {
		return Event{}, bad(kind, "code (1) %d is not defined", m.Code)
	}
	if err := checkText(kind, "rollout id (2)", m.RolloutID, MaxRolloutIDLen, false); err != nil {
		return Event{}, err
	}
	if err := checkText(kind, "target version (3)", m.TargetVersion, MaxVersionLen, false); err != nil {
		return Event{}, err
	}
	if m.Progress > 100 {
		return Event{}, bad(kind, "progress (4) %d%% is over 100", m.Progress)
	}
	if err := checkText(kind, "detail (6)", m.Detail, MaxDetailLen, false); err != nil {
		return Event{}, err
	}
	return m, nil
}

// Encode returns the deterministic CBOR encoding of m.
func (m Event) Encode() []byte { return encode(m) }

// Offer is what the broker publishes on a device's ota/manifest topic. An
// offer with an empty RolloutID means "nothing to do": cancel any offer not
// yet installed.
type Offer struct {
	RolloutID string `cbor:"1,keyasint"`
	// Manifest holds the tagged COSE_Sign1 bytes exactly as signed.
	Manifest    []byte      `cbor:"2,keyasint,omitempty"`
	InstallMode InstallMode `cbor:"3,keyasint"`
	BlockSize   uint32      `cbor:"4,keyasint"`
	Deadline    uint64      `cbor:"5,keyasint"`
	// MaxWindow (key 6, an extension of the contract) is the most blocks the
	// broker serves for one request; a request for more gets this many.
	// Devices that do not know the key ignore it.
	MaxWindow uint32 `cbor:"6,keyasint,omitempty"`
}

// DecodeOffer decodes an offer (devices and tests use it; the broker only
// encodes offers).
func DecodeOffer(b []byte) (Offer, error) {
	const kind = "offer"
	var m Offer
	if err := decode(kind, b, MaxOfferSize, offerKeys, &m); err != nil {
		return Offer{}, err
	}
	if err := checkText(kind, "rollout id (1)", m.RolloutID, MaxRolloutIDLen, false); err != nil {
		return Offer{}, err
	}
	if m.RolloutID != "" && len(m.Manifest) == 0 {
		return Offer{}, bad(kind, "manifest (2) missing")
	}
	if m.InstallMode > InstallOnCommand {
		return Offer{}, bad(kind, "install mode (3) %d is not defined", m.InstallMode)
	}
	return m, nil
}

// Encode returns the deterministic CBOR encoding of m.
func (m Offer) Encode() []byte { return encode(m) }

// BlockRequest asks for count blocks of size bytes from offset of the image
// whose SHA-256 is Digest.
type BlockRequest struct {
	Digest    []byte `cbor:"1,keyasint"`
	Offset    uint64 `cbor:"2,keyasint"`
	Size      uint32 `cbor:"3,keyasint"`
	Count     uint32 `cbor:"4,keyasint"`
	RequestID uint32 `cbor:"5,keyasint"`
}

// DecodeBlockRequest decodes and validates a block request.
func DecodeBlockRequest(b []byte) (BlockRequest, error) {
	const kind = "block request"
	var m BlockRequest
	if err := decode(kind, b, MaxBlockRequestSize, blockRequestKeys, &m); err != nil {
		return BlockRequest{}, err
	}
	if len(m.Digest) != DigestLen {
		return BlockRequest{}, bad(kind, "digest (1) is %d bytes, want %d", len(m.Digest), DigestLen)
	}
	if m.Size == 0 {
		return BlockRequest{}, bad(kind, "block size (3) missing or zero")
	}
	if m.Count == 0 {
		return BlockRequest{}, bad(kind, "block count (4) missing or zero")
	}
	return m, nil
}

// Encode returns the deterministic CBOR encoding of m.
func (m BlockRequest) Encode() []byte { return encode(m) }

// Block carries one block of an image.
type Block struct {
	RequestID uint32 `cbor:"1,keyasint"`
	Offset    uint64 `cbor:"2,keyasint"`
	ImageSize uint64 `cbor:"3,keyasint"`
	Data      []byte `cbor:"4,keyasint"`
}

// BlockError answers a block request that cannot be served.
type BlockError struct {
	RequestID    uint32   `cbor:"1,keyasint"`
	Offset       uint64   `cbor:"2,keyasint"`
	Code         BlockErr `cbor:"5,keyasint"`
	RetryAfterMS uint32   `cbor:"6,keyasint,omitempty"`
	Message      string   `cbor:"7,keyasint,omitempty"`
}

// Encode returns the deterministic CBOR encoding of m.
func (m BlockError) Encode() []byte { return encode(m) }

// blockOrError is the union of the two messages of the ota/blk topic.
type blockOrError struct {
	RequestID    uint32   `cbor:"1,keyasint"`
	Offset       uint64   `cbor:"2,keyasint"`
	ImageSize    uint64   `cbor:"3,keyasint"`
	Data         []byte   `cbor:"4,keyasint"`
	Code         BlockErr `cbor:"5,keyasint"`
	RetryAfterMS uint32   `cbor:"6,keyasint"`
	Message      string   `cbor:"7,keyasint"`
}

// MaxBlockMessageOverhead is the most bytes a Block message adds to its data.
const MaxBlockMessageOverhead = 1 + 1 + 5 + 1 + 9 + 1 + 9 + 1 + 5

// DecodeBlock decodes a message of the ota/blk topic: exactly one of the
// results is non-nil. maxData bounds the data of a block.
func DecodeBlock(b []byte, maxData int) (*Block, *BlockError, error) {
	const kind = "block"
	var m blockOrError
	if err := decode(kind, b, maxData+MaxBlockMessageOverhead+MaxMessageLen, blockKeys, &m); err != nil {
		return nil, nil, err
	}
	if m.Code != 0 {
		if m.Data != nil {
			return nil, nil, bad(kind, "both data (4) and error (5)")
		}
		if err := checkText(kind, "message (7)", m.Message, MaxMessageLen, false); err != nil {
			return nil, nil, err
		}
		return nil, &BlockError{RequestID: m.RequestID, Offset: m.Offset, Code: m.Code, RetryAfterMS: m.RetryAfterMS, Message: m.Message}, nil
	}
	if m.Data == nil {
		return nil, nil, bad(kind, "neither data (4) nor error (5)")
	}
	if len(m.Data) > maxData {
		return nil, nil, bad(kind, "data is %d bytes, limit %d", len(m.Data), maxData)
	}
	if m.Offset+uint64(len(m.Data)) > m.ImageSize || m.Offset+uint64(len(m.Data)) < m.Offset {
		return nil, nil, bad(kind, "block [%d, +%d) is past image size %d", m.Offset, len(m.Data), m.ImageSize)
	}
	return &Block{RequestID: m.RequestID, Offset: m.Offset, ImageSize: m.ImageSize, Data: m.Data}, nil, nil
}

// AppendBlock appends the encoding of a Block message to dst without an
// intermediate copy of data. The bytes equal the deterministic encoding of
// the Block struct.
func AppendBlock(dst []byte, requestID uint32, offset, imageSize uint64, data []byte) []byte {
	return append(AppendBlockHeader(dst, requestID, offset, imageSize, len(data)), data...)
}

// AppendBlockHeader appends everything of a Block message but its n data
// bytes, which the caller appends (reading them straight into the message).
func AppendBlockHeader(dst []byte, requestID uint32, offset, imageSize uint64, n int) []byte {
	dst = append(dst, 0xa4)
	dst = append(dst, 0x01)
	dst = appendUint(dst, 0, uint64(requestID))
	dst = append(dst, 0x02)
	dst = appendUint(dst, 0, offset)
	dst = append(dst, 0x03)
	dst = appendUint(dst, 0, imageSize)
	dst = append(dst, 0x04)
	return appendUint(dst, 2, uint64(n))
}

// AppendHead appends a CBOR head of major type major (0 unsigned integer, 2
// byte string, 4 array, ...) with argument v in its shortest form.
func AppendHead(dst []byte, major byte, v uint64) []byte { return appendUint(dst, major, v) }

// appendUint appends a CBOR head of major type major with argument v in its
// shortest form.
func appendUint(dst []byte, major byte, v uint64) []byte {
	m := major << 5
	switch {
	case v < 24:
		return append(dst, m|byte(v))
	case v <= 0xff:
		return append(dst, m|24, byte(v))
	case v <= 0xffff:
		return append(dst, m|25, byte(v>>8), byte(v))
	case v <= 0xffffffff:
		return append(dst, m|26, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	default:
		return append(dst, m|27, byte(v>>56), byte(v>>48), byte(v>>40), byte(v>>32),
			byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	}
}

// Command asks a device to act.
type Command struct {
	Verb      Verb   `cbor:"1,keyasint"`
	RolloutID string `cbor:"2,keyasint"`
	NotAfter  uint64 `cbor:"3,keyasint"`
}

// DecodeCommand decodes and validates a command.
func DecodeCommand(b []byte) (Command, error) {
	const kind = "command"
	var m Command
	if err := decode(kind, b, MaxCommandSize, commandKeys, &m); err != nil {
		return Command{}, err
	}
	if m.Verb < VerbInstall || m.Verb > VerbReboot {
		return Command{}, bad(kind, "verb (1) %d is not defined", m.Verb)
	}
	if err := checkText(kind, "rollout id (2)", m.RolloutID, MaxRolloutIDLen, false); err != nil {
		return Command{}, err
	}
	return m, nil
}

// Encode returns the deterministic CBOR encoding of m.
func (m Command) Encode() []byte { return encode(m) }
