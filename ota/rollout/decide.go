package rollout

import (
	"context"
	"fmt"
	"hash/maphash"
	"math"
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/otamq/otamq/ota/delivery"
	"github.com/otamq/otamq/ota/event"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/store"
	"github.com/otamq/otamq/ota/wire"
)

// onUpdate decides what a device's update event does to its member m.
func (e *Engine) onUpdate(r *run, m *member, u event.Update) (*change, bool) {
	ev := u.Event
	now := u.At.UnixNano()
	c := &change{r: r, m: *m, expect: m.state}
	n := &c.m
	to := func(s State, reason string) { n.state, n.at, c.reason = s, now, reason }
	st := m.state
	why := func() string {
		s := ""
		if ev.Error != 0 {
			s = ev.Error.String()
		}
		if ev.Detail != "" {
			if s != "" {
				s += ": "
			}
			s += ev.Detail
		}
		if s == "" {
			return ""
		}
		return " (" + s + ")"
	}
	switch ev.Code {
	case wire.EvDownloadStarted, wire.EvDownloadProgress:
		if st != Offered {
			return nil, false
		}
		to(Downloading, "")
	case wire.EvDownloadCompleted:
		if st != Offered && st != Downloading {
			return nil, false
		}
		to(Verified, "")
	case wire.EvDownloadFailed:
		if st.Done() || st >= Installing || ev.Error == wire.ErrCodeCancelled {
			return nil, false
		}
		if int(m.tries) < *r.spec.Retries {
			n.tries++
			to(Eligible, fmt.Sprintf("download failed%s; offered again (retry %d of %d)", why(), n.tries, *r.spec.Retries))
		} else {
			to(Failed, fmt.Sprintf("download failed%s; no retries left", why()))
		}
	case wire.EvInstallStarted:
		if st.Done() || st >= Installing {
			return nil, false
		}
		to(Installing, "")
	case wire.EvInstallCompleted:
		if ev.Error == 0 || st.Done() {
			return nil, false
		}
		to(Failed, "install failed"+why())
	case wire.EvRebootStarted:
		if st.Done() || st >= Rebooting {
			return nil, false
		}
		e.baseline(n)
		to(Rebooting, "")
	case wire.EvRebootCompleted:
		if st.Done() || st >= Trial {
			return nil, false
		}
		if n.connects == 0 {
			e.baseline(n)
		}
		to(Trial, "")
	case wire.EvHealthOK:
		if st.Done() || st < Offered || m.okAt != 0 {
			return nil, false
		}
		if n.connects == 0 {
			e.baseline(n)
		}
		n.okAt = now
		to(Trial, "")
	case wire.EvHealthFailed:
		if st.Done() {
			return nil, false
		}
		n.flags |= fHealth
		to(Failed, "health check failed"+why())
	case wire.EvRollbackCompleted:
		if st == RolledBack && m.flags&fBroker != 0 && m.flags&fHealth == 0 && ev.Error == wire.ErrCodeHealthCheck {
			// The broker saw the rollback in the birth, which comes
			// before the device's own report after a reconnect: the
			// report still says that failing health made it roll back.
			n.flags |= fHealth
			c.reason = "rolled back" + why()
			return c, true
		}
		if st == RolledBack || st == Skipped || st == Cancelled || st < Installing && !st.Done() {
			return nil, false
		}
		if ev.Error == wire.ErrCodeHealthCheck {
			n.flags |= fHealth // a health failure too, when its health made it roll back
		}
		to(RolledBack, "rolled back"+why())
	case wire.EvRejected:
		if st.Done() {
			return nil, false
		}
		to(Failed, "refused by the device"+why())
	default:
		return nil, false
	}
	return c, true
}

// baseline notes the device's connections and Last Wills so far, to judge
// what happens after its reboot.
func (e *Engine) baseline(m *member) {
	if v, ok := e.reg.Get(m.id); ok {
		m.connects, m.wills = uint32(v.Status.Connects), uint32(v.Status.Wills)
		if m.connects == 0 {
			m.connects = 1
		}
	}
}

func (e *Engine) takeDirty() map[string]uint8 {
	e.dirtyMu.Lock()
	defer e.dirtyMu.Unlock()
	if len(e.dirty) == 0 {
		return nil
	}
	d := e.dirty
	e.dirty = map[string]uint8{}
	return d
}

