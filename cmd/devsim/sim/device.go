package sim

import (
	"context"
	"crypto/sha256"
	"encoding"
	"errors"
	"hash"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/Masterminds/semver/v3"

	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/wire"
)

// slotState is a slot's otadata state, as ESP-IDF's bootloader keeps it.
type slotState uint8

const (
	slotEmpty   slotState = iota // no image
	slotNew                      // activated, not booted yet
	slotPending                  // booted, waiting to be confirmed
	slotValid                    // confirmed (or the factory image)
	slotInvalid                  // rolled back from, or aborted
)

// faults say how an image misbehaves once booted.
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

type image struct {
	version string
	secure  uint32
	faults  faults
}

type slot struct {
	state slotState
	img   image
}

func (s *slot) bootable() bool {
	return s.state == slotNew || s.state == slotPending || s.state == slotValid
}

// Persisted flags (the agent's OTA_PF_*).
const (
	flagIgnoreOffer uint8 = 1 << iota // this rollout+digest failed or is done: do not retry it
	flagRollbackReq                   // a rollback was asked for
	flagConfirmed                     // the trial image confirmed itself
)

// persisted is the agent's persisted record (its kv "otamq.state"): what
// survives a reboot.
type persisted struct {
	state        wire.OTAState
	rollout      string
	version      string // the update's target version
	digest       manifest.Digest
	size         uint64
	offset       uint64 // download offset persisted
	hashAt       []byte // the image's SHA-256 state at offset (the agent re-reads the slot instead)
	header       []byte // the image's first bytes (agent-c's simulated image header, if any)
	blockSize    uint32
	installMode  wire.InstallMode
	maxWindow    uint32 // the broker's window (offer key 6), 0 unknown
	seq          uint64
	targetSecure uint32
	targetSlot   uint8
	err          wire.ErrorCode
	flags        uint8

	secureVersion    uint32
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
	slots     [2]slot
	bootSlot  uint8
	running   uint8
	bootRetry bool // the bootloader boots an unconfirmed image again (BootLoop)
	up        bool // running, agent included
	dead      bool
	mute      bool
	hwReason  wire.BootReason // the reset reason the next boot sees
	nextBoot  time.Time       // a reset is under way: the device boots then
	bootAt    time.Time
	crashAt   time.Time

	ps persisted

	// the agent's RAM
	bootReason     wire.BootReason
	dl             *download
	window         uint32
	pct            uint8
	evq            []queued
	evqBytes       int
	lastHB         time.Time
	hbSent         bool
	brokerSeen     bool
	checkPending   bool
	unhealthy      bool
	unhealthySince time.Time
	offlineSince   time.Time
	trialBase      time.Duration

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
	d.slots[0] = slot{state: slotValid, img: image{version: s.Version, secure: s.SecureVersion}}
	d.bootRetry = s.Profile == BootLoop
	d.window = f.t.Window
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
				// Part of the window came, then nothing: the broker serves
				// fewer blocks per request than asked (or the rest was
				// lost). Ask for as many as came from now on, at once.
				d.window = dl.reqGot
				d.sendRequest(now)
			} else {
				d.retryLater(now, 0)
			}
		}
		if d.ps.state == wire.StateDownloading && dl.retryWait && !now.Before(dl.retryAt) {
			d.sendRequest(now)
		}
	}
	if d.ps.state == wire.StateTrial {
		d.trialTick(now)
	}
	d.flushEvents()
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
				at(d.bootAt.Add(t.TrialTimeout))
			} else {
				at(d.bootAt.Add(t.Probation - d.trialBase))
				if d.unhealthy {
					at(d.unhealthySince.Add(t.HealthFail))
				} else if fa := d.img().faults.healthFailAfter; fa > 0 {
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

func (d *device) img() *image { return &d.slots[d.running].img }

// flushTimeout bounds the flush before a software reset (the agent's
// POSIX port: ota_mq_flush(mq, 1000)).
const flushTimeout = time.Second

// reset ends what runs now: the connection goes without a DISCONNECT, RAM
// is lost (the queued events with it), and the device boots Timing.Boot
// later seeing reason as the reset reason. A software reset (an install,
// a rollback, the reboot command) first waits for the PUBACKs of what was
// published, as the agent's port does; a crash does not.
func (d *device) reset(now time.Time, reason wire.BootReason) {
	l := d.link
	soft := reason == wire.BootSoftware && l != nil
	d.dropLink(now, !soft)
	if n := len(d.evq); n > 0 {
		d.f.c.eventsLost.Add(uint64(n))
	}
	d.evq, d.evqBytes = nil, 0
	d.up, d.dl, d.crashAt = false, nil, time.Time{}
	d.connectAt, d.reserved, d.backoff = time.Time{}, false, 0
	d.hwReason = reason
	if !soft {
		d.nextBoot = now.Add(d.f.t.Boot)
		return
	}
	g := d.gen
	d.f.spawn(func() {
		ctx, cancel := context.WithTimeout(d.f.ctx, flushTimeout)
		l.flush(ctx)
		cancel()
		l.abort()
		d.mu.Lock()
		defer d.mu.Unlock()
		if g != d.gen || d.stopped {
			return
		}
		now := d.f.now()
		d.nextBoot = now.Add(d.f.t.Boot)
		d.rearm(now)
	})
}

// boot is the bootloader, then the agent's ota_agent_on_boot.
func (d *device) boot(now time.Time) {
	// ESP-IDF's otadata rules: an image left pending-verify by the previous
	// run is aborted and the other slot boots (unless this bootloader
	// retries it); a new one becomes pending-verify.
	b := d.bootSlot
	if d.slots[b].state == slotPending && !d.bootRetry {
		d.slots[b].state = slotInvalid
		b ^= 1
	}
	if !d.slots[b].bootable() {
		b ^= 1
	}
	if !d.slots[b].bootable() {
		d.dead = true // nothing to boot
		return
	}
	if d.slots[b].state == slotNew {
		d.slots[b].state = slotPending
	}
	d.bootSlot, d.running = b, b
	im := d.img()
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
	// RAM starts over
	d.bootReason = d.hwReason
	d.window, d.pct, d.dl = d.f.t.Window, 0, nil
	d.hbSent, d.brokerSeen, d.checkPending, d.unhealthy = false, false, false, false
	d.offlineSince, d.trialBase = now, 0
	if d.mute || d.f.cfg.Load {
		return
	}
	d.agentBoot(now)
}

// agentBoot is ota_agent_on_boot after the port's boot state is known.
func (d *device) agentBoot(now time.Time) {
	ps := &d.ps
	ps.bootsSinceCommit++
	if d.hwReason == wire.BootWatchdog {
		ps.wdtSinceCommit++
	}
	st := ps.state
	inUpdate := st == wire.StateTrial || st == wire.StateRebooting || st == wire.StateInstalling
	// an image waiting for confirmation that we know nothing about
	if d.slots[d.running].state == slotPending && !(inUpdate && ps.targetSlot == d.running) {
		ps.targetSlot = d.running
		d.newTrial()
		ps.state, st, inUpdate = wire.StateRebooting, wire.StateRebooting, true
	}
	if inUpdate {
		switch {
		case d.running != ps.targetSlot:
			if st != wire.StateInstalling {
				d.rolledBack()
				return
			}
			ps.state = wire.StateVerified // reset during activation: redo it
		case st == wire.StateTrial:
			d.trialBoot(now)
			return
		default: // the new image's first boot
			d.bootReason = wire.BootOTAReboot
			d.logPush(&ps.bootLog, 0)
			d.trialBase = 0
			d.step(wire.StateTrial, wire.EvRebootCompleted, rNone)
			return
		}
	}
	if ps.state == wire.StateDownloading {
		d.startDownload(now)
	}
}

// rolledBack: the bootloader (or the agent, before a reset) went back to
// the previous image. After a power loss it is not the image's fault.
func (d *device) rolledBack() {
	ps := &d.ps
	asked := ps.flags&flagRollbackReq != 0
	power := !asked && (d.hwReason == wire.BootPowerOn || d.hwReason == wire.BootBrownout)
	if !asked {
		ps.err = wire.ErrCodeBootFailure
		why := rNotConfirmed
		if power {
			why = rPowerLost
		}
		d.event(wire.EvRollbackTriggered, why)
	}
	ps.flags = flagIgnoreOffer
	if power {
		ps.flags = 0
	}
	ps.bootLog, ps.wdtLog = nil, nil
	d.bootReason = wire.BootRollback
	d.step(wire.StateRolledBack, wire.EvRollbackCompleted, rPS)
	d.f.c.rollbacks.Add(1)
}

// trialBoot is another boot of the image on trial: the reboot and
// watchdog triggers.
func (d *device) trialBoot(now time.Time) {
	ps := &d.ps
	d.trialBase = ps.trial
	if ps.flags&flagRollbackReq != 0 {
		d.rollBack(now, rRetried) // the rollback did not happen
		return
	}
	d.logPush(&ps.bootLog, ps.trial)
	if d.hwReason == wire.BootWatchdog {
		d.logPush(&ps.wdtLog, ps.trial)
	}
	t := d.f.t
	switch {
	case countSince(ps.bootLog, ps.trial, t.RebootWindow) > t.MaxReboots:
		d.failTrial(now, rReboots)
	case countSince(ps.wdtLog, ps.trial, t.WDTWindow) > t.MaxWDTResets:
		d.failTrial(now, rWDT)
	}
}

func (d *device) logPush(log *[]time.Duration, t time.Duration) {
	if len(*log) == bootLogLen {
		*log = slices.Delete(*log, 0, 1)
	}
	*log = append(*log, t)
}

func countSince(log []time.Duration, now, window time.Duration) int {
	n := 0
	for _, t := range log {
		if now-t < window {
			n++
		}
	}
	return n
}

func (d *device) newTrial() {
	ps := &d.ps
	ps.flags, ps.trial, ps.bootLog, ps.wdtLog = 0, 0, nil, nil
}

// deviceSecure is the device's secure version: its own, or its running
// image's when higher.
func (d *device) deviceSecure() uint32 { return max(d.ps.secureVersion, d.img().secure) }

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

// appHealthy is the application's own check (the port's app_health).
func (d *device) appHealthy(now time.Time) bool {
	f := d.img().faults
	if f.healthFail {
		return false
	}
	return f.healthFailAfter <= 0 || now.Sub(d.bootAt) < f.healthFailAfter
}

// ---- events -------------------------------------------------------------

// event reports code about the current update.
func (d *device) event(code wire.EventCode, why reason) {
	d.eventFor(code, why, d.ps.rollout, d.ps.version)
}

// eventPlain reports code about no update in particular.
func (d *device) eventPlain(code wire.EventCode, why reason) { d.eventFor(code, why, "", "") }

func (d *device) eventFor(code wire.EventCode, why reason, rollout, version string) {
	ev := eventMsg{Code: code, Rollout: rollout, Version: version, Detail: reasons[why].detail,
		DeviceTime: uint64(d.f.now().Unix())}
	if code >= wire.EvDownloadStarted && code <= wire.EvDownloadCompleted {
		p := d.pct
		ev.Progress = &p
	}
	ev.Error = reasons[why].err
	if ev.Error == errPS {
		ev.Error = d.ps.err
	}
	q := queued{b: encode(ev), code: code, err: ev.Error, rollout: rollout, detail: ev.Detail}
	// oldest dropped when the queue is full, as the agent's
	for len(d.evq) > 0 && d.evqBytes+1+len(q.b) > eventQueueBytes {
		d.evqBytes -= 1 + len(d.evq[0].b)
		d.evq = d.evq[1:]
		d.f.c.eventsLost.Add(1)
	}
	d.evq = append(d.evq, q)
	d.evqBytes += 1 + len(q.b)
	d.flushEvents()
}

// step enters state st (persisted before anything else) and reports code.
func (d *device) step(st wire.OTAState, code wire.EventCode, why reason) {
	d.ps.state = st
	d.event(code, why)
}

func (d *device) flushEvents() {
	for d.connected && !d.settling && len(d.evq) > 0 {
		q := d.evq[0]
		if !d.publish("ev", q.b, 1) {
			return
		}
		d.evqBytes -= 1 + len(q.b)
		d.evq[0] = queued{}
		d.evq = d.evq[1:]
		if len(d.evq) == 0 {
			d.evq = nil
		}
		d.f.c.events.Add(1)
		if len(d.history) == historyLen {
			d.history = slices.Delete(d.history, 0, 1)
		}
		d.history = append(d.history, SentEvent{Code: q.code, Error: q.err, Rollout: q.rollout, Detail: q.detail})
	}
}

// ---- outgoing messages ------------------------------------------------

func (d *device) publish(suffix string, payload []byte, qos byte) bool {
	if d.link == nil || !d.connected {
		return false
	}
	if err := d.link.publish(d.base+suffix, payload, qos); err != nil {
		d.lastError = "publish " + suffix + ": " + err.Error()
		return false
	}
	return true
}

func (d *device) sendBirth() {
	b := wire.Birth{FirmwareVersion: d.img().version, Hardware: d.spec.Hardware, Bootloader: d.spec.Bootloader,
		Slot: d.running, BootReason: d.bootReason, BootsSinceCommit: d.ps.bootsSinceCommit, OTAState: d.ps.state,
		AgentVersion: AgentVersion, Connectivity: d.spec.Connectivity, UTCOffsetMinutes: d.spec.UTCOffsetMinutes,
		SecureVersion: d.deviceSecure()}
	if d.publish("birth", b.Encode(), 1) {
		d.births++
		d.f.c.births.Add(1)
	}
}

func (d *device) sendHeartbeat(now time.Time) {
	hb := wire.Heartbeat{UptimeSeconds: uint64(now.Sub(d.bootAt) / time.Second), HealthFlags: d.healthBits(now),
		WatchdogResets: d.ps.wdtSinceCommit, FreeHeap: d.heap, RSSI: d.rssi, OTAState: d.ps.state}
	if d.ps.state == wire.StateDownloading {
		off := d.ps.offset
		if d.dl != nil {
			off = d.dl.next
		}
		hb.DownloadOffset = &off
	}
	d.lastHB = now
	if d.publish("hb", hb.Encode(), 0) {
		d.hbSent = true
		d.heartbeats++
		d.f.c.heartbeats.Add(1)
	}
}

// sendRequest asks for the next window from the first missing offset. A
// lost request is handled like a lost answer: the timeout retries.
func (d *device) sendRequest(now time.Time) {
	dl, ps := d.dl, &d.ps
	bs := uint64(ps.blockSize)
	count := uint32(min((ps.size-dl.next+bs-1)/bs, uint64(d.window)))
	if ps.maxWindow > 0 {
		count = min(count, ps.maxWindow)
	}
	dl.retryWait = false
	dl.reqID++
	req := wire.BlockRequest{Digest: ps.digest[:], Offset: dl.next, Size: ps.blockSize, Count: count, RequestID: dl.reqID}
	dl.reqCount, dl.reqGot, dl.reqActive = count, 0, true
	dl.reqDeadline = now.Add(d.f.t.RequestTimeout)
	if d.publish("ota/get", req.Encode(), 0) {
		d.f.c.requests.Add(1)
	}
}

// nextRequest asks for the next window, later on a slow link.
func (d *device) nextRequest(now time.Time) {
	dl := d.dl
	if d.spec.Profile == Slow {
		rate := d.spec.SlowRate
		if rate <= 0 {
			rate = d.f.cfg.SlowRate
		}
		due := dl.started.Add(time.Duration(float64(dl.next-dl.startOff) / float64(rate) * float64(time.Second)))
		if now.Before(due) {
			dl.reqActive, dl.retryWait, dl.retryAt = false, true, due
			return
		}
	}
	d.sendRequest(now)
}

// ---- download -----------------------------------------------------------

func (d *device) stopRequests() {
	if d.dl != nil {
		d.dl.reqActive, d.dl.retryWait = false, false
	}
}

// giveUp ends the current download or verified image and reports it.
// Cancelled: back to idle. Failed: state failed, and the same
// rollout+digest is not tried again when offered again.
func (d *device) giveUp(why reason) {
	d.stopRequests()
	d.dl = nil
	err := reasons[why].err
	d.ps.err = err
	st := wire.StateIdle
	if err != wire.ErrCodeCancelled {
		d.ps.flags |= flagIgnoreOffer
		st = wire.StateFailed
	}
	d.ps.hashAt, d.ps.header = nil, nil
	d.step(st, wire.EvDownloadFailed, why)
}

// decile is the completed tenths of the image in percent, 0 to 90.
func decile(off, size uint64) uint8 {
	if size < 10 {
		return 0
	}
	return uint8(10 * min(off/(size/10), 9))
}

// startDownload prepares the hash for ps from ps.offset (0 for a new
// download; a resumed one continues from the persisted hash state).
func (d *device) startDownload(now time.Time) {
	ps := &d.ps
	dl := &download{hash: sha256.New(), started: now}
	if ps.offset > 0 {
		if u, ok := dl.hash.(encoding.BinaryUnmarshaler); !ok || u.UnmarshalBinary(ps.hashAt) != nil {
			ps.offset, dl.hash = 0, sha256.New() // cannot resume: start over
		}
	}
	dl.next, dl.startOff = ps.offset, ps.offset
	d.dl = dl
	d.pct = decile(dl.next, ps.size)
}

// persistOffset records the download offset with the hash state at it.
func (d *device) persistOffset() {
	d.ps.offset = d.dl.next
	if m, ok := d.dl.hash.(encoding.BinaryMarshaler); ok {
		if b, err := m.MarshalBinary(); err == nil {
			d.ps.hashAt = b
		}
	}
}

// retryLater: a failed attempt (timeout or retryable block error): back
// off, or give up after MaxRetries consecutive failures.
func (d *device) retryLater(now time.Time, atLeast time.Duration) {
	dl, t := d.dl, d.f.t
	dl.reqActive = false
	dl.retries++
	if dl.retries > t.MaxRetries {
		d.giveUp(rRetries)
		return
	}
	backoff := t.BackoffMin
	for i := 1; i < dl.retries && backoff < t.BackoffMax; i++ {
		backoff *= 2
	}
	backoff = max(min(backoff, t.BackoffMax), atLeast)
	dl.retryWait, dl.retryAt = true, now.Add(backoff)
}

func (d *device) onBlock(now time.Time, payload []byte) {
	ps, dl := &d.ps, d.dl
	if ps.state != wire.StateDownloading || dl == nil || !dl.reqActive {
		return // stale or unrequested: ignore
	}
	b, be, err := wire.DecodeBlock(payload, int(ps.blockSize))
	if err != nil {
		return
	}
	if be != nil {
		if be.RequestID != dl.reqID {
			return
		}
		switch be.Code {
		case wire.BlockRateLimited, wire.BlockInternal:
			d.retryLater(now, time.Duration(be.RetryAfterMS)*time.Millisecond)
		case wire.BlockNotAssigned:
			d.giveUp(rNotAssigned)
		case wire.BlockUnknownImage:
			d.giveUp(rUnknownImage)
		case wire.BlockOutOfRange:
			d.giveUp(rOffset)
		default:
			d.giveUp(rBrokerRefused)
		}
		return
	}
	switch {
	case b.RequestID != dl.reqID, b.Offset != dl.next:
		return // duplicate or out of order: wait, or re-request
	case b.ImageSize != ps.size:
		d.giveUp(rSize)
		return
	case len(b.Data) == 0 || uint64(len(b.Data)) > ps.size-b.Offset:
		return
	}
	if b.Offset < simHeaderLen && uint64(len(ps.header)) == b.Offset {
		n := min(uint64(len(b.Data)), simHeaderLen-b.Offset)
		ps.header = append(ps.header[:b.Offset], b.Data[:n]...)
	}
	dl.hash.Write(b.Data)
	dl.next += uint64(len(b.Data))
	dl.retries = 0
	dl.reqDeadline = now.Add(d.f.t.RequestTimeout)
	dl.reqGot++
	if dl.reqCount > 0 {
		dl.reqCount--
	}
	d.f.c.blocks.Add(1)
	d.f.c.bytes.Add(uint64(len(b.Data)))
	if dl.next != ps.size {
		if dec := decile(dl.next, ps.size); dec > d.pct {
			d.pct = dec
			d.event(wire.EvDownloadProgress, rNone)
		}
		if dl.reqCount == 0 || dl.next-ps.offset >= persistEvery {
			d.persistOffset()
		}
		if dl.reqCount == 0 && d.connected {
			d.nextRequest(now)
		}
		return
	}
	// complete: the digest decides before anything is installed
	dl.reqActive = false
	var sum manifest.Digest
	dl.hash.Sum(sum[:0])
	if sum != ps.digest {
		d.giveUp(rDigest)
		return
	}
	ps.offset, ps.hashAt = ps.size, nil
	d.pct = 100
	d.dl = nil
	d.step(wire.StateVerified, wire.EvDownloadCompleted, rNone)
	if ps.installMode == wire.InstallImmediately {
		d.install(now)
	}
}

// install activates the verified image in the other slot and reboots
// into it.
func (d *device) install(now time.Time) {
	ps := &d.ps
	d.step(wire.StateInstalling, wire.EvInstallStarted, rNone)
	d.slots[ps.targetSlot] = slot{state: slotNew, img: d.newImage()}
	d.bootSlot = ps.targetSlot
	d.event(wire.EvInstallCompleted, rNone)
	d.newTrial()
	d.step(wire.StateRebooting, wire.EvRebootStarted, rNone)
	d.reset(now, wire.BootSoftware)
}

// newImage is the image just downloaded: what its simulated image header
// says, else the manifest's version and the device's profile.
func (d *device) newImage() image {
	ps := &d.ps
	im := image{version: ps.version, secure: ps.targetSecure}
	if h, ok := parseSimHeader(ps.header); ok {
		if h.version != "" {
			im.version = h.version
		}
		im.secure = h.secure
		switch h.behaviour {
		case simCrash:
			im.faults.crashAtBoot = true
		case simHealthFail:
			im.faults.healthFail = true
		case simHang:
			im.faults.hangAtBoot = true
		case simCrashLater:
			im.faults.crashAfter = time.Duration(h.delay) * time.Second
		case simHealthFailLater:
			im.faults.healthFailAfter = time.Duration(h.delay) * time.Second
		}
		if h.behaviour != simHealthy {
			ps.header = nil
			return im
		}
	}
	ps.header = nil
	if len(d.spec.FaultVersions) > 0 && !slices.Contains(d.spec.FaultVersions, im.version) {
		return im
	}
	switch d.spec.Profile {
	case BadHealth:
		im.faults.healthFail = true
	case BootLoop:
		im.faults.healthFail = true
		im.faults.crashAfter = d.f.t.CrashAfter
	case Rollback:
		im.faults.crashAtBoot = true
	case Silent:
		im.faults.dead = true
	case Mute:
		im.faults.mute = true
	}
	return im
}

// ---- offers -------------------------------------------------------------

// coseOK reports whether b is a COSE_Sign1 in the contract's shape, its
// payload aside: with no trusted key, only the key lookup can fail then.
func coseOK(b []byte) bool {
	_, err := manifest.Verify(b, manifest.KeySet{})
	return errors.Is(err, manifest.ErrUnknownKey)
}

func (d *device) onOffer(now time.Time, payload []byte) {
	d.f.c.offers.Add(1)
	o, err := wire.DecodeOffer(payload)
	if err != nil {
		d.eventPlain(wire.EvRejected, rBadOffer)
		d.f.c.rejected.Add(1)
		return
	}
	if d.checkPending {
		d.checkPending = false
		d.eventPlain(wire.EvCheckCompleted, rNone)
	}
	ps := &d.ps
	st := ps.state
	// no new update while one is being installed or tried
	if st == wire.StateInstalling || st == wire.StateRebooting || st == wire.StateTrial {
		return
	}
	if o.RolloutID == "" {
		if st == wire.StateDownloading || st == wire.StateVerified {
			d.giveUp(rWithdrawn)
		}
		return
	}
	// Parsed once, not yet trusted, for the cheap re-offer check before any
	// crypto: the same rollout and digest again continues or ignores what
	// is under way.
	s, perr := manifest.Parse(o.Manifest)
	decoded := perr == nil
	if decoded && o.RolloutID == ps.rollout && s.Manifest.ImageDigest == ps.digest {
		switch {
		case st == wire.StateDownloading || st == wire.StateVerified:
			ps.installMode, ps.maxWindow = o.InstallMode, o.MaxWindow
			if st == wire.StateVerified {
				if o.InstallMode == wire.InstallImmediately {
					d.install(now)
				}
			} else if dl := d.dl; dl != nil && !dl.reqActive && !dl.retryWait && d.connected {
				d.sendRequest(now)
			}
			return
		case st == wire.StateCommitted || ps.flags&flagIgnoreOffer != 0:
			return // done, or already failed: don't loop
		}
	}
	// then the contract's checks in order: signature, the manifest's
	why := rNone
	switch {
	case o.Deadline != 0 && uint64(now.Unix()) > o.Deadline:
		why = rDeadline
	case !decoded && !coseOK(o.Manifest):
		why = rBadCOSE
	default:
		_, verr := manifest.Verify(o.Manifest, d.f.cfg.Keys)
		switch {
		case errors.Is(verr, manifest.ErrUnknownKey):
			why = rUnknownKey
		case errors.Is(verr, manifest.ErrBadSignature), errors.Is(verr, manifest.ErrKeyType):
			why = rBadSignature
		case verr != nil || !decoded:
			why = rBadManifest
		default:
			why = d.checkManifest(&s.Manifest)
		}
	}
	if why != rNone {
		version := ""
		if decoded && len(s.Manifest.Version) <= maxVersionLen {
			version = s.Manifest.Version
		}
		d.eventFor(wire.EvRejected, why, o.RolloutID, version)
		d.f.c.rejected.Add(1)
		return
	}
	if st == wire.StateDownloading || st == wire.StateVerified {
		d.giveUp(rSuperseded)
	}
	m := &s.Manifest
	ps.rollout, ps.version, ps.digest, ps.size = o.RolloutID, m.Version, m.ImageDigest, m.ImageSize
	ps.offset, ps.hashAt, ps.header = 0, nil, nil
	ps.blockSize = d.f.t.BlockSize // or the offer's, when smaller
	if o.BlockSize != 0 && o.BlockSize < ps.blockSize {
		ps.blockSize = o.BlockSize
	}
	ps.installMode, ps.maxWindow = o.InstallMode, o.MaxWindow
	ps.seq, ps.targetSecure, ps.targetSlot = m.Sequence, m.SecureVersion, d.running^1
	ps.err, ps.flags = 0, 0
	d.startDownload(now)
	d.step(wire.StateDownloading, wire.EvDownloadStarted, rNone)
	if d.connected {
		d.sendRequest(now)
	}
}

// checkManifest runs the checks after the signature, in the agent's order,
// on a manifest whose signature is verified.
func (d *device) checkManifest(m *manifest.Manifest) reason {
	if !m.HasHardware(d.spec.Hardware) {
		return rHardware
	}
	if m.MinBootloader != "" {
		if c, ok := compareVersions(d.spec.Bootloader, m.MinBootloader); !ok || c < 0 {
			return rBootloader
		}
	}
	if m.Kind != manifest.KindFirmware {
		return rKind
	}
	if len(m.Version) > maxVersionLen {
		return rVersionLong
	}
	c, ok := compareVersions(m.Version, d.img().version)
	if !ok {
		return rBadVersion
	}
	if c <= 0 && !d.spec.AllowDowngrade {
		if c == 0 {
			return rSameVersion
		}
		return rDowngrade
	}
	if m.Sequence < d.ps.seq {
		return rSequence
	}
	if m.SecureVersion < d.deviceSecure() {
		return rSecureVersion
	}
	return rNone
}

// compareVersions compares two semantic versions.
func compareVersions(a, b string) (int, bool) {
	va, err := semver.StrictNewVersion(a)
	if err != nil {
		return 0, false
	}
	vb, err := semver.StrictNewVersion(b)
	if err != nil {
		return 0, false
	}
	return va.Compare(vb), true
}

// ---- commands -----------------------------------------------------------

func (d *device) checkNow() {
	d.checkPending = true
	d.eventPlain(wire.EvCheckStarted, rNone)
	if l := d.link; l != nil && d.connected {
		topic := d.base + "ota/manifest"
		d.f.spawn(func() { _ = l.subscribe(d.f.ctx, topic, 1) })
	}
}

func (d *device) onCommand(now time.Time, payload []byte) {
	c, err := wire.DecodeCommand(payload)
	if err != nil {
		return
	}
	if c.NotAfter != 0 && uint64(now.Unix()) > c.NotAfter {
		return
	}
	st := d.ps.state
	switch c.Verb {
	case wire.VerbInstall, wire.VerbCancel:
		if c.RolloutID != "" && c.RolloutID != d.ps.rollout {
			return // about another rollout
		}
		if st != wire.StateDownloading && st != wire.StateVerified {
			return
		}
		switch {
		case c.Verb == wire.VerbCancel:
			d.giveUp(rCancelCmd)
		case st == wire.StateVerified:
			d.install(now)
		default:
			d.ps.installMode = wire.InstallImmediately // install as soon as verified
		}
	case wire.VerbCheck:
		d.checkNow()
	case wire.VerbReboot:
		d.reset(now, wire.BootSoftware)
	}
}

// ---- trial --------------------------------------------------------------

// trialClock is the trial image's run time, over boots.
func (d *device) trialClock(now time.Time) time.Duration { return d.trialBase + now.Sub(d.bootAt) }

// rollBack asks the bootloader to go back to the other slot.
func (d *device) rollBack(now time.Time, why reason) {
	ps := &d.ps
	if e := reasons[why].err; e != errPS {
		ps.err = e
	}
	ps.flags |= flagRollbackReq
	ps.trial = d.trialClock(now)
	d.step(ps.state, wire.EvRollbackTriggered, why)
	// the port's rollback: possible from a pending-verify image, or to a
	// valid image in the other slot
	r := d.running
	if d.slots[r].state == slotPending || d.slots[r^1].state == slotValid {
		d.slots[r].state = slotInvalid
		d.bootSlot = r ^ 1
		d.reset(now, wire.BootSoftware)
		return
	}
	if ps.flags&flagConfirmed == 0 {
		d.reset(now, wire.BootSoftware) // unconfirmed: the bootloader reverts
		return
	}
	// confirmed and no way back: stay on this image, report it
	ps.flags = ps.flags&^flagRollbackReq | flagIgnoreOffer
	d.step(wire.StateFailed, wire.EvHealthFailed, rNoTarget)
}

func (d *device) failTrial(now time.Time, why reason) {
	d.event(wire.EvHealthFailed, why)
	d.rollBack(now, why)
}

func (d *device) trialTick(now time.Time) {
	ps, t := &d.ps, d.f.t
	healthy := d.appHealthy(now)
	if ps.flags&flagConfirmed == 0 {
		switch {
		case d.brokerSeen && d.hbSent && healthy:
			d.slots[d.running].state = slotValid // the port's confirm
			ps.flags |= flagConfirmed
			ps.trial = d.trialClock(now)
			d.step(wire.StateTrial, wire.EvHealthOK, rNone)
		case now.Sub(d.bootAt) >= t.TrialTimeout:
			// the first of the checks that did not pass
			why := rNotReached
			if d.brokerSeen {
				why = rNoHeartbeat
				if d.hbSent {
					why = rAppCheck
				}
			}
			d.failTrial(now, why)
		}
		return
	}
	// probation: the triggers are armed
	switch {
	case healthy:
		d.unhealthy = false
	case !d.unhealthy:
		d.unhealthy, d.unhealthySince = true, now
	case now.Sub(d.unhealthySince) >= t.HealthFail:
		d.failTrial(now, rHealthFailing)
		return
	}
	if !d.connected && now.Sub(d.offlineSince) >= t.NoBroker {
		d.failTrial(now, rNoBroker)
		return
	}
	if clock := d.trialClock(now); clock >= t.Probation {
		// committed: the secure version moves up, the counters restart
		ps.trial = clock
		ps.secureVersion = max(ps.secureVersion, ps.targetSecure)
		ps.bootsSinceCommit, ps.wdtSinceCommit, ps.bootLog, ps.wdtLog = 0, 0, nil, nil
		ps.flags |= flagIgnoreOffer
		ps.state = wire.StateCommitted
		d.f.c.commits.Add(1)
		d.checkNow() // the next update may be waiting
	}
}

// ---- the connection -----------------------------------------------------

// offline is the device's daily offline window.
func (d *device) offline() Window {
	if d.spec.Offline != nil {
		return *d.spec.Offline
	}
	return d.f.cfg.Offline
}

// checkWindow drops the connection when an OfflineWindow device's window
// begins and lets it connect again when it ends.
func (d *device) checkWindow(now time.Time) {
	if d.spec.Profile != OfflineWindow {
		return
	}
	in := d.offline().contains(now, d.spec.UTCOffsetMinutes)
	switch {
	case in && !d.inWindow:
		d.inWindow = true
		d.dropLink(now, true)
	case !in && d.inWindow:
		d.inWindow = false
		d.connectAt, d.backoff = now, 0
	}
}

// maybeConnect starts a connection attempt when one is due.
func (d *device) maybeConnect(now time.Time) {
	if d.connected || d.connecting || d.inWindow || d.connectAt.IsZero() || now.Before(d.connectAt) {
		return
	}
	if !d.reserved {
		if w := d.f.reserve(now); w > 0 {
			d.reserved, d.connectAt = true, now.Add(w)
			return
		}
	}
	d.reserved, d.connectAt, d.connecting = false, time.Time{}, true
	d.gen++
	g := d.gen
	d.f.spawn(func() { d.connect(g) })
}

// connect is one connection attempt, in its own goroutine: the CONNECT,
// then the agent's ota_agent_on_connect (birth, subscriptions, queued
// events, heartbeat, the download or install under way).
func (d *device) connect(g uint64) {
	f := d.f
	l, err := f.dial(f.ctx, dialConfig{addr: f.addr, id: d.spec.ID, token: d.spec.Token,
		keepAlive: uint16(f.t.KeepAlive / time.Second), maxPacket: f.t.BlockSize + blockOverhead, timeout: f.t.ConnectTimeout},
		linkHandler{message: func(topic string, p []byte) { d.onMessage(g, topic, p) }, lost: func(err error) { d.onLost(g, err) }})
	d.mu.Lock()
	if g != d.gen || d.stopped {
		d.mu.Unlock()
		if l != nil {
			l.abort()
			<-l.done()
		}
		return
	}
	now := f.now()
	d.connecting = false
	if err != nil {
		d.connectFailures++
		f.c.connectFailures.Add(1)
		if errors.Is(err, ErrRefused) {
			f.c.refused.Add(1)
		}
		d.lastError = err.Error()
		d.scheduleReconnect(now, true)
		d.rearm(now)
		d.mu.Unlock()
		return
	}
	d.link, d.connected, d.backoff = l, true, 0
	d.connects++
	f.c.connects.Add(1)
	d.brokerSeen = true
	if d.mute {
		d.mu.Unlock()
		return
	}
	d.settling = true
	d.sendBirth()
	d.mu.Unlock()

	if !f.cfg.Load {
		for _, s := range [...]struct {
			topic string
			qos   byte
		}{{"ota/blk", 0}, {"ota/manifest", 1}, {"cmd", 1}} {
			if err := l.subscribe(f.ctx, d.base+s.topic, s.qos); err != nil {
				if errors.Is(err, errSubRefused) {
					// the agent does not look at its SUBACKs either
					f.log.Warn("subscription refused", "device", d.spec.ID, "topic", d.base+s.topic, "err", err)
					continue
				}
				d.onLost(g, err)
				return
			}
		}
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if g != d.gen || d.stopped {
		return
	}
	now = f.now()
	d.settling = false
	d.flushEvents()
	d.sendHeartbeat(now)
	if !f.cfg.Load {
		switch {
		case d.ps.state == wire.StateDownloading && d.dl != nil:
			d.dl.retries = 0
			d.sendRequest(now)
		case d.ps.state == wire.StateVerified && d.ps.installMode == wire.InstallImmediately:
			d.install(now)
		}
	}
	msgs := d.pending
	d.pending = nil
	for _, m := range msgs {
		if g != d.gen {
			break
		}
		d.handle(now, m.topic, m.payload)
	}
	d.tick(now)
	d.rearm(now)
}

// dropLink ends the connection (abort: without a DISCONNECT) and stops
// what needs it.
func (d *device) dropLink(now time.Time, abort bool) {
	if l := d.link; l != nil {
		if abort {
			l.abort()
		}
		d.keepOld(l)
	}
	d.gen++ // late callbacks of the link, or of an attempt under way, do not count
	d.link, d.connected, d.connecting, d.settling, d.pending = nil, false, false, false, nil
	d.stopRequests()
	d.offlineSince = now
}

// keepOld remembers a closed link until its goroutines are done, so that
// Stop can wait for them.
func (d *device) keepOld(l link) {
	d.old = slices.DeleteFunc(d.old, func(o link) bool {
		select {
		case <-o.done():
			return true
		default:
			return false
		}
	})
	d.old = append(d.old, l)
}

// scheduleReconnect sets the next connection attempt: at once after a lost
// connection, after a growing backoff after a failed attempt.
func (d *device) scheduleReconnect(now time.Time, failed bool) {
	if !d.up || d.stopped || d.dead {
		return
	}
	if !failed {
		d.connectAt = now
		return
	}
	t := d.f.t
	if d.backoff == 0 {
		d.backoff = t.ConnectBackoffMin
	} else {
		d.backoff = min(2*d.backoff, t.ConnectBackoffMax)
	}
	jitter := time.Duration(float64(d.backoff) * (0.75 + 0.5*d.rng.Float64()))
	d.connectAt = now.Add(jitter)
}

func (d *device) onLost(g uint64, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if g != d.gen || d.stopped || d.link == nil {
		return
	}
	now := d.f.now()
	if err != nil {
		d.lastError = "connection lost: " + err.Error()
	}
	d.dropLink(now, true)
	d.scheduleReconnect(now, false)
	d.rearm(now)
}

func (d *device) onMessage(g uint64, topic string, payload []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if g != d.gen || !d.connected || d.stopped {
		return
	}
	if d.settling {
		if len(d.pending) < maxPending {
			d.pending = append(d.pending, inbound{topic, payload})
		}
		return
	}
	now := d.f.now()
	d.handle(now, topic, payload)
	d.tick(now)
	d.rearm(now)
}

// handle is the agent's ota_agent_on_message.
func (d *device) handle(now time.Time, topic string, payload []byte) {
	if d.mute || d.f.cfg.Load || !d.up {
		return
	}
	suffix, ok := strings.CutPrefix(topic, d.base)
	if !ok {
		return
	}
	switch suffix {
	case "ota/blk":
		d.onBlock(now, payload)
	case "ota/manifest":
		d.onOffer(now, payload)
	case "cmd":
		d.onCommand(now, payload)
	}
}

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
	Version          string          `json:"version"` // of the running (or last booted) image
	Slot             uint8           `json:"slot"`
	BootReason       wire.BootReason `json:"boot_reason"`
	BootsSinceCommit uint32          `json:"boots_since_commit"`
	SecureVersion    uint32          `json:"secure_version"`
	OTAState         wire.OTAState   `json:"ota_state"`
	Rollout          string          `json:"rollout,omitempty"`
	Target           string          `json:"target,omitempty"`
	Offset           uint64          `json:"offset,omitempty"`
	Size             uint64          `json:"size,omitempty"`

	Connects        int `json:"connects"`
	ConnectFailures int `json:"connect_failures"`
	Births          int `json:"births"`
	Heartbeats      int `json:"heartbeats"`
	// Events are the newest events it sent (up to 32), oldest first.
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
		Hardware: d.spec.Hardware, Version: d.img().version, Slot: d.running, BootReason: d.bootReason,
		BootsSinceCommit: d.ps.bootsSinceCommit, SecureVersion: d.deviceSecure(), OTAState: d.ps.state,
		Rollout: d.ps.rollout, Target: d.ps.version, Offset: d.ps.offset, Size: d.ps.size,
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
	s.Versions[d.img().version]++
	s.Profiles[d.spec.Profile.String()]++
}
