package sim

import (
	"hash"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/wire"
)

// Manifest kinds (manifest key 10), as the agent numbers them.
const (
	kindFirmware = 0
	kindConfig   = 1
	kindFlags    = 2
	kinds        = 3
)

// faults say how a firmware image misbehaves once booted.
type faults struct {
	dead        bool // never comes up: no connection ever again
	mute        bool // connects, sends nothing
	crashAtBoot bool // resets (panic) before the agent runs
	hangAtBoot  bool // hangs until the watchdog resets it
	healthFail  bool // its application check fails from boot
	// crashAfter > 0: it panics this long after every boot.
	crashAfter time.Duration
	// healthFailAfter > 0: its application check fails from this long
	// after boot on.
	healthFailAfter time.Duration
}

// image is a firmware image in an application slot.
type image struct {
	version string
	secure  uint32
	faults  faults
}

// Persisted flags (the agent's OTA_PF_*).
const (
	flagIgnoreOffer uint8 = 1 << iota // this rollout+digest failed or is done: do not retry it
	flagRollbackReq                   // a rollback was asked for
	flagConfirmed                     // the trial image confirmed itself
)

// persisted is the agent's state record (kv "otamq.state"): what survives
// a reset.
type persisted struct {
	state       wire.OTAState
	kind        uint8 // of the update
	rollout     string
	version     string // the update's target version
	digest      manifest.Digest
	size        uint64
	offset      uint64 // download offset persisted (a multiple of 16)
	hashAt      []byte // the image's SHA-256 state at offset (the agent re-reads the slot instead)
	header      []byte // the image's first bytes
	blockSize   uint32
	installMode wire.InstallMode
	window      uint32 // the broker's (offer key 6), 0 unknown
	seq         uint64
	refetches   int
	targetSec   uint32
	targetSlot  uint8
	err         wire.ErrorCode
	flags       uint8

	secureVersion    uint32
	guard            [kinds]uint64 // replay guards: the sequence of what runs committed
	kindVersion      [kinds - 1]string
	bootsSinceCommit uint32
	wdtSinceCommit   uint32
	trial            time.Duration // trial clock: run time of the trial image, over boots
	bootLog, wdtLog  []time.Duration
}

// download is the RAM state of a download in progress.
type download struct {
	hash        hash.Hash
	next        uint64 // first missing offset
	reqID       uint32
	reqCount    uint32 // blocks still expected of the request
	reqGot      uint32 // blocks received of the request
	reqActive   bool
	reqDeadline time.Time
	retries     int
	retryWait   bool
	retryAt     time.Time
	started     time.Time // for the slow link's rate
	startOff    uint64
}

// queued is an event in the agent's queue.
type queued struct {
	b       []byte
	code    wire.EventCode
	err     wire.ErrorCode
	rollout string
	detail  string
}

type inbound struct {
	topic   string
	payload []byte
}

// maxPending bounds the messages kept while a connection settles.
const maxPending = 64

// historyLen is how many sent events a device remembers for Snapshot.
const historyLen = 32

// device is one simulated device: agent-c's state machine over a simulated
// board. Its fields are guarded by mu, except those set by newDevice.
type device struct {
	f     *Fleet
	spec  DeviceSpec
	base  string // "PREFIX/ID/"
	rng   *rand.Rand
	heap  uint32
	rssi  int16
	timer *time.Timer

	mu      sync.Mutex
	stopped bool

	// the board
	od        otadata
	images    [2]*image
	cfg       [kinds - 1]cfgStore
	running   uint8
	imgState  odState // of the running firmware, at boot (the agent's a->boot.img_state)
	bootRetry bool    // the bootloader boots an unconfirmed image again (BootLoop)
	up        bool    // running, agent included
	dead      bool
	mute      bool
	hwReason  wire.BootReason // the reset reason the next boot sees
	nextBoot  time.Time       // a reset is under way: the device boots then
	bootAt    time.Time
	crashAt   time.Time

	ps       persisted
	kvEvents []queued // the agent's kv "otamq.events": events kept across resets

	// the agent's RAM
	bootReason     wire.BootReason
	dl             *download
	window         uint32
	windowMax      uint32
	pct            uint8
	evq            []queued
	evqBytes       int
	evSaved        bool
	evInflight     bool
	evID           uint16
	evAt           time.Time // the first event may be published (again) from then on
	evBackoff      time.Duration
	lastHB         time.Time
	hbSent         bool
	brokerSeen     bool
	checkPending   bool
	unhealthy      bool
	unhealthySince time.Time
	offlineSince   time.Time
	trialBase      time.Duration
	trialStart     time.Time
	trialSaved     time.Time

	// the connection
	link       link
	gen        uint64 // identifies the connection (attempt) whose callbacks count
	connected  bool
	connecting bool
	settling   bool // connected, subscriptions under way: messages wait
	reserved   bool // connectAt is a slot of the connect rate
	pending    []inbound
	connectAt  time.Time
	backoff    time.Duration
	old        []link // closed links whose goroutines may still run
	inWindow   bool

	// what it did
	history         []SentEvent
	connects        int
	connectFailures int
	births          int
	heartbeats      int
	lastError       string
}

