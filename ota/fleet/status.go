package fleet

import (
	"sync"
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
	// Gateway is, for a child, the gateway it is (or was last) reached
	// through; Unreachable says that gateway's session ended while the
	// child was online through it (DisconnectReason "gateway_offline"):
	// the child is cut off, not known to be down.
	Gateway     string `json:"gateway,omitempty"`
	Unreachable bool   `json:"unreachable,omitempty"`

	// From the last birth.
	BirthAt  time.Time `json:"birth_at,omitzero"`
	Firmware string    `json:"firmware,omitempty"`
	// FirmwareSince is when a birth first reported Firmware (after
	// another version, or none): the fleet's adoption of a version is
	// drawn from it.
	FirmwareSince    time.Time `json:"firmware_since,omitzero"`
	ReportedHardware string    `json:"reported_hardware,omitempty"`
	Bootloader       string    `json:"bootloader,omitempty"`
	Slot             uint8     `json:"slot"`
	BootReason       string    `json:"boot_reason,omitempty"`
	BootsSinceCommit uint32    `json:"boots_since_commit"`
	AgentVersion     string    `json:"agent_version,omitempty"`
	Link             string    `json:"link,omitempty"` // connectivity the device reported
	UTCOffsetMinutes int16     `json:"utc_offset_minutes"`
	SecureVersion    uint32    `json:"secure_version"`
	// ReplayGuard is the lowest firmware manifest sequence number the device
	// takes (birth key 12; 0: not known).
	ReplayGuard uint64 `json:"replay_guard,omitempty"`
	OTAState    string `json:"ota_state,omitempty"`

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
func (s *Status) Healthy() bool { return healthy(s.HealthFlags) }

// View is a device with its status, as the admin API returns it.
type View struct {
	Device
	Status Status `json:"status"`
}

// status is Status as kept in memory for every registered client: times as
// Unix nanoseconds, enums as numbers, repeated strings interned. It is about
// half the size of Status, which matters with a registry of a whole fleet.
type status struct {
	lastSeen, connectedAt, disconnectedAt, willAt, birthAt, heartbeatAt int64
	firmwareSince                                                       int64

	connects, wills, heartbeats, uptime, downloadOffset uint64
	heartbeatsRun                                       uint64 // since this process started
	replayGuard                                         uint64

	firmware, reportedHardware, bootloader, agentVersion string
	remote                                               string
	// via is the gateway a child is (or was last) reached through;
	// viaGen that gateway's session, 0 when it is not reachable now.
	via    string
	viaGen uint64

	bootsSinceCommit, watchdogResets, freeHeap, secureVersion uint32
	rssi, utcOffset                                           int16

	online, hasOffset, born bool
	unreachable             bool // cut off by its gateway's disconnect
	protocol, slot, health  uint8
	reason                  uint8 // index in reasons, 0 none
	bootReason              wire.BootReason
	otaState                wire.OTAState
	link                    wire.Connectivity
	hasOTAState             bool
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// export returns s in its public form.
func (s *status) export() Status {
	st := Status{
		Online: s.online, LastSeen: fromNanos(s.lastSeen), ConnectedAt: fromNanos(s.connectedAt),
		DisconnectedAt: fromNanos(s.disconnectedAt), DisconnectReason: reasons[s.reason],
		Connects: s.connects, Remote: s.remote, Protocol: s.protocol, WillAt: fromNanos(s.willAt), Wills: s.wills,
		HeartbeatAt: fromNanos(s.heartbeatAt), Heartbeats: s.heartbeats, Uptime: s.uptime, HealthFlags: s.health,
		WatchdogResets: s.watchdogResets, FreeHeap: s.freeHeap, RSSI: s.rssi,
		Gateway: s.via, Unreachable: s.unreachable,
	}
	if s.connects > 1 {
		st.Reconnects = s.connects - 1
	}
	if s.born {
		st.BirthAt, st.FirmwareSince = fromNanos(s.birthAt), fromNanos(s.firmwareSince)
		st.Firmware, st.ReportedHardware, st.Bootloader, st.AgentVersion = s.firmware, s.reportedHardware, s.bootloader, s.agentVersion
		st.Slot, st.BootReason, st.BootsSinceCommit = s.slot, s.bootReason.String(), s.bootsSinceCommit
		st.Link, st.UTCOffsetMinutes, st.SecureVersion = s.link.String(), s.utcOffset, s.secureVersion
		st.ReplayGuard = s.replayGuard
	}
	if s.hasOTAState {
		st.OTAState = s.otaState.String()
	}
	if s.hasOffset {
		off := s.downloadOffset
		st.DownloadOffset = &off
	}
	return st
}

// importStatus is the inverse of export, for statuses loaded from the store.
func importStatus(st Status, in *interner) status {
	s := status{
		online: st.Online, lastSeen: nanos(st.LastSeen), connectedAt: nanos(st.ConnectedAt),
		disconnectedAt: nanos(st.DisconnectedAt), reason: reasonCode(st.DisconnectReason),
		connects: st.Connects, remote: st.Remote, protocol: st.Protocol, willAt: nanos(st.WillAt), wills: st.Wills,
		heartbeatAt: nanos(st.HeartbeatAt), heartbeats: st.Heartbeats, uptime: st.Uptime, health: st.HealthFlags,
		watchdogResets: st.WatchdogResets, freeHeap: st.FreeHeap, rssi: st.RSSI,
		via: in.get(st.Gateway), unreachable: st.Unreachable,
	}
	if !st.BirthAt.IsZero() {
		s.born, s.birthAt, s.firmwareSince = true, nanos(st.BirthAt), nanos(st.FirmwareSince)
		if s.firmwareSince == 0 {
			s.firmwareSince = s.birthAt // stored before firmware_since: the last birth's time is what is known
		}
		s.firmware, s.reportedHardware = in.get(st.Firmware), in.get(st.ReportedHardware)
		s.bootloader, s.agentVersion = in.get(st.Bootloader), in.get(st.AgentVersion)
		s.slot, s.bootsSinceCommit, s.utcOffset, s.secureVersion = st.Slot, st.BootsSinceCommit, st.UTCOffsetMinutes, st.SecureVersion
		s.replayGuard = st.ReplayGuard
		s.bootReason = parseEnum(st.BootReason, func(i uint8) string { return wire.BootReason(i).String() }, wire.BootReason(0))
		s.link = parseEnum(st.Link, func(i uint8) string { return wire.Connectivity(i).String() }, wire.Connectivity(0))
	}
	if st.OTAState != "" {
		s.hasOTAState = true
		s.otaState = parseEnum(st.OTAState, func(i uint8) string { return wire.OTAState(i).String() }, wire.OTAState(0))
	}
	if st.DownloadOffset != nil {
		s.hasOffset, s.downloadOffset = true, *st.DownloadOffset
	}
	return s
}

// reasons are the disconnect reasons as stored in status.reason.
var reasons = append([]string{""}, append(DisconnectReasons, ReasonRestart, ReasonGatewayOffline, ReasonGatewayChanged)...)

// reasonCode returns the index of reason in reasons; unknown reasons (from
// a newer version) read as "connection_lost".
func reasonCode(reason string) uint8 {
	for i, r := range reasons {
		if r == reason {
			return uint8(i)
		}
	}
	return reasonCode(ReasonLost)
}

// parseEnum finds the value whose String is name.
func parseEnum[T ~uint8](name string, str func(uint8) string, def T) T {
	for i := 0; i < 32; i++ {
		if str(uint8(i)) == name {
			return T(i)
		}
	}
	return def
}

// interner shares the strings many devices repeat (firmware and bootloader
// versions, hardware names). It stops growing at a bound, so a device
// reporting random strings cannot make it grow without limit.
type interner struct {
	mu sync.Mutex
	m  map[string]string
}

const maxInterned = 4096

func (in *interner) get(s string) string {
	if s == "" || in == nil {
		return s
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if v, ok := in.m[s]; ok {
		return v
	}
	if in.m == nil {
		in.m = make(map[string]string)
	}
	if len(in.m) < maxInterned {
		in.m[s] = s
	}
	return s
}
