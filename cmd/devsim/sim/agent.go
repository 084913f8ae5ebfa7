package sim

import (
	"bytes"
	"crypto/sha256"
	"encoding"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/Masterminds/semver/v3"

	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/wire"
)

// The agent's state machine (agent-c/src/core/agent.c), function for
// function where the names match. Everything here runs with the device's
// mutex held.

// ---- boot -------------------------------------------------------------

// agentBoot is ota_agent_on_boot after the port's boot state is known.
func (d *device) agentBoot(now time.Time) {
	ps := &d.ps
	d.loadEvents()
	d.capWindow()
	ps.bootsSinceCommit++
	if d.hwReason == wire.BootWatchdog {
		ps.wdtSinceCommit++
	}
	st, flags := ps.state, ps.flags
	running, _ := d.slotState(ps.kind)
	moved := running != ps.targetSlot // not the update's slot
	busy := st == wire.StateInstalling || st == wire.StateRebooting || st == wire.StateTrial
	if ps.kind == kindFirmware && moved && (flags&flagRollbackReq != 0 || st == wire.StateTrial && flags&flagConfirmed != 0) {
		// back on the old image after a rollback asked for, or after the
		// new image was confirmed
		d.rolledBack(now)
		return
	}
	if d.imgState == odPending && !(ps.kind == kindFirmware && busy && !moved) {
		// firmware waiting for confirmation that we know nothing about
		ps.kind, ps.targetSlot = kindFirmware, d.running
		d.newTrial()
		ps.state, st, moved, busy = wire.StateRebooting, wire.StateRebooting, false, true
	}
	switch {
	case busy && moved:
		if st != wire.StateInstalling {
			d.rolledBack(now)
			return
		}
		ps.state = wire.StateVerified // reset during activation: redo it
	case busy && st == wire.StateTrial:
		d.trialBoot(now)
		return
	case busy: // the slot's first start
		if ps.kind == kindFirmware {
			d.bootReason = wire.BootOTAReboot
		}
		d.trialStartNow(now)
		return
	case st == wire.StateRolledBack && ps.kind == kindFirmware && !moved:
		// the bootloader started the image rolled back from again
		d.rollBack(now, rAbandoned)
		return
	}
	if ps.state == wire.StateDownloading {
		d.startDownload(now)
	}
}

// rolledBack: the update's previous slot is in use again. After a power
// loss it is not the image's fault: the same update may be tried again.
func (d *device) rolledBack(now time.Time) {
	ps := &d.ps
	asked := ps.flags&flagRollbackReq != 0
	power := !asked && (d.hwReason == wire.BootPowerOn || d.hwReason == wire.BootBrownout)
	if !asked {
		ps.err = wire.ErrCodeBootFailure
		why := rNotConfirmed
		if power {
			why = rPowerLost
		}
		d.event(now, wire.EvRollbackTriggered, why)
	}
	if ps.kind == kindFirmware {
		// The old image may run pending-verify (a rollback after the
		// confirmation makes it new again): confirm it at once, then make
		// the abandoned one unbootable.
		d.bootReason = wire.BootRollback
		if d.imgState != odPending || d.od.markValid() {
			d.od.invalidateInactive(d.running)
		}
	}
	ps.flags = flagIgnoreOffer
	if power {
		ps.flags = 0
	}
	ps.bootLog, ps.wdtLog = nil, nil
	d.step(now, wire.StateRolledBack, wire.EvRollbackCompleted, rPS)
	d.f.c.rollbacks.Add(1)
}

// trialBoot is another boot of the slot on trial: the reboot and watchdog
// triggers.
func (d *device) trialBoot(now time.Time) {
	ps, t := &d.ps, d.f.t
	secs := ps.trial.Truncate(time.Second) // the agent logs whole seconds
	d.trialBase = ps.trial
	if ps.flags&flagRollbackReq != 0 {
		d.rollBack(now, rRetried) // the rollback did not happen
		return
	}
	logPush(&ps.bootLog, secs)
	if d.hwReason == wire.BootWatchdog {
		logPush(&ps.wdtLog, secs)
	}
	switch {
	case countSince(ps.bootLog, ps.trial, t.RebootWindow) > t.MaxReboots:
		d.failTrial(now, rReboots)
	case countSince(ps.wdtLog, ps.trial, t.WDTWindow) > t.MaxWDTResets:
		d.failTrial(now, rWDT)
	}
}