func newDevice(f *Fleet, s DeviceSpec) *device {
	d := &device{f: f, spec: s, base: f.cfg.Prefix + "/" + s.ID + "/", rng: f.deviceRand(s.ID)}
	d.heap = 100000 + d.rng.Uint32N(100000)
	d.rssi = -40 - int16(d.rng.IntN(50))
	d.images[0] = &image{version: s.Version, secure: s.SecureVersion} // the factory image, otadata erased
	for k := range d.cfg {
		d.cfg[k] = newCfgStore()
	}
	d.bootRetry = s.Profile == BootLoop
	d.timer = time.AfterFunc(time.Hour, d.onTimer)
	d.timer.Stop()
	return d
}

// start powers the device on.
func (d *device) start() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.hwReason = wire.BootPowerOn
	d.nextBoot = d.f.now()
	d.rearm(d.nextBoot)
}

// stop ends the device for good and returns its connection (to be
// disconnected) and the links that may still be closing.
func (d *device) stop() (link, []link) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopped = true
	d.timer.Stop()
	cur := d.link
	d.link, d.connected, d.settling = nil, false, false
	d.gen++
	return cur, d.old
}

func (d *device) onTimer() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return
	}
	now := d.f.now()
	d.tick(now)
	d.rearm(now)
}

// ---- time -------------------------------------------------------------

// tick does what is due at now: the agent's ota_agent_tick, and the
// board's and the link's own deadlines.
func (d *device) tick(now time.Time) {
	if d.stopped {
		return
	}
	if !d.nextBoot.IsZero() && !now.Before(d.nextBoot) {
		d.nextBoot = time.Time{}
		d.boot(now)
	}
	if !d.up || d.settling {
		return
	}
	if !d.crashAt.IsZero() && !now.Before(d.crashAt) {
		d.crashAt = time.Time{}
		d.reset(now, wire.BootPanic)
		return
	}
	d.checkWindow(now)
	d.maybeConnect(now)
	if d.mute {
		return
	}
	if d.connected && now.Sub(d.lastHB) >= d.f.t.Heartbeat {
		d.sendHeartbeat(now)
	}
	if d.f.cfg.Load {
		return
	}
	if dl := d.dl; d.ps.state == wire.StateDownloading && dl != nil && d.connected {
		if dl.reqActive && !now.Before(dl.reqDeadline) {
			if dl.reqGot != 0 {
				// Part of the window came, then nothing: the rest was lost,
				// or the broker serves fewer blocks per request than asked.
				// Ask for as many as came, at once; full answers grow the
				// window back, unless the broker did not say its window.
				d.window = dl.reqGot
				if d.ps.window == 0 {
					d.windowMax = dl.reqGot
				}
				d.sendRequest(now)
			} else {
				d.retryLater(now, 0, true)
			}
		}
		if d.ps.state == wire.StateDownloading && dl.retryWait && !now.Before(dl.retryAt) {
			d.sendRequest(now)
		}
	}
	if d.ps.state == wire.StateTrial {
		d.trialTick(now)
	}
	if d.evInflight && !now.Before(d.evAt) {
		d.evInflight = false // no PUBACK: the client lost it, send it again
	}
	d.flushEvents(now)
}

