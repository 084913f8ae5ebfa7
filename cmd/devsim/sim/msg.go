package sim

import (
	"encoding/binary"
	"strings"

	"github.com/fxamacker/cbor/v2"

	"github.com/otamq/otamq/ota/wire"
)

var encMode cbor.EncMode

func init() {
	var err error
	encMode, err = cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		panic(err) // static options; cannot fail
	}
}

// eventMsg is an event as agent-c encodes it (ota_msg_encode_event): the
// progress (key 4) on download events only, 0 included; the error (key 5)
// only when there is one; the device time (key 7) always. wire.Event would
// drop a progress of 0.
type eventMsg struct {
	Code       wire.EventCode `cbor:"1,keyasint"`
	Rollout    string         `cbor:"2,keyasint,omitempty"`
	Version    string         `cbor:"3,keyasint,omitempty"`
	Progress   *uint8         `cbor:"4,keyasint,omitempty"`
	Error      wire.ErrorCode `cbor:"5,keyasint,omitempty"`
	Detail     string         `cbor:"6,keyasint,omitempty"`
	DeviceTime uint64         `cbor:"7,keyasint"`
}

func encode(v any) []byte {
	b, err := encMode.Marshal(v)
	if err != nil {
		// Only unsupported Go types make Marshal fail; ours are fixed.
		panic("sim: encode: " + err.Error())
	}
	return b
}

// Why a device reports something: the agent's reason table (REASONS in
// agent-c/src/core/agent.c), each an event's error code and detail text.
type reason uint8

const (
	rNone    reason = iota
	rPS             // the error recorded in the persisted state, no detail
	rRefetch        // a download fetched again after a digest mismatch
	rNotAssigned
	rUnknownImage
	rOffset
	rBrokerRefused
	rRetries
	rDigest
	rSize
	rWithdrawn
	rSuperseded
	rCancelCmd
	rBadOffer
	rDeadline
	rBadCOSE
	rUnknownKey
	rBadSignature
	rBadManifest
	rHardware
	rBootloader
	rKind
	rVersionLong
	rBadVersion
	rSameVersion
	rDowngrade
	rSequence
	rSecureVersion
	rNotReached
	rNoHeartbeat
	rAppCheck
	rHealthFailing
	rNoBroker
	rConfirm
	rReboots
	rWDT
	rPowerLost
	rNotConfirmed
	rAbandoned
	rRetried
	rNoTarget
	reasonCount
)

// errPS: take the error code from the persisted state.
const errPS wire.ErrorCode = 0xff

var reasons = [reasonCount]struct {
	err    wire.ErrorCode
	detail string
}{
	rNone:          {0, ""},
	rPS:            {errPS, ""},
	rRefetch:       {0, "refetching"},
	rNotAssigned:   {wire.ErrCodeRetriesExhausted, "not assigned"},
	rUnknownImage:  {wire.ErrCodeRetriesExhausted, "unknown image"},
	rOffset:        {wire.ErrCodeRetriesExhausted, "bad offset"},
	rBrokerRefused: {wire.ErrCodeRetriesExhausted, "refused"},
	rRetries:       {wire.ErrCodeRetriesExhausted, ""},
	rDigest:        {wire.ErrCodeDigest, ""},
	rSize:          {wire.ErrCodeDigest, "size mismatch"},
	rWithdrawn:     {wire.ErrCodeCancelled, "withdrawn"},
	rSuperseded:    {wire.ErrCodeCancelled, "superseded"},
	rCancelCmd:     {wire.ErrCodeCancelled, "command"},
	rBadOffer:      {0, "bad offer"},
	rDeadline:      {0, "deadline"},
	rBadCOSE:       {wire.ErrCodeSignature, "bad COSE"},
	rUnknownKey:    {wire.ErrCodeSignature, "unknown key"},
	rBadSignature:  {wire.ErrCodeSignature, ""},
	rBadManifest:   {wire.ErrCodeVersionPolicy, "bad manifest"},
	rHardware:      {wire.ErrCodeHardware, ""},
	rBootloader:    {wire.ErrCodeHardware, "bootloader too old"},
	rKind:          {wire.ErrCodeVersionPolicy, "unknown kind"},
	rVersionLong:   {wire.ErrCodeVersionPolicy, "version too long"},
	rBadVersion:    {wire.ErrCodeVersionPolicy, "bad version"},
	rSameVersion:   {wire.ErrCodeVersionPolicy, "same version"},
	rDowngrade:     {wire.ErrCodeVersionPolicy, "downgrade"},
	rSequence:      {wire.ErrCodeVersionPolicy, "sequence"},
	rSecureVersion: {wire.ErrCodeSecureVersion, ""},
	rNotReached:    {wire.ErrCodeHealthCheck, "broker not reached"},
	rNoHeartbeat:   {wire.ErrCodeHealthCheck, "no heartbeat"},
	rAppCheck:      {wire.ErrCodeHealthCheck, "app check failed"},
	rHealthFailing: {wire.ErrCodeHealthCheck, "health failing"},
	rNoBroker:      {wire.ErrCodeHealthCheck, "no broker"},
	rConfirm:       {wire.ErrCodeBootFailure, "confirm failed"},
	rReboots:       {wire.ErrCodeBootFailure, "reboot loop"},
	rWDT:           {wire.ErrCodeBootFailure, "watchdog resets"},
	rPowerLost:     {wire.ErrCodeBootFailure, "power lost"},
	rNotConfirmed:  {wire.ErrCodeBootFailure, "not confirmed"},
	rAbandoned:     {wire.ErrCodeBootFailure, "abandoned image"},
	rRetried:       {errPS, "retried"},
	rNoTarget:      {errPS, "no rollback target"},
}

