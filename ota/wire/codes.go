package wire

import "strconv"

// OTAState is a device's update state (docs/PROTOCOL.md, "OTA state").
type OTAState uint8

// OTA states.
const (
	StateIdle        OTAState = 0
	StateDownloading OTAState = 1
	StateVerified    OTAState = 2
	StateInstalling  OTAState = 3
	StateRebooting   OTAState = 4
	StateTrial       OTAState = 5
	StateCommitted   OTAState = 6
	StateRolledBack  OTAState = 7
	StateFailed      OTAState = 8
)

var stateNames = [...]string{"idle", "downloading", "verified", "installing", "rebooting", "trial", "committed", "rolled_back", "failed"}

func (s OTAState) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "state_" + strconv.Itoa(int(s))
}

// Valid reports whether s is a state the contract defines.
func (s OTAState) Valid() bool { return int(s) < len(stateNames) }

// BootReason is why a device last booted.
type BootReason uint8

// Boot reasons.
const (
	BootPowerOn   BootReason = 0
	BootSoftware  BootReason = 1
	BootWatchdog  BootReason = 2
	BootPanic     BootReason = 3
	BootBrownout  BootReason = 4
	BootOTAReboot BootReason = 5
	BootRollback  BootReason = 6
)

var bootNames = [...]string{"power_on", "software", "watchdog", "panic", "brownout", "ota_reboot", "rollback"}

func (r BootReason) String() string {
	if int(r) < len(bootNames) {
		return bootNames[r]
	}
	return "boot_" + strconv.Itoa(int(r))
}

// Connectivity is how a device reaches the broker.
type Connectivity uint8

// Connectivity kinds.
const (
	ConnWiFi       Connectivity = 0
	ConnCellular   Connectivity = 1
	ConnEthernet   Connectivity = 2
	ConnViaGateway Connectivity = 3
)

var connNames = [...]string{"wifi", "cellular", "ethernet", "via_gateway"}

func (c Connectivity) String() string {
	if int(c) < len(connNames) {
		return connNames[c]
	}
	return "conn_" + strconv.Itoa(int(c))
}

// ParseConnectivity returns the Connectivity named s (as String prints it).
func ParseConnectivity(s string) (Connectivity, bool) {
	for i, n := range connNames {
		if n == s {
			return Connectivity(i), true
		}
	}
	return 0, false
}

// Health flag bits of a heartbeat.
const (
	HealthAppOK       uint8 = 1 << 0
	HealthResourcesOK uint8 = 1 << 1
	HealthMessagingOK uint8 = 1 << 2
	HealthAllOK             = HealthAppOK | HealthResourcesOK | HealthMessagingOK
)

// EventCode identifies an update event.
type EventCode uint16

// Event codes.
const (
	EvCheckStarted      EventCode = 1
	EvCheckCompleted    EventCode = 2
	EvDownloadStarted   EventCode = 3
	EvDownloadProgress  EventCode = 4
	EvDownloadCompleted EventCode = 5
	EvDownloadFailed    EventCode = 6
	EvInstallStarted    EventCode = 7
	EvInstallCompleted  EventCode = 8
	EvRebootStarted     EventCode = 9
	EvRebootCompleted   EventCode = 10
	EvHealthOK          EventCode = 11
	EvHealthFailed      EventCode = 12
	EvRollbackTriggered EventCode = 13
	EvRollbackCompleted EventCode = 14
	EvRejected          EventCode = 15
	maxEventCode                  = EvRejected
)

var eventNames = [...]string{"", "update.check.started", "update.check.completed", "update.download.started",
	"update.download.progress", "update.download.completed", "update.download.failed", "update.install.started",
	"update.install.completed", "update.reboot.started", "update.reboot.completed", "update.health.ok",
	"update.health.failed", "update.rollback.triggered", "update.rollback.completed", "update.rejected"}

func (c EventCode) String() string {
	if c >= 1 && c <= maxEventCode {
		return eventNames[c]
	}
	return "event_" + strconv.Itoa(int(c))
}

// Valid reports whether c is an event code the contract defines.
func (c EventCode) Valid() bool { return c >= 1 && c <= maxEventCode }

// ErrorCode is the error code carried by an event.
type ErrorCode uint16

// Event error codes.
const (
	ErrCodeSignature        ErrorCode = 1
	ErrCodeDigest           ErrorCode = 2
	ErrCodeHardware         ErrorCode = 3
	ErrCodeVersionPolicy    ErrorCode = 4
	ErrCodeSecureVersion    ErrorCode = 5
	ErrCodeRetriesExhausted ErrorCode = 6
	ErrCodeFlashWrite       ErrorCode = 7
	ErrCodeBootFailure      ErrorCode = 8
	ErrCodeHealthCheck      ErrorCode = 9
	ErrCodeCancelled        ErrorCode = 10
	ErrCodeNoSpace          ErrorCode = 11
)

var errorNames = [...]string{"", "signature", "digest_mismatch", "hardware_mismatch", "version_policy",
	"secure_version", "download_retries_exhausted", "flash_write", "boot_failure", "health_check", "cancelled", "no_space"}

func (c ErrorCode) String() string {
	if int(c) < len(errorNames) && c != 0 {
		return errorNames[c]
	}
	return "error_" + strconv.Itoa(int(c))
}

// BlockErr is the error code of a block error message.
type BlockErr uint8

// Block error codes.
const (
	BlockNotAssigned  BlockErr = 1
	BlockUnknownImage BlockErr = 2
	BlockOutOfRange   BlockErr = 3
	BlockBadRequest   BlockErr = 4
	BlockRateLimited  BlockErr = 5
	BlockInternal     BlockErr = 6
)

var blockErrNames = [...]string{"", "not assigned to you", "unknown image", "offset out of range", "bad request", "rate limited", "internal"}

func (c BlockErr) String() string {
	if int(c) < len(blockErrNames) && c != 0 {
		return blockErrNames[c]
	}
	return "block_error_" + strconv.Itoa(int(c))
}

// Verb is a command verb.
type Verb uint8

// Command verbs.
const (
	VerbInstall Verb = 1
	VerbCancel  Verb = 2
	VerbCheck   Verb = 3
	VerbReboot  Verb = 4
)

var verbNames = [...]string{"", "install", "cancel", "check", "reboot"}

func (v Verb) String() string {
	if int(v) < len(verbNames) && v != 0 {
		return verbNames[v]
	}
	return "verb_" + strconv.Itoa(int(v))
}

// InstallMode says when a device installs a verified image.
type InstallMode uint8

// Install modes.
const (
	InstallImmediately InstallMode = 0
	InstallOnCommand   InstallMode = 1
)