// rearm sets the timer to the earliest deadline after now.
func (d *device) rearm(now time.Time) {
	if d.stopped {
		return
	}
	var next time.Time
	at := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	at(d.nextBoot)
	if d.up && !d.settling {
		at(d.crashAt)
		if d.spec.Profile == OfflineWindow {
			at(d.offline().next(now, d.spec.UTCOffsetMinutes))
		}
		if !d.connected && !d.connecting && !d.inWindow {
			at(d.connectAt)
		}
		if d.connected && !d.mute {
			at(d.lastHB.Add(d.f.t.Heartbeat))
			if len(d.evq) > 0 {
				at(d.evAt) // the ack timeout, or the backoff of a refused event
			}
		}
		if dl := d.dl; dl != nil && d.connected {
			if dl.reqActive {
				at(dl.reqDeadline)
			}
			if dl.retryWait {
				at(dl.retryAt)
			}
		}
		if d.ps.state == wire.StateTrial && !d.mute {
			t := d.f.t
			if d.ps.flags&flagConfirmed == 0 {
				at(d.trialStart.Add(t.TrialTimeout - d.trialBase))
			} else {
				at(d.trialStart.Add(t.Probation - d.trialBase))
				at(d.trialSaved.Add(t.TrialPersist))
				if d.unhealthy {
					at(d.unhealthySince.Add(t.HealthFail))
				} else if fa := d.firmware().faults.healthFailAfter; fa > 0 {
					at(d.bootAt.Add(fa))
				}
				if !d.connected {
					at(d.offlineSince.Add(t.NoBroker))
				}
			}
		}
	}
	if next.IsZero() {
		d.timer.Stop()
		return
	}
	d.timer.Reset(max(next.Sub(now), 0))
}

// ---- the board ----------------------------------------------------------

// firmware is the running firmware image.
func (d *device) firmware() *image { return d.images[d.running] }

// imagesOK says which application slots hold an image.
func (d *device) imagesOK() [2]bool { return [2]bool{d.images[0] != nil, d.images[1] != nil} }

// reset ends what runs now: the connection goes without a DISCONNECT, RAM
// is lost (the events not kept in the kv store with it), and the device
// boots Timing.Boot later seeing reason as the reset reason.
func (d *device) reset(now time.Time, reason wire.BootReason) {
	d.dropLink(now)
	d.f.c.eventsLost.Add(uint64(max(len(d.evq)-len(d.kvEvents), 0)))
	d.evq, d.evqBytes, d.evInflight = nil, 0, false
	d.up, d.dl, d.crashAt = false, nil, time.Time{}
	d.connectAt, d.reserved, d.backoff = time.Time{}, false, 0
	d.hwReason = reason
	d.nextBoot = now.Add(d.f.t.Boot)
}

// restart is the agent's restart: the events not yet acknowledged are kept
// in the kv store, then the device reboots.
func (d *device) restart(now time.Time) {
	d.keepEvents()
	d.reset(now, wire.BootSoftware)
}

// boot is the bootloader, then the agent's ota_agent_on_boot.
func (d *device) boot(now time.Time) {
	s := d.od.boot(d.imagesOK(), d.bootRetry)
	if s < 0 {
		d.dead = true // nothing to boot
		return
	}
	d.running = uint8(s)
	for k := range d.cfg {
		d.cfg[k].boot()
	}
	d.imgState = odUndefined
	if st, ok := d.od.stateOf(d.running); ok {
		d.imgState = st
	}
	im := d.firmware()
	switch {
	case im.faults.dead:
		d.dead = true
		return
	case im.faults.crashAtBoot:
		d.hwReason, d.nextBoot = wire.BootPanic, now.Add(d.f.t.Boot)
		return
	case im.faults.hangAtBoot:
		d.hwReason, d.nextBoot = wire.BootWatchdog, now.Add(d.f.t.Boot)
		return
	}
	d.up, d.bootAt, d.mute = true, now, im.faults.mute
	d.connectAt, d.backoff = now, 0
	if im.faults.crashAfter > 0 {
		d.crashAt = now.Add(im.faults.crashAfter)
	}
	// RAM starts over (ota_agent_init)
	d.bootReason = d.hwReason
	d.window, d.windowMax = d.f.t.Window, d.f.t.Window
	d.pct, d.dl = 0, nil
	d.hbSent, d.brokerSeen, d.checkPending, d.unhealthy = false, false, false, false
	d.offlineSince, d.trialStart, d.trialSaved, d.trialBase = now, now, now, 0
	d.evInflight, d.evAt, d.evBackoff = false, now, 0
	if d.mute || d.f.cfg.Load {
		return
	}
	d.agentBoot(now)
}

// slotState is the port's boot_state for the update's kind: its running
// slot and the state of what runs there.
func (d *device) slotState(kind uint8) (uint8, odState) {
	if kind == kindFirmware {
		return d.running, d.imgState
	}
	return d.cfg[kind-1].bootState()
}

// healthBits are the heartbeat's health flags.
func (d *device) healthBits(now time.Time) uint8 {
	var h uint8
	if d.appHealthy(now) {
		h = wire.HealthAppOK | wire.HealthResourcesOK
	}
	if d.connected {
		h |= wire.HealthMessagingOK
	}
	return h
}