// Pass runs one evaluation of every rollout: schedules, waves, thresholds,
// devices' deadlines and probations, what the broker saw of them, offers
// within the rate, install commands inside windows. Run calls it; tests
// may call it directly.
func (e *Engine) Pass(ctx context.Context) error {
	// The offers of each batch go out on goroutines of the pass's own, so
	// that the commit of the next batch (its fsync) runs meanwhile; the
	// pass returns once they are all sent.
	p := startPusher(e.dlv.Push, pushers())
	defer p.wait()
	now := e.o.Clock.Now()
	dirty := e.takeDirty()
	e.mu.RLock()
	runs := make([]*run, 0, len(e.runs))
	for _, r := range e.runs {
		if !finished(r.rec.State) || r.hasInFlight() {
			runs = append(runs, r)
		}
	}
	e.mu.RUnlock()
	sort.Slice(runs, func(i, j int) bool { return runs[i].rec.ID < runs[j].rec.ID })
	var first error
	for _, r := range runs {
		if err := e.step(ctx, r, now, dirty, p); err != nil && first == nil {
			first = fmt.Errorf("rollout %s: %w", r.rec.ID, err)
		}
	}
	e.summaries(now)
	e.evict()
	return first
}

func (r *run) hasInFlight() bool {
	for i := range r.counts {
		for s := Offered; s < Succeeded; s++ {
			if r.counts[i][s] > 0 {
				return true
			}
		}
	}
	return false
}

// step evaluates one rollout: first the devices' results (deadlines,
// probations, what the broker saw), then the rollout (schedule, waves,
// thresholds) on those results, then new offers and install commands.
func (e *Engine) step(ctx context.Context, r *run, now time.Time, dirty map[string]uint8, p *pusher) error {
	for _, ph := range []phase{resultsPhase, rolloutPhase, offersPhase} {
		if ph == rolloutPhase {
			if err := e.stepRollout(ctx, r, now); err != nil {
				return err
			}
			continue
		}
		limit := firstBatch
		for d := dirty; ; d = nil {
			more, err := e.stepMembers(ctx, r, now, d, ph, p, limit)
			if err != nil {
				return err
			}
			if !more {
				break
			}
			limit = min(2*limit, maxBatch)
		}
	}
	return nil
}

// phase is a part of a rollout's pass.
type phase int

const (
	resultsPhase phase = iota
	rolloutPhase
	offersPhase
)

// pending is a rollout event to publish once its decision is committed.
type pending struct {
	kind, wave, reason, actor string
	alarm                     *Alarm // a threshold warned or crossed
}

// stepRollout moves the rollout itself: schedule, waves, thresholds.
func (e *Engine) stepRollout(ctx context.Context, r *run, now time.Time) error {
	e.mu.RLock()
	rec := r.rec.clone()
	updated := rec.Updated
	evs := e.decideRollout(r, rec, now)
	e.mu.RUnlock()
	if len(evs) == 0 {
		return nil
	}
	var cancels []*change
	if rec.State == StateEnded && r.spec.Schedule.AtEnd == AtEndCancel {
		e.mu.RLock()
		cancels = e.cancellations(r, now, "the schedule ended (at_end: cancel)")
		e.mu.RUnlock()
	}
	var pushed []string
	err := e.db.Update(ctx, func(tx store.Tx) error {
		pushed = pushed[:0]
		cur, err := readRecord(tx, rec.ID)
		if err != nil {
			return err
		}
		if !cur.Updated.Equal(updated) {
			return errStale // an operator changed it meanwhile: decide again next pass
		}
		if err := e.putRecord(tx, r, rec); err != nil {
			return err
		}
		pushed, err = e.commitChanges(tx, cancels, now)
		return err
	})
	if err == errStale {
		return nil
	}
	if err != nil {
		return err
	}
	e.dlv.Push(pushed)
	for _, p := range evs {
		if p.alarm != nil {
			e.o.Recorder.Alarm(p.alarm.Kind, p.alarm.Level)
		}
		e.publish(rec, p.kind, p.wave, p.reason, p.actor)
	}
	return nil
}

var errStale = fmt.Errorf("rollout changed meanwhile")

