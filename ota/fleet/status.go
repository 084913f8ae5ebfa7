package fleet

import (
	"time"

	"github.com/otamq/otamq/ota/wire"
)

// Status is what the broker knows of a client's connection and what a device
// reported in its last birth and heartbeat.
type Status struct {
	Online           bool      `json:"online"`
	LastSeen         time.Time `json:"last_seen,omitzero"`
	ConnectedAt      time.Time `json:"connected_at,omitzero"`
	DisconnectedAt   time.Time `json:"disconnected_at,omitzero"`
	DisconnectReason string    `json:"disconnect_reason,omitempty"`
	// Connects counts sessions since registration; Reconnects is Connects-1.
	Connects   uint64    `json:"connects"`
	Reconnects uint64    `json:"reconnects"`
	Remote     string    `json:"remote,omitempty"`
	Protocol   uint8     `json:"protocol,omitempty"`
	WillAt     time.Time `json:"will_at,omitzero"`
	Wills      uint64    `json:"wills,omitempty"`

	// From the last birth.
	BirthAt          time.Time `json:"birth_at,omitzero"`
	Firmware         string    `json:"firmware,omitempty"`
	ReportedHardware string    `json:"reported_hardware,omitempty"`
	Bootloader       string    `json:"bootloader,omitempty"`
	Slot             uint8     `json:"slot"`
	BootReason       string    `json:"boot_reason,omitempty"`
	BootsSinceCommit uint32    `json:"boots_since_commit"`
	AgentVersion     string    `json:"agent_version,omitempty"`
	Link             string    `json:"link,omitempty"` // connectivity the device reported
	UTCOffsetMinutes int16     `json:"utc_offset_minutes"`
	SecureVersion    uint32    `json:"secure_version"`
	OTAState         string    `json:"ota_state,omitempty"`

	// From the last heartbeat.
	HeartbeatAt    time.Time `json:"heartbeat_at,omitzero"`
	Heartbeats     uint64    `json:"heartbeats"`
	Uptime         uint64    `json:"uptime_s"`
	HealthFlags    uint8     `json:"health_flags"`
	WatchdogResets uint32    `json:"watchdog_resets"`
	FreeHeap       uint32    `json:"free_heap"`
	RSSI           int16     `json:"rssi"`
	DownloadOffset *uint64   `json:"download_offset,omitempty"`
}

// Healthy reports whether the last heartbeat had every health flag set.
func (s *Status) Healthy() bool { return s.HealthFlags&wire.HealthAllOK == wire.HealthAllOK }

// View is a device with its status, as the admin API returns it.
type View struct {
	Device
	Status Status `json:"status"`
}