// appHealthy is the application's own check (the port's app_health): the
// firmware's, and a configuration in use may make it fail.
func (d *device) appHealthy(now time.Time) bool {
	f := d.firmware().faults
	if f.healthFail || f.healthFailAfter > 0 && now.Sub(d.bootAt) >= f.healthFailAfter {
		return false
	}
	for k := range d.cfg {
		if b := d.cfg[k].inUse(); b != nil && b.failHealth {
			return false
		}
	}
	return true
}

// deviceSecure is the device's secure version: its own, or its running
// image's when higher.
func (d *device) deviceSecure() uint32 { return max(d.ps.secureVersion, d.firmware().secure) }

// ---- what it looks like -------------------------------------------------

// SentEvent is an event a device handed to the broker.
type SentEvent struct {
	Code    wire.EventCode `json:"code"`
	Error   wire.ErrorCode `json:"error,omitempty"`
	Rollout string         `json:"rollout,omitempty"`
	Detail  string         `json:"detail,omitempty"`
}

// Snapshot is a device's state at one moment.
type Snapshot struct {
	ID      string  `json:"id"`
	Profile Profile `json:"profile"`
	// Connected: its MQTT session is up. Up: it is running (not in a
	// reboot). Dead: it will never run again.
	Connected bool `json:"connected"`
	Up        bool `json:"up"`
	Dead      bool `json:"dead"`

	Hardware         string          `json:"hardware"`
	Version          string          `json:"version"` // of the running (or last booted) firmware
	Slot             uint8           `json:"slot"`
	BootReason       wire.BootReason `json:"boot_reason"`
	BootsSinceCommit uint32          `json:"boots_since_commit"`
	SecureVersion    uint32          `json:"secure_version"`
	ReplayGuard      uint64          `json:"replay_guard,omitempty"`
	// ConfigVersion and FlagsVersion are the committed configuration's and
	// feature flags' versions ("" none).
	ConfigVersion string        `json:"config_version,omitempty"`
	FlagsVersion  string        `json:"flags_version,omitempty"`
	OTAState      wire.OTAState `json:"ota_state"`
	Rollout       string        `json:"rollout,omitempty"`
	Target        string        `json:"target,omitempty"`
	Offset        uint64        `json:"offset,omitempty"`
	Size          uint64        `json:"size,omitempty"`

	Connects        int `json:"connects"`
	ConnectFailures int `json:"connect_failures"`
	Births          int `json:"births"`
	Heartbeats      int `json:"heartbeats"`
	// Events are the newest events it published (up to 32, a resent one
	// again), oldest first.
	Events    []SentEvent `json:"events,omitempty"`
	LastError string      `json:"last_error,omitempty"`
}

// Codes returns the codes of s.Events about rollout ("" for all).
func (s Snapshot) Codes(rollout string) []wire.EventCode {
	var out []wire.EventCode
	for _, e := range s.Events {
		if rollout == "" || e.Rollout == rollout {
			out = append(out, e.Code)
		}
	}
	return out
}

func (d *device) snapshot() Snapshot {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := Snapshot{ID: d.spec.ID, Profile: d.spec.Profile, Connected: d.connected, Up: d.up, Dead: d.dead,
		Hardware: d.spec.Hardware, Version: d.firmware().version, Slot: d.running, BootReason: d.bootReason,
		BootsSinceCommit: d.ps.bootsSinceCommit, SecureVersion: d.deviceSecure(), ReplayGuard: d.ps.guard[kindFirmware],
		ConfigVersion: d.ps.kindVersion[kindConfig-1], FlagsVersion: d.ps.kindVersion[kindFlags-1],
		OTAState: d.ps.state, Rollout: d.ps.rollout, Target: d.ps.version, Offset: d.ps.offset, Size: d.ps.size,
		Connects: d.connects, ConnectFailures: d.connectFailures, Births: d.births, Heartbeats: d.heartbeats,
		Events: slices.Clone(d.history), LastError: d.lastError}
	if d.dl != nil {
		s.Offset = d.dl.next
	}
	return s
}

func (d *device) count(s *Stats) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.connected {
		s.Connected++
	}
	if d.up {
		s.Up++
	}
	if d.dead {
		s.Dead++
	}
	if d.connects > 0 {
		s.Seen++
	}
	s.States[d.ps.state.String()]++
	s.Versions[d.firmware().version]++
	s.Profiles[d.spec.Profile.String()]++
}