// decideRollout changes rec (a copy of r's) and returns the events to
// publish; none means no change. Callers hold e.mu for reading.
func (e *Engine) decideRollout(r *run, rec *record, now time.Time) []pending {
	var evs []pending
	sp := r.spec
	switch rec.State {
	case StateScheduled:
		if sp.Schedule.Start != nil && now.Before(*sp.Schedule.Start) {
			return nil
		}
		rec.State = StateRunning
		evs = append(evs, pending{kind: "running", reason: "the schedule's start came"})
	case StateRunning, StatePaused:
	default:
		return nil
	}
	if end := sp.Schedule.End; end != nil && !now.Before(*end) {
		rec.State, rec.Ended, rec.Reason = StateEnded, now.UTC(), "the schedule ended (at_end: "+sp.Schedule.AtEnd+")"
		for i := range rec.Waves {
			if rec.Waves[i].State != WavePassed {
				rec.Waves[i].State = WaveStopped
			}
		}
		return append(evs, pending{kind: "ended", reason: rec.Reason})
	}
	autoResumable := rec.State == StatePaused && rec.PausedBy == PauseThreshold && sp.AutoResume
	if rec.State == StateRunning || autoResumable {
		breach := ""
		var crossed *Alarm
		for wi := range rec.Waves {
			w := &rec.Waves[wi]
			if w.State == WavePending {
				continue
			}
			for _, a := range r.judge(wi, w, now) {
				key := a.Kind + "/" + a.Level + "/" + a.Slice
				if a.Level == "pause" {
					if breach == "" {
						breach = a.Message
						if rec.State == StateRunning {
							rec.Alarms = appendAlarm(rec.Alarms, a)
							crossed = &a
						}
					}
					continue
				}
				if !containsStr(w.Warned, key) {
					w.Warned = append(w.Warned, key)
					rec.Alarms = appendAlarm(rec.Alarms, a)
					evs = append(evs, pending{kind: "warned", wave: w.Name, reason: a.Message, alarm: &a})
				}
			}
		}
		switch {
		case breach != "" && rec.State == StateRunning:
			rec.State, rec.PausedBy, rec.Reason = StatePaused, PauseThreshold, breach
			return append(evs, pending{kind: "paused", reason: breach, alarm: crossed})
		case breach == "" && autoResumable:
			rec.State, rec.PausedBy, rec.Reason = StateRunning, "", ""
			evs = append(evs, pending{kind: "resumed", reason: "the threshold is no longer crossed (auto_resume)", actor: "auto"})
		case breach != "":
			return evs // still paused
		}
	}
	if rec.State != StateRunning {
		return evs
	}
	for cw := r.current(rec); ; cw++ {
		if cw == len(rec.Waves) {
			rec.State, rec.Ended, rec.Reason = StateCompleted, now.UTC(), ""
			return append(evs, pending{kind: "completed"})
		}
		w := &rec.Waves[cw]
		if w.State == WavePending {
			w.State, w.Started = WaveRunning, now.UTC()
			evs = append(evs, pending{kind: "wave_started", wave: w.Name})
		}
		c := &r.counts[cw]
		total := c.total()
		if total == 0 {
			w.State, w.Passed = WavePassed, now.UTC()
			evs = append(evs, pending{kind: "wave_passed", wave: w.Name, reason: "no device"})
			continue
		}
		if of(c[Succeeded], total) >= sp.Success {
			if w.Reached.IsZero() {
				w.State, w.Reached = WaveBaking, now.UTC()
				evs = append(evs, pending{kind: "wave_reached", wave: w.Name,
					reason: fmt.Sprintf("%d of %d succeeded; baking until %s", c[Succeeded], total, now.Add(sp.Bake.D()).UTC().Format(time.RFC3339))})
			}
			if !now.Before(w.Reached.Add(sp.Bake.D())) {
				w.State, w.Passed = WavePassed, now.UTC()
				evs = append(evs, pending{kind: "wave_passed", wave: w.Name,
					reason: fmt.Sprintf("%d of %d succeeded", c[Succeeded], total)})
				continue
			}
			return evs
		}
		if w.State == WaveBaking {
			// A result after the share was reached took it below again.
			w.State, w.Reached = WaveRunning, time.Time{}
			evs = append(evs, pending{kind: "wave_started", wave: w.Name, reason: "below the success share again"})
		}
		if c.open() == 0 {
			msg := fmt.Sprintf("wave %s ended with %s succeeded (%d of %d), below the success share %s",
				w.Name, of(c[Succeeded], total), c[Succeeded], total, sp.Success)
			rec.State, rec.PausedBy, rec.Reason = StatePaused, PauseSuccess, msg
			return append(evs, pending{kind: "paused", wave: w.Name, reason: msg})
		}
		return evs
	}
}