func logPush(log *[]time.Duration, t time.Duration) {
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

// trialStartNow: the update's slot has just been started (the new image
// booted, or a configuration put in use); its trial begins.
func (d *device) trialStartNow(now time.Time) {
	logPush(&d.ps.bootLog, 0)
	d.trialBase, d.trialStart = 0, now
	d.brokerSeen, d.hbSent = d.connected, false
	d.step(now, wire.StateTrial, wire.EvRebootCompleted, rNone)
}

// ---- events -------------------------------------------------------------

// results are the events kept in the kv store until acknowledged.
func isResult(c wire.EventCode) bool {
	switch c {
	case wire.EvInstallCompleted, wire.EvRebootCompleted, wire.EvHealthOK, wire.EvHealthFailed,
		wire.EvRollbackTriggered, wire.EvRollbackCompleted, wire.EvRejected:
		return true
	}
	return false
}

// event reports code about the current update.
func (d *device) event(now time.Time, code wire.EventCode, why reason) {
	d.eventFor(now, code, why, d.ps.rollout, d.ps.version)
}

// eventPlain reports code about no update in particular.
func (d *device) eventPlain(now time.Time, code wire.EventCode, why reason) {
	d.eventFor(now, code, why, "", "")
}

// eventFor queues an event and publishes what is queued when connected.
// Progress is not queued behind a waiting event. When the queue is full, an
// event that is not a result is dropped, a result makes room by dropping
// the oldest.
func (d *device) eventFor(now time.Time, code wire.EventCode, why reason, rollout, version string) {
	if code == wire.EvDownloadProgress && len(d.evq) > 1 {
		return // others wait: progress now would be old when it goes
	}
	ev := eventMsg{Code: code, Rollout: rollout, Version: version, Detail: reasons[why].detail,
		DeviceTime: uint64(now.Unix())}
	if code >= wire.EvDownloadStarted && code <= wire.EvDownloadCompleted {
		p := d.pct
		ev.Progress = &p
	}
	ev.Error = reasons[why].err
	if ev.Error == errPS {
		ev.Error = d.ps.err
	}
	q := queued{b: encode(ev), code: code, err: ev.Error, rollout: rollout, detail: ev.Detail}
	result := isResult(code)
	for d.evqBytes+1+len(q.b) > eventQueueBytes {
		if len(d.evq) == 0 || !result {
			d.f.c.eventsLost.Add(1)
			return
		}
		d.evqDrop(now)
		d.f.c.eventsLost.Add(1)
	}
	d.evq = append(d.evq, q)
	d.evqBytes += 1 + len(q.b)
	if result {
		d.saveEvents()
	}
	d.flushEvents(now)
}

// saveEvents writes the queue to the kv store.
func (d *device) saveEvents() {
	d.evSaved = len(d.evq) > 0
	d.kvEvents = slices.Clone(d.evq)
}

// keepEvents saves the queue before a restart.
func (d *device) keepEvents() {
	if len(d.evq) > 0 {
		d.saveEvents()
	}
}

// loadEvents reads the events kept before the reset.
func (d *device) loadEvents() {
	d.evq, d.evqBytes = slices.Clone(d.kvEvents), 0
	for _, q := range d.evq {
		d.evqBytes += 1 + len(q.b)
	}
	d.evSaved = len(d.evq) > 0
}

// evqDrop drops the first event; the next may go at once.
func (d *device) evqDrop(now time.Time) {
	d.evInflight = false // a late PUBACK for it is ignored
	d.evAt = now
	d.evqBytes -= 1 + len(d.evq[0].b)
	d.evq[0] = queued{}
	d.evq = d.evq[1:]
	if len(d.evq) == 0 {
		d.evq = nil
	}
	if d.evSaved {
		d.saveEvents()
	}
}

// flushEvents publishes the first event, one at a time.
func (d *device) flushEvents(now time.Time) {
	if !d.connected || d.settling || len(d.evq) == 0 || d.evInflight || now.Before(d.evAt) {
		return
	}
	q := d.evq[0]
	id, ok := d.publish("ev", q.b, 1)
	if !ok {
		return
	}
	d.evInflight, d.evID, d.evAt = true, id, now.Add(d.f.t.EventAck)
	d.f.c.events.Add(1)
	if len(d.history) == historyLen {
		d.history = slices.Delete(d.history, 0, 1)
	}
	d.history = append(d.history, SentEvent{Code: q.code, Error: q.err, Rollout: q.rollout, Detail: q.detail})
}

// onPuback is ota_agent_on_puback: the PUBACK of the event in flight.
func (d *device) onPuback(now time.Time, id uint16, code byte) {
	if !d.evInflight || id != d.evID || len(d.evq) == 0 {
		return
	}
	d.evInflight = false
	switch code {
	case 0x80, 0x83, 0x97: // the broker could not record it now: again later
		d.evBackoff = min(max(2*d.evBackoff, d.f.t.EventRetry), d.f.t.EventRetryMax)
		d.evAt = now.Add(d.evBackoff)
		return
	}
	if code >= 0x80 {
		d.f.log.Warn("event refused by the broker", "device", d.spec.ID, "reason", code)
	}
	d.evBackoff = 0
	d.evqDrop(now) // delivered, or refused for good: resending cannot help
	d.flushEvents(now)
}

// setState enters state st; a new state is also reported at once in a
// heartbeat, so the broker sees a commit when it happens.
func (d *device) setState(now time.Time, st wire.OTAState) {
	old := d.ps.state
	d.ps.state = st
	if old != st {
		d.sendHeartbeat(now)
	}
}

// step reports code with why and enters state st (the event is queued
// before the state is persisted).
func (d *device) step(now time.Time, st wire.OTAState, code wire.EventCode, why reason) {
	d.event(now, code, why)
	d.setState(now, st)
}

// ---- outgoing messages ------------------------------------------------

// publish publishes on the device's topic suffix; for QoS 1 it returns the
// packet identifier.
func (d *device) publish(suffix string, payload []byte, qos byte) (uint16, bool) {
	if d.link == nil || !d.connected {
		return 0, false
	}
	id, err := d.link.publish(d.base+suffix, payload, qos)
	if err != nil {
		d.lastError = "publish " + suffix + ": " + err.Error()
		return 0, false
	}
	return id, true
}

func (d *device) sendBirth() {
	b := wire.Birth{FirmwareVersion: d.firmware().version, Hardware: d.spec.Hardware, Bootloader: d.spec.Bootloader,
		Slot: d.running, BootReason: d.bootReason, BootsSinceCommit: d.ps.bootsSinceCommit, OTAState: d.ps.state,
		AgentVersion: AgentVersion, Connectivity: d.spec.Connectivity, UTCOffsetMinutes: d.spec.UTCOffsetMinutes,
		SecureVersion: d.deviceSecure(), ReplayGuard: d.ps.guard[kindFirmware]}
	if _, ok := d.publish("birth", b.Encode(), 1); ok {
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
	if _, ok := d.publish("hb", hb.Encode(), 0); ok {
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
	dl.retryWait = false
	dl.reqID++
	req := wire.BlockRequest{Digest: ps.digest[:], Offset: dl.next, Size: ps.blockSize, Count: count, RequestID: dl.reqID}
	dl.reqCount, dl.reqGot, dl.reqActive = count, 0, true
	dl.reqDeadline = now.Add(d.f.t.RequestTimeout)
	if _, ok := d.publish("ota/get", req.Encode(), 0); ok {
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

// capWindow: the broker's window (offer key 6, kept with the download)
// caps the agent's.
func (d *device) capWindow() {
	d.windowMax = d.f.t.Window
	if d.ps.window != 0 {
		d.windowMax = min(d.ps.window, d.f.t.Window)
	}
	d.window = min(d.window, d.windowMax)
}

// giveUp ends the current download or verified image and reports it.
// Cancelled: back to idle. Failed: state failed, and the same
// rollout+digest is not tried again when offered again.
func (d *device) giveUp(now time.Time, why reason) {
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
	d.step(now, st, wire.EvDownloadFailed, why)
}

// decile is the completed tenths of the image in percent, 0 to 90.
func decile(off, size uint64) uint8 {
	if size < 10 {
		return 0
	}
	return uint8(10 * min(off/(size/10), 9))
}

// startDownload prepares the hash from ps.offset (0 for a new download; a
// resumed one goes on from the persisted hash state).
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

// persistOffset records the download offset with the hash state at it. The
// agent rounds the offset down to 16 bytes (flash encryption keeps a
// partial 16-byte block in RAM); the simulator, which keeps the hash state
// at the offset rather than re-reading the slot, persists only offsets that
// need no rounding.
func (d *device) persistOffset() {
	if d.dl.next%16 != 0 {
		return
	}
	if m, ok := d.dl.hash.(encoding.BinaryMarshaler); ok {
		if b, err := m.MarshalBinary(); err == nil {
			d.ps.offset, d.ps.hashAt = d.dl.next, b
		}
	}
}

// retryLater: a failed attempt (a timeout, or a block error that may
// pass): back off, or give up after MaxRetries consecutive failures that
// count.
func (d *device) retryLater(now time.Time, atLeast time.Duration, counts bool) {
	dl, t := d.dl, d.f.t
	dl.reqActive = false
	if counts {
		dl.retries++
		if dl.retries > t.MaxRetries {
			d.giveUp(now, rRetries)
			return
		}
	}
	backoff := t.BackoffMin
	for i := 1; i < dl.retries && backoff < t.BackoffMax; i++ {
		backoff *= 2
	}
	dl.retryWait, dl.retryAt = true, now.Add(min(max(backoff, atLeast), t.BackoffMax))
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
			d.retryLater(now, time.Duration(be.RetryAfterMS)*time.Millisecond, false) // the broker asked to wait
		case wire.BlockNotAssigned:
			d.giveUp(now, rNotAssigned)
		case wire.BlockUnknownImage:
			d.giveUp(now, rUnknownImage)
		case wire.BlockOutOfRange:
			d.giveUp(now, rOffset)
		default:
			d.giveUp(now, rBrokerRefused)
		}
		return
	}
	switch {
	case b.RequestID != dl.reqID, b.Offset != dl.next:
		return // duplicate or out of order: wait, or re-request
	case b.ImageSize != ps.size:
		d.giveUp(now, rSize)
		return
	case len(b.Data) == 0 || uint64(len(b.Data)) > ps.size-b.Offset:
		return
	}
	if b.Offset < simHeaderLen && uint64(len(ps.header)) == b.Offset {
		n := min(uint64(len(b.Data)), simHeaderLen-b.Offset)
		ps.header = append(ps.header, b.Data[:n]...)
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
			d.event(now, wire.EvDownloadProgress, rNone)
		}
		if dl.reqCount == 0 || dl.next-ps.offset >= persistEvery {
			d.persistOffset()
		}
		if dl.reqCount == 0 {
			// the whole window came: grow back towards the most
			if d.window < d.windowMax {
				d.window++
			}
			if d.connected {
				d.nextRequest(now)
			}
		}
		return
	}
	// complete: the digest decides before anything is installed
	dl.reqActive = false
	var sum manifest.Digest
	dl.hash.Sum(sum[:0])
	if sum == ps.digest {
		ps.offset, ps.hashAt = ps.size, nil
		d.pct = 100
		d.dl = nil
		d.step(now, wire.StateVerified, wire.EvDownloadCompleted, rNone)
		if ps.installMode == wire.InstallImmediately {
			d.install(now)
		}
		return
	}
	if ps.refetches < d.f.t.DigestRetries {
		// a corrupted block got through: fetch it all again
		ps.refetches++
		ps.offset, ps.hashAt, ps.header = 0, nil, nil
		d.startDownload(now)
		d.step(now, wire.StateDownloading, wire.EvDownloadStarted, rRefetch)
		if d.connected {
			d.sendRequest(now)
		}
		return
	}
	d.giveUp(now, rDigest)
}

// install puts the verified image in use: a firmware image in the other
// slot and a reboot into it, a configuration swapped in (a reboot only if
// it needs one).
func (d *device) install(now time.Time) {
	ps := &d.ps
	ps.installMode = wire.InstallImmediately // a reset during activation installs again
	d.step(now, wire.StateInstalling, wire.EvInstallStarted, rNone)
	restart := true
	if ps.kind == kindFirmware {
		d.images[ps.targetSlot] = d.newImage()
		d.od.setBoot(ps.targetSlot)
	} else {
		b := d.newBlob()
		d.cfg[ps.kind-1].activate(ps.targetSlot, b, b.restart)
		restart = b.restart
	}
	ps.header = nil
	d.event(now, wire.EvInstallCompleted, rNone)
	d.newTrial()
	if !restart {
		d.trialStartNow(now) // in use now, no reboot
		return
	}
	d.step(now, wire.StateRebooting, wire.EvRebootStarted, rNone)
	d.restart(now)
}

// newImage is the firmware image just downloaded: what its simulated image
// header says, else the manifest's version and the device's profile.
func (d *device) newImage() *image {
	ps := &d.ps
	im := &image{version: ps.version, secure: ps.targetSec}
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
			return im
		}
	}
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

// newBlob is the configuration just downloaded, as agent-c's simulated
// application reads it.
func (d *device) newBlob() *blob {
	h := d.ps.header
	return &blob{version: d.ps.version, failHealth: bytes.HasPrefix(h, []byte("#fail-health")),
		restart: bytes.HasPrefix(h, []byte("#restart"))}
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
		d.eventPlain(now, wire.EvRejected, rBadOffer)
		d.f.c.rejected.Add(1)
		return
	}
	if d.checkPending {
		d.checkPending = false
		d.eventPlain(now, wire.EvCheckCompleted, rNone)
	}
	ps := &d.ps
	ps.window = min(o.MaxWindow, 255)
	d.capWindow()
	st := ps.state
	// no new update while one is being installed or tried
	if st == wire.StateInstalling || st == wire.StateRebooting || st == wire.StateTrial {
		return
	}
	if o.RolloutID == "" {
		if st == wire.StateDownloading || st == wire.StateVerified {
			d.giveUp(now, rWithdrawn)
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
			ps.installMode = o.InstallMode
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
		d.eventFor(now, wire.EvRejected, why, o.RolloutID, version)
		d.f.c.rejected.Add(1)
		return
	}
	if st == wire.StateDownloading || st == wire.StateVerified {
		d.giveUp(now, rSuperseded)
	}
	m := &s.Manifest
	ps.rollout, ps.version, ps.digest, ps.size = o.RolloutID, m.Version, m.ImageDigest, m.ImageSize
	ps.offset, ps.hashAt, ps.header = 0, nil, nil
	ps.blockSize = d.f.t.BlockSize // or the offer's, when smaller
	if o.BlockSize != 0 && o.BlockSize < ps.blockSize {
		ps.blockSize = o.BlockSize
	}
	ps.installMode, ps.seq, ps.targetSec, ps.kind = o.InstallMode, m.Sequence, m.SecureVersion, uint8(m.Kind)
	running, _ := d.slotState(ps.kind)
	ps.targetSlot = running ^ 1
	ps.err, ps.flags, ps.refetches = 0, 0, 0
	d.window = d.windowMax
	d.startDownload(now)
	d.step(now, wire.StateDownloading, wire.EvDownloadStarted, rNone)
	if d.connected {
		d.sendRequest(now)
	}
}

// checkManifest runs the checks after the signature, in the agent's order,
// on a manifest whose signature is verified. Each kind has its own version
// and replay guard; the secure version is the firmware's.
func (d *device) checkManifest(m *manifest.Manifest) reason {
	if !m.HasHardware(d.spec.Hardware) {
		return rHardware
	}
	if m.MinBootloader != "" {
		if c, ok := compareVersions(d.spec.Bootloader, m.MinBootloader); !ok || c < 0 {
			return rBootloader
		}
	}
	k := uint8(m.Kind)
	if k >= kinds {
		return rKind
	}
	if len(m.Version) > maxVersionLen {
		return rVersionLong
	}
	cur := d.firmware().version
	if k != kindFirmware {
		cur = d.ps.kindVersion[k-1]
		if cur == "" {
			cur = "0.0.0" // no configuration yet
		}
	}
	c, ok := compareVersions(m.Version, cur)
	if !ok {
		return rBadVersion
	}
	if c <= 0 && !d.spec.AllowDowngrade {
		if c == 0 {
			return rSameVersion
		}
		return rDowngrade
	}
	if m.Sequence < d.ps.guard[k] {
		return rSequence
	}
	if k == kindFirmware && m.SecureVersion < d.deviceSecure() {
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

func (d *device) checkNow(now time.Time) {
	d.checkPending = true
	d.eventPlain(now, wire.EvCheckStarted, rNone)
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
			d.giveUp(now, rCancelCmd)
		case st == wire.StateVerified:
			d.install(now)
		default:
			d.ps.installMode = wire.InstallImmediately // install as soon as verified
		}
	case wire.VerbCheck:
		d.checkNow(now)
	case wire.VerbReboot:
		d.restart(now)
	}
}

// ---- trial --------------------------------------------------------------

// trialClock is the trial's run time, over boots.
func (d *device) trialClock(now time.Time) time.Duration { return d.trialBase + now.Sub(d.trialStart) }

// confirm is the port's confirm for kind.
func (d *device) confirm(kind uint8) bool {
	if kind == kindFirmware {
		return d.od.markValid()
	}
	d.cfg[kind-1].state = odValid
	return true
}

// portRollback is the port's rollback for the update's kind: a firmware
// rollback restarts the device (and returns true); false when no rollback
// is possible.
func (d *device) portRollback(now time.Time, kind uint8) bool {
	if kind != kindFirmware {
		d.cfg[kind-1].rollback()
		return true
	}
	ok := d.imagesOK()
	if st, _ := d.od.stateOf(d.running); st == odPending {
		if !d.od.markInvalid(ok) { // esp_ota_mark_app_invalid_rollback_and_reboot
			return false
		}
	} else {
		// after the confirmation: the other slot boots next, new again
		if !ok[d.running^1] {
			return false
		}
		d.od.setBoot(d.running ^ 1)
	}
	d.reset(now, wire.BootSoftware)
	return true
}

// rollBack goes back to the update's previous slot.
func (d *device) rollBack(now time.Time, why reason) {
	ps := &d.ps
	if e := reasons[why].err; e != errPS {
		ps.err = e
	}
	ps.flags |= flagRollbackReq
	ps.trial = d.trialClock(now)
	d.step(now, ps.state, wire.EvRollbackTriggered, why)
	d.keepEvents()
	if d.portRollback(now, ps.kind) {
		if ps.kind != kindFirmware {
			d.rolledBack(now) // the previous one is in use already
		}
		return
	}
	if ps.kind == kindFirmware && d.imgState == odPending {
		d.restart(now) // unconfirmed: the bootloader reverts
		return
	}
	// confirmed and no way back: stay on this image, report it
	ps.flags = ps.flags&^flagRollbackReq | flagIgnoreOffer
	d.step(now, wire.StateFailed, wire.EvHealthFailed, rNoTarget)
}

func (d *device) failTrial(now time.Time, why reason) {
	d.event(now, wire.EvHealthFailed, why)
	d.rollBack(now, why)
}

func (d *device) trialTick(now time.Time) {
	ps, t := &d.ps, d.f.t
	healthy := d.appHealthy(now)
	clock := d.trialClock(now)
	k := ps.kind
	if ps.flags&flagConfirmed == 0 {
		switch {
		case d.brokerSeen && d.hbSent && healthy:
			if !d.confirm(k) {
				d.rollBack(now, rConfirm)
				return
			}
			if k == kindFirmware {
				d.imgState = odValid
			}
			ps.flags |= flagConfirmed
			ps.trial, d.trialSaved = clock, now
			d.step(now, wire.StateTrial, wire.EvHealthOK, rNone)
		case clock >= t.TrialTimeout:
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
	if clock < t.Probation && now.Sub(d.trialSaved) < t.TrialPersist {
		return
	}
	d.trialSaved, ps.trial = now, clock
	if clock < t.Probation {
		return // the trial clock persisted
	}
	// committed: the guard and the secure version (or the kind's version)
	// move up, the counters restart
	if k == kindFirmware {
		ps.secureVersion = max(ps.secureVersion, ps.targetSec)
	} else {
		ps.kindVersion[k-1] = ps.version
	}
	ps.guard[k] = ps.seq
	ps.bootsSinceCommit, ps.wdtSinceCommit, ps.bootLog, ps.wdtLog = 0, 0, nil, nil
	ps.flags |= flagIgnoreOffer
	d.setState(now, wire.StateCommitted)
	d.f.c.commits.Add(1)
	d.sendBirth()   // its secure version and replay guard changed
	d.checkNow(now) // the next update may be waiting
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