// Limits of the agent's persisted record (agent-c's ota_config.h).
const (
	maxVersionLen = 32 // OTA_CFG_VERSION_MAX
	maxRolloutLen = 64 // OTA_CFG_ROLLOUT_MAX
	// eventQueueBytes is the agent's event queue (OTA_CFG_EVENT_BUF): each
	// event takes its length byte and its encoding.
	eventQueueBytes = 6 * 96
	// persistEvery is how many downloaded bytes more make the agent persist
	// its offset (OTA_CFG_PERSIST_EVERY); it also does at each window's end.
	persistEvery = 16384
	// blockOverhead is what the agent adds to its block size for its MQTT
	// Maximum Packet Size (OTA_CFG_BLOCK_OVERHEAD).
	blockOverhead = 192
	// bootLogLen is how many boots the reboot trigger remembers
	// (OTA_CFG_BOOT_LOG).
	bootLogLen = 8
)

// simHeaderLen is the length of agent-c's simulated image header.
const simHeaderLen = 64

// Behaviours of agent-c's simulated image header (byte 5).
const (
	simHealthy         = 0
	simCrash           = 1
	simHealthFail      = 2
	simHang            = 3
	simCrashLater      = 4
	simHealthFailLater = 5
)

// simHeader is what an image's agent-c simulated image header says, when it
// has one: how the image behaves once booted, its secure version and the
// version it reports.
type simHeader struct {
	behaviour byte
	delay     uint16 // seconds, for behaviours 4 and 5
	secure    uint32
	version   string
}

// parseSimHeader reads agent-c's simulated image header (agent-c/README.md):
// 0xE9 "SIM", header version 1, behaviour, delay (u16 LE), secure version
// (u32 LE), the version NUL-padded at 16..48.
func parseSimHeader(b []byte) (simHeader, bool) {
	if len(b) < simHeaderLen || b[0] != 0xe9 || string(b[1:4]) != "SIM" || b[4] != 1 || b[5] > simHealthFailLater {
		return simHeader{}, false
	}
	h := simHeader{behaviour: b[5], delay: binary.LittleEndian.Uint16(b[6:8]), secure: binary.LittleEndian.Uint32(b[8:12])}
	h.version = strings.TrimRight(string(b[16:48]), "\x00")
	if wire.CheckVersion(h.version) != nil {
		h.version = ""
	}
	return h, true
}

// SimHeader returns agent-c's 64-byte simulated image header for an image
// of version that behaves as behaviour (0 healthy, 1 crashes at boot, 2
// fails its health check, 3 hangs at boot, 4 crashes delay seconds after
// boot, 5 fails its health check delay seconds after boot). Tests put it
// at the start of an image to ship bad firmware.
func SimHeader(version string, behaviour byte, delay uint16, secure uint32) []byte {
	h := make([]byte, simHeaderLen)
	copy(h, []byte{0xe9, 'S', 'I', 'M', 1, behaviour})
	binary.LittleEndian.PutUint16(h[6:8], delay)
	binary.LittleEndian.PutUint32(h[8:12], secure)
	copy(h[16:48], version)
	return h
}