func containsStr(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func appendAlarm(list []Alarm, a Alarm) []Alarm {
	list = append(list, a)
	if len(list) > maxAlarms {
		list = list[len(list)-maxAlarms:]
	}
	return list
}

// current returns the index of the first wave that has not passed.
func (r *run) current(rec *record) int {
	for i, w := range rec.Waves {
		if w.State != WavePassed {
			return i
		}
	}
	return len(rec.Waves)
}

// total counts the devices taking part (not skipped, not cancelled).
func (c *counter) total() int {
	n := 0
	for s := Eligible; s < numStates; s++ {
		if s != Skipped && s != Cancelled {
			n += c[s]
		}
	}
	return n
}

// open counts devices still to be offered or in flight.
func (c *counter) open() int {
	n := 0
	for s := Eligible; s < Succeeded; s++ {
		n += c[s]
	}
	return n
}

func (c *counter) judged() int { return c[Succeeded] + c[Failed] + c[RolledBack] + c[TimedOut] }

// judge evaluates the thresholds of wave wi: the whole wave, then each
// hardware and region slice of it. Counts are taken since the wave's
// base (the results an operator's resume acknowledged).
func (r *run) judge(wi int, w *wave, now time.Time) []Alarm {
	t := r.spec.Thresholds
	var out []Alarm
	eval := func(slice string, c *counter, need int) {
		base := w.Base[slice]
		judged, rb, health := c.judged()-base[0], c[RolledBack]-base[1], c[healthIdx]-base[2]
		if judged < need || judged <= 0 {
			return
		}
		for _, k := range []struct {
			kind string
			n    int
			l    Level
			noun string
		}{{"rollback", rb, t.Rollback, "rollbacks"}, {"health", health, t.Health, "health failures"}} {
			rate := of(k.n, judged)
			level := ""
			limit := k.l.Warn
			switch {
			case rate > k.l.Pause:
				level, limit = "pause", k.l.Pause
			case rate > k.l.Warn:
				level = "warn"
			default:
				continue
			}
			where := "wave " + w.Name
			if slice != "" {
				where += ", " + slice
			}
			verb := "passed the warning threshold"
			if level == "pause" {
				verb = "passed the pause threshold"
			}
			out = append(out, Alarm{Time: now.UTC(), Wave: w.Name, Kind: k.kind, Level: level, Slice: slice, Rate: rate,
				Judged: judged, Count: k.n,
				Message: fmt.Sprintf("%s: %s %s (%d of %d) %s %s", where, k.noun, rate, k.n, judged, verb, limit)})
		}
	}
	whole := &r.counts[wi]
	base := w.Base[""]
	need := min(t.MinSample, max(1, whole.total()-base[0]))
	eval("", whole, need)
	keys := make([]sliceKey, 0, 8)
	for k := range r.slices {
		if int(k.wave) == wi {
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].region != keys[j].region {
			return !keys[i].region
		}
		return keys[i].idx < keys[j].idx
	})
	for _, k := range keys {
		name := "hardware " + r.sliceName(false, k.idx)
		if k.region {
			name = "region " + r.sliceName(true, k.idx)
			if r.sliceName(true, k.idx) == "" {
				continue // devices without a region are no slice
			}
		}
		eval(name, r.slices[k], t.MinSample)
	}
	// A breach of the whole wave names its worst slice.
	for i := range out {
		if out[i].Slice != "" || out[i].Level != "pause" {
			continue
		}
		for _, s := range out {
			if s.Slice != "" && s.Kind == out[i].Kind && s.Level == "pause" {
				out[i].Message += "; worst in " + s.Slice
				break
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Level == "pause" && out[j].Level != "pause" })
	return out
}

// budget returns how many devices may be started now: what the minute's
// limit (ramp included) and the in-flight limit leave (math.MaxInt: no
// limit). It trims r.starts: callers hold e.mu for writing.
func (r *run) budget(now time.Time) int {
	sp := r.spec
	b := math.MaxInt
	if sp.Rate.PerMinute > 0 {
		cut := now.Add(-time.Minute).UnixNano()
		i := sort.Search(len(r.starts), func(i int) bool { return r.starts[i] > cut })
		r.starts = r.starts[i:]
		b = max(0, r.perMinute()-len(r.starts))
	}
	if sp.Rate.InFlight > 0 {
		inflight := 0
		for i := range r.counts {
			for s := Offered; s < Succeeded; s++ {
				inflight += r.counts[i][s]
			}
		}
		b = min(b, max(0, sp.Rate.InFlight-inflight))
	}
	return b
}

// cmd is an install command to send.
type cmd struct {
	id       string
	rollout  string
	notAfter time.Time
}

// pusher sends batches of offers (delivery.Push) on goroutines that wait
// ends: each device always goes to the same one, which sends in batch
// order, so a device's offers arrive in the order they were committed
// (delivery.Push sends what is current when it sends). At most two batches
// wait for each goroutine, so commits cannot run far ahead of what has
// been sent. Several goroutines, because sending (mochi's publish, one
// message at a time) is the slow part of a pass: a single one cannot keep
// up with the commits it waits for.
type pusher struct {
	send func(ids []string) // delivery.Service.Push
	chs  []chan []string
	seed maphash.Seed // a device's goroutine: maphash.String(seed, id) mod len(chs)
	done sync.WaitGroup
}

// pushers is how many goroutines a pass sends its offers on.
func pushers() int { return min(runtime.GOMAXPROCS(0), 4) }

func startPusher(send func(ids []string), n int) *pusher {
	p := &pusher{send: send, chs: make([]chan []string, n), seed: maphash.MakeSeed()}
	for i := range p.chs {
		ch := make(chan []string, 2)
		p.chs[i] = ch
		p.done.Go(func() {
			for ids := range ch {
				p.send(ids)
			}
		})
	}
	return p
}

// push queues ids, each to its own goroutine.
func (p *pusher) push(ids []string) {
	if len(p.chs) == 1 {
		p.chs[0] <- ids
		return
	}
	parts := make([][]string, len(p.chs))
	for _, id := range ids {
		i := maphash.String(p.seed, id) % uint64(len(p.chs))
		parts[i] = append(parts[i], id)
	}
	for i, part := range parts {
		if len(part) > 0 {
			p.chs[i] <- part
		}
	}
}

// wait sends what is queued and ends the goroutines.
func (p *pusher) wait() {
	for _, ch := range p.chs {
		close(ch)
	}
	p.done.Wait()
}

// stepMembers decides for the rollout's devices: results of deadlines,
// probations and what the broker saw, offers within the rate, install
// commands inside windows. It reports whether there is more to do now (it
// writes at most limit devices a transaction).
func (e *Engine) stepMembers(ctx context.Context, r *run, now time.Time, dirty map[string]uint8, ph phase, p *pusher, limit int) (bool, error) {
	var changes []*change
	var cmds []cmd
	e.mu.Lock()
	rec := r.rec
	sp := r.spec
	running := rec.State == StateRunning
	cw := r.current(rec)
	budget := 0
	if running {
		budget = r.budget(now)
	}
	e.mu.Unlock()
	e.mu.RLock()
	more := false
	nowNS := now.UnixNano()
	for _, m := range r.members {
		if len(changes) >= limit {
			more = true
			break
		}
		switch {
		case ph == resultsPhase && m.state.inFlight():
			bits := dirty[m.id]
			if bits == 0 && m.state < Rebooting && nowNS < m.offered+int64(sp.Deadline.D()) {
				continue // only the deadline decides, and it is ahead
			}
			v, _ := e.reg.Get(m.id)
			if c := e.timers(r, m, &v, now); c != nil {
				changes = append(changes, c)
				continue
			}
			if bits != 0 {
				if c := e.observed(r, m, &v, bits, now); c != nil {
					changes = append(changes, c)
				}
			}
		case ph == offersPhase && running && m.state == Verified && sp.Install == InstallInWindow && nowNS-m.cmdAt >= int64(e.o.CommandRetry):
			v, _ := e.reg.Get(m.id)
			local, _ := e.pl.zones.local(&v).in(now)
			if ok, closes := sp.Window.open(local); ok && v.Status.Online {
				cmds = append(cmds, cmd{id: m.id, rollout: r.offerID(m), notAfter: closes})
			}
		case ph == offersPhase && m.state == Eligible && running && budget > 0 && int(m.wave) <= cw && cw < len(rec.Waves):
			d, rs, ok := e.reg.Running(m.id)
			if !ok {
				continue
			}
			budget--
			changes = append(changes, e.offerChange(r, m, d, &rs, now))
		}
	}
	e.mu.RUnlock()
	if len(changes) > 0 {
		var pushed []string
		err := e.db.Update(ctx, func(tx store.Tx) error {
			var err error
			pushed, err = e.commitChanges(tx, changes, now)
			return err
		})
		if err != nil {
			return false, err
		}
		p.push(pushed)
	}
	if len(cmds) > 0 {
		e.commands(r, cmds, now)
	}
	return more, nil
}

// offerChange decides the offer of an eligible member: its target now
// (from the version it runs, which its latest birth may have changed), or
// a skip when the version rules refuse it.
func (e *Engine) offerChange(r *run, m *member, d *fleet.Device, rs *fleet.Running, now time.Time) *change {
	c := &change{r: r, m: *m, expect: m.state, offer: true}
	n := &c.m
	if r.rel.Kind == manifest.KindFirmware && rs.Born && rs.Firmware != "" {
		p := &plan{spec: r.spec, release: r.rel, path: r.path, versions: r.versions}
		need, skip := e.pl.versionRules(p, rs.Firmware, rs.SecureVersion, registeredOr(d, rs.Hardware))
		if skip != "" {
			c.offer = false
			n.state, n.at, c.reason = Skipped, now.UnixNano(), skip
			return c
		}
		if m.tries == 0 || need != m.need {
			n.need = need
		}
	}
	n.state, n.at, n.offered, n.okAt = Offered, now.UnixNano(), now.UnixNano(), 0
	n.connects, n.wills = 0, 0
	return c
}

// timers decides what time alone decides for an in-flight member: its
// deadline, its silence after a reboot, the end of its probation.
func (e *Engine) timers(r *run, m *member, v *fleet.View, now time.Time) *change {
	sp := r.spec
	nowNS := now.UnixNano()
	c := &change{r: r, m: *m, expect: m.state}
	n := &c.m
	if m.offered != 0 && nowNS >= m.offered+int64(sp.Deadline.D()) {
		gw := e.cutOff(v)
		if m.state >= Rebooting && gw == "" {
			n.flags |= fHealth | fBroker
		}
		n.state, n.at = TimedOut, nowNS
		c.reason = fmt.Sprintf("no result within the deadline of %s after its offer (it was %s)", sp.Deadline.D(), m.state)
		if gw != "" {
			c.reason += "; unreachable: its gateway " + gw + " is offline"
		}
		return c
	}
	if m.state == Rebooting || m.state == Trial {
		if since, after := e.silentSince(v); !since.IsZero() && now.Sub(since) >= sp.Silence.D() && since.UnixNano() >= m.at-int64(time.Minute) {
			n.flags |= fHealth | fBroker
			n.state, n.at = Failed, nowNS
			c.reason = fmt.Sprintf("silent for %s after its reboot%s (not heard from since %s)", sp.Silence.D(), after, since.Format(time.RFC3339))
			return c
		}
	}
	if m.state == Trial && m.okAt != 0 && nowNS >= m.okAt+int64(sp.Probation.D()) && v.Status.Online && v.Status.Healthy() {
		if _, stone := r.target(m); stone >= 0 {
			n.need &^= 1 << stone
			n.tries = 0
			n.state, n.at, n.offered, n.okAt, n.connects, n.wills = Offered, nowNS, nowNS, 0, 0, 0
			c.offer = true
			c.reason = "took stepping stone " + r.path[stone].ID
			return c
		}
		n.state, n.at = Succeeded, nowNS
		return c
	}
	return nil
}

// cutOff returns the gateway of a child that is unreachable because that
// gateway is offline ("" for any other device): such a child is not judged
// by silence, and its deadline is no health failure.
func (e *Engine) cutOff(v *fleet.View) string {
	st := &v.Status
	if !st.Unreachable || st.Gateway == "" {
		return ""
	}
	if g, ok := e.reg.Get(st.Gateway); ok && g.Status.Online {
		return "" // it is back: the child has had its chance to be heard
	}
	return st.Gateway
}

// silentSince returns since when the broker has not heard from the device
// of v, for the silence rule (zero: it is not silent), and words that say
// from what the silence counts.
//
// A device with a connection of its own is silent from its disconnect. A
// gateway's child is silent from the last message its gateway relayed;
// one cut off by its gateway's disconnect is not silent while the gateway
// is offline (it waits, up to its deadline), and once the gateway is back
// it is silent from the gateway's reconnect unless it is heard again.
func (e *Engine) silentSince(v *fleet.View) (time.Time, string) {
	st := &v.Status
	switch {
	case st.Online:
		return time.Time{}, ""
	case st.Gateway == "":
		return st.DisconnectedAt, ""
	case st.Unreachable:
		g, ok := e.reg.Get(st.Gateway)
		if !ok || !g.Status.Online {
			return time.Time{}, ""
		}
		since := g.Status.ConnectedAt
		if st.LastSeen.After(since) {
			since = st.LastSeen
		}
		return since, " and its gateway " + st.Gateway + "'s return"
	}
	return st.LastSeen, ""
}

// observed judges what the broker saw of an in-flight member since the
// last pass (bits of dirty).
func (e *Engine) observed(r *run, m *member, v *fleet.View, bits uint8, now time.Time) *change {
	c := &change{r: r, m: *m, expect: m.state}
	n := &c.m
	nowNS := now.UnixNano()
	target, _ := r.target(m)
	st := &v.Status
	fail := func(reason string) *change {
		n.flags |= fHealth | fBroker
		n.state, n.at, c.reason = Failed, nowNS, reason
		return c
	}
	// A device whose heartbeat says it is rebooting is rebooting, even
	// when the events that tell its install have not come (they wait
	// behind the reboot, and never come if it does not come back).
	if bits&dRebooting != 0 && m.state >= Offered && m.state < Rebooting && st.OTAState == wire.StateRebooting.String() {
		e.baseline(n)
		n.state, n.at, c.reason = Rebooting, nowNS, "rebooting (seen in its heartbeat)"
		return c
	}
	if bits&dBirth != 0 && m.state >= Installing {
		switch {
		case st.Firmware == target.Version && m.state < Trial:
			if n.connects == 0 {
				e.baseline(n)
				n.connects-- // this birth's connection came after the reboot
			}
			n.state, n.at, c.reason = Trial, nowNS, "came back on "+target.Version+" (seen in its birth)"
			return c
		case st.Firmware != target.Version && m.state >= Rebooting &&
			(st.BootReason == wire.BootRollback.String() || st.OTAState == wire.StateRolledBack.String()):
			n.flags |= fBroker
			n.state, n.at, c.reason = RolledBack, nowNS, "came back on "+st.Firmware+" after a rollback (seen in its birth)"
			return c
		}
	}
	if (m.state == Rebooting || m.state == Trial) && m.connects > 0 && st.Connects > uint64(m.connects)+uint64(r.spec.Reconnects) {
		return fail(fmt.Sprintf("reconnect loop: %d connections since its reboot", st.Connects-uint64(m.connects)))
	}
	if m.state == Trial && bits&dWill != 0 && st.Wills > uint64(m.wills) {
		return fail("its Last Will fired during the trial")
	}
	if m.state == Trial && m.okAt != 0 && bits&dUnhealthy != 0 {
		return fail("reported failing health during its probation")
	}
	return nil
}

// commitChanges writes changes in tx: each only if the member is still in
// the state it was decided from. It returns the devices whose offer must
// be pushed after the commit. Offers alike (one rollout, one target, one
// spec) are made in one call, and the members are applied to memory in one
// callback: one lock each, not one per device.
func (e *Engine) commitChanges(tx store.Tx, changes []*change, now time.Time) ([]string, error) {
	live := make([]*change, 0, len(changes))
	for _, c := range changes {
		cur, _, err := e.read(tx, c.r, c.m.id)
		if err != nil {
			return nil, err
		}
		if cur != nil && cur.state == c.expect {
			// a copy: a refused offer below changes it, and the store
			// may run this function again (the rest of a batch whose
			// commit failed)
			cc := *c
			live = append(live, &cc)
		}
	}
	var push, ids []string
	offers := func(c *change) (offerKey, bool) {
		if !c.offer {
			return offerKey{}, false
		}
		return offerKey{c.r, e.offerSpec(c, now)}, true
	}
	err := eachRun(live, offers, func(k offerKey, cs []*change) error {
		ids = idsOf(cs, ids[:0])
		res, err := e.dlv.Offer(tx, ids, k.spec, "rollout "+k.r.rec.ID)
		if err != nil {
			return err
		}
		for i, r := range res {
			if c := cs[i]; !r.OK {
				c.m.state, c.reason = Skipped, r.Error
			} else {
				push = append(push, c.m.id)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	cancels := func(c *change) (*run, bool) { return c.r, c.cancel }
	err = eachRun(live, cancels, func(r *run, cs []*change) error {
		ids = idsOf(cs, ids[:0])
		if _, err := e.dlv.Cancel(tx, ids, "rollout "+r.rec.ID); err != nil {
			return err
		}
		push = append(push, ids...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	applied := make([]appliedChange, 0, len(live))
	for _, c := range live {
		if err := e.put(tx, c); err != nil {
			return nil, err
		}
		applied = append(applied, appliedChange{r: c.r, m: c.m, reason: c.reason})
	}
	if len(applied) > 0 {
		tx.OnCommit(func() { e.apply(applied...) })
	}
	return push, nil
}

// offerKey: offers alike, made in one call.
type offerKey struct {
	r    *run
	spec delivery.OfferSpec
}

// eachRun calls fn with each run of consecutive changes in cs that have a
// key (ok) and the same one.
func eachRun[K comparable](cs []*change, key func(*change) (K, bool), fn func(K, []*change) error) error {
	for i := 0; i < len(cs); {
		k, ok := key(cs[i])
		j := i + 1
		if ok {
			for ; j < len(cs); j++ {
				if kj, okj := key(cs[j]); !okj || kj != k {
					break
				}
			}
			if err := fn(k, cs[i:j]); err != nil {
				return err
			}
		}
		i = j
	}
	return nil
}

// idsOf appends the devices of cs to ids.
func idsOf(cs []*change, ids []string) []string {
	for _, c := range cs {
		ids = append(ids, c.m.id)
	}
	return ids
}

// offerSpec is the offer change c makes.
func (e *Engine) offerSpec(c *change, now time.Time) delivery.OfferSpec {
	target, _ := c.r.target(&c.m)
	spec := delivery.OfferSpec{Release: target.ID, RolloutID: c.r.offerID(&c.m), BlockSize: c.r.spec.BlockSize,
		Deadline: uint64(now.Add(c.r.spec.Deadline.D()).Unix())}
	if c.r.spec.Install == InstallInWindow {
		spec.InstallMode = wire.InstallOnCommand
	}
	return spec
}

// cancellations are the changes that cancel every member of r that has
// not begun to install. Callers hold e.mu.
func (e *Engine) cancellations(r *run, now time.Time, reason string) []*change {
	var out []*change
	for _, m := range r.members {
		if m.state.Done() || m.state.installed() {
			continue
		}
		c := &change{r: r, m: *m, expect: m.state, cancel: m.state != Eligible, reason: reason}
		c.m.state, c.m.at = Cancelled, now.UnixNano()
		out = append(out, c)
	}
	return out
}

// commands sends install commands; a device that has no subscriber gets
// another on a later pass.
func (e *Engine) commands(r *run, cmds []cmd, now time.Time) {
	for _, c := range cmds {
		res := e.dlv.Command([]string{c.id}, wire.Command{Verb: wire.VerbInstall, RolloutID: c.rollout, NotAfter: uint64(c.notAfter.Unix())})
		if len(res) == 1 && res[0].OK {
			e.mu.Lock()
			if m := r.member(c.id); m != nil {
				m.cmdAt = now.UnixNano()
			}
			e.mu.Unlock()
		}
	}
}

// summaries publishes the summary of each rollout that changed, at most
// once a second each.
func (e *Engine) summaries(now time.Time) {
	e.mu.RLock()
	var due []*run
	for _, r := range e.runs {
		if r.changed && now.Sub(r.summaryAt) >= time.Second {
			due = append(due, r)
		}
	}
	e.mu.RUnlock()
	for _, r := range due {
		e.mu.Lock()
		r.changed, r.summaryAt = false, now
		v := e.view(r, now, false)
		e.mu.Unlock()
		b, err := jsonMarshal(v)
		if err != nil {
			continue
		}
		e.o.Feed.Publish(event.RolloutSummary{Base: event.Base{At: now}, Rollout: r.rec.ID, JSON: b})
	}
}
