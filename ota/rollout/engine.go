package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/otamq/otamq/ota/clock"
	"github.com/otamq/otamq/ota/delivery"
	"github.com/otamq/otamq/ota/event"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/release"
	"github.com/otamq/otamq/ota/store"
	"github.com/otamq/otamq/ota/wire"
)

// Errors of the engine's operations.
var (
	ErrNotFound = errors.New("no such rollout")
	// ErrState: the operation does not apply in the rollout's state.
	ErrState = errors.New("not in a state for that")
	// ErrForbidden: the operator may not do it (approve their own rollout).
	ErrForbidden = errors.New("not allowed")
)

// Recorder counts results. Labels come from bounded sets (hardware,
// region, release version).
type Recorder interface {
	// Result counts a device's result: succeeded, failed, rolled_back,
	// timed_out, cancelled; once per device, its first (a rollback after
	// failing health is counted as failed).
	Result(result, hardware, region, version string)
	// Rollback counts a device that rolled back, also after another
	// result.
	Rollback(hardware, region, version string)
	// HealthFailure counts a result that is a health failure (reported,
	// or judged by the broker; a rollback after failing health is both).
	HealthFailure(hardware, region, version string)
	// Alarm counts a threshold warned ("warn") or crossed ("pause"), of
	// kind "rollback" or "health".
	Alarm(kind, level string)
}

type nopRecorder struct{}

func (nopRecorder) Result(string, string, string, string) {}
func (nopRecorder) Rollback(string, string, string)       {}
func (nopRecorder) HealthFailure(string, string, string)  {}
func (nopRecorder) Alarm(string, string)                  {}

// Defaults of Options.
const (
	DefaultTick         = time.Second
	DefaultCommandRetry = time.Minute
	DefaultKeepFinished = 20
	// A pass writes its decisions in transactions of firstBatch devices,
	// then twice as many each time up to maxBatch: the first offers go out
	// at once, and a large wave takes few fsyncs.
	firstBatch = 250
	maxBatch   = 4000
)

// Options configure New. The zero value means all defaults.
type Options struct {
	Clock  clock.Clock
	Logger *slog.Logger
	// Feed carries the devices' events to the engine (it subscribes) and
	// the engine's rollout events to everyone else. It must be the feed of
	// the registry and the delivery service.
	Feed     *event.Feed
	Recorder Recorder
	// Tick is the period of the engine's evaluation pass (it also runs
	// when events arrive). Default DefaultTick.
	Tick time.Duration
	// CommandRetry is how long after an install command the engine sends
	// another to a device that has not begun to install. Default
	// DefaultCommandRetry.
	CommandRetry time.Duration
	// KeepFinished is how many finished rollouts stay in memory (and in
	// the metrics) besides the active ones. Default DefaultKeepFinished.
	KeepFinished int
}

// Engine runs rollouts. Its methods are safe for concurrent use. Every
// decision is written to the store before it is acted on; memory mirrors
// what was committed (the store is the truth: decisions are checked again
// against it inside their transaction). One engine owns the rollouts of
// its store: several engines on one store would need a lease per rollout,
// which this one does not take.
type Engine struct {
	db  store.Store
	reg *fleet.Registry
	cat *release.Catalog
	dlv *delivery.Service
	o   Options
	pl  planner

	mu   sync.RWMutex    // guards runs and what they hold
	runs map[string]*run // by rollout ID
	// holders maps each device to the rollout holding it. It has a lock
	// of its own because clients' read goroutines look it up (OnEvent),
	// and a pass may hold mu for a while.
	hmu     sync.RWMutex
	holders map[string]*run

	createMu sync.Mutex // one create at a time (conflicts and holding are one step)

	dirtyMu sync.Mutex
	dirty   map[string]uint8 // devices with events since the last pass
	wake    chan struct{}
}

// Bits of dirty.
const (
	dBirth uint8 = 1 << iota
	dConnect
	dDisconnect
	dWill
	dUnhealthy
	// dRebooting: a heartbeat said the device is rebooting (its events of
	// the install may be queued behind the reboot, or never come).
	dRebooting
)

// run is a loaded rollout.
type run struct {
	rec      *record
	spec     *Spec
	rel      release.Release
	path     []release.Release
	versions versions  // rel's and path's, parsed
	members  []*member // sorted by ID once loaded or created (member finds one)
	// counts[wave][state] counts members; counts[wave][numStates] the
	// health failures among them. slices the same per hardware and region.
	counts []counter
	slices map[sliceKey]*counter
	// starts are the offer times of the last minute (per_minute).
	starts    []int64
	succeeded int
	changed   bool // since the last summary
	summaryAt time.Time
}

type counter [numStates + 1]int

const healthIdx = numStates

type sliceKey struct {
	wave   uint8
	region bool
	idx    uint16
}

// New loads the rollouts from db and subscribes to feed. Call Run to let
// it decide.
func New(db store.Store, reg *fleet.Registry, cat *release.Catalog, dlv *delivery.Service, opts *Options) (*Engine, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Clock == nil {
		o.Clock = clock.System()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Recorder == nil {
		o.Recorder = nopRecorder{}
	}
	if o.Feed == nil {
		o.Feed = &event.Feed{} // it hears nothing of the devices: only for tests of the operations
	}
	if o.Tick <= 0 {
		o.Tick = DefaultTick
	}
	if o.CommandRetry <= 0 {
		o.CommandRetry = DefaultCommandRetry
	}
	if o.KeepFinished <= 0 {
		o.KeepFinished = DefaultKeepFinished
	}
	e := &Engine{db: db, reg: reg, cat: cat, dlv: dlv, o: o, runs: map[string]*run{}, holders: map[string]*run{},
		dirty: map[string]uint8{}, wake: make(chan struct{}, 1)}
	e.pl = planner{fleet: reg, catalog: cat, holder: e.holderOf, zones: &zones{}}
	if err := e.load(); err != nil {
		return nil, err
	}
	o.Feed.SubscribeTx(e)
	o.Feed.Subscribe(e)
	return e, nil
}

// holderOf names the active rollout holding device id ("" none). Callers
// hold no lock.
func (e *Engine) holderOf(id string) string {
	e.hmu.RLock()
	defer e.hmu.RUnlock()
	if r := e.holders[id]; r != nil {
		return r.rec.ID
	}
	return ""
}

// Holder names the active rollout that holds device id, if any: a manual
// offer to it would compete with the rollout.
func (e *Engine) Holder(id string) (string, bool) {
	h := e.holderOf(id)
	return h, h != ""
}

func (e *Engine) load() error {
	var recs []*record
	err := e.db.View(context.Background(), func(tx store.Tx) error {
		return tx.Scan(bucketRollouts, nil, false, func(_, v []byte) error {
			var r record
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("rollout: %w", err)
			}
			recs = append(recs, &r)
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("load rollouts: %w", err)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Created.After(recs[j].Created) })
	kept := 0
	for _, rec := range recs {
		if finished(rec.State) {
			if kept >= e.o.KeepFinished {
				continue
			}
			kept++
		}
		r, err := e.loadRun(rec)
		if err != nil {
			return err
		}
		e.install(r)
	}
	return nil
}

// loadRun builds the run of a stored rollout with its members.
func (e *Engine) loadRun(rec *record) (*run, error) {
	r, err := e.open(rec)
	if err != nil {
		return nil, err
	}
	if err := e.db.View(context.Background(), func(tx store.Tx) error {
		prefix := memberKey(rec.ID, "")
		return tx.Scan(bucketMembers, prefix, false, func(k, v []byte) error {
			if len(k) < len(prefix) || string(k[:len(prefix)]) != string(prefix) {
				return store.ErrStop
			}
			m, _, err := decodeMember(string(k[len(prefix):]), v)
			if err != nil {
				return err
			}
			r.add(m)
			return nil
		})
	}); err != nil {
		return nil, fmt.Errorf("load rollout %s: %w", rec.ID, err)
	}
	sort.Slice(r.members, func(i, j int) bool { return r.members[i].id < r.members[j].id })
	return r, nil
}

// evict drops from memory the finished rollouts without devices in
// flight beyond the KeepFinished most recent (they stay in the store).
func (e *Engine) evict() {
	e.mu.Lock()
	defer e.mu.Unlock()
	var done []*run
	for _, r := range e.runs {
		if finished(r.rec.State) && !r.hasInFlight() {
			done = append(done, r)
		}
	}
	if len(done) <= e.o.KeepFinished {
		return
	}
	sort.Slice(done, func(i, j int) bool { return done[i].rec.Created.After(done[j].rec.Created) })
	for _, r := range done[e.o.KeepFinished:] {
		delete(e.runs, r.rec.ID)
		e.hmu.Lock()
		for _, m := range r.members {
			if e.holders[m.id] == r {
				delete(e.holders, m.id)
			}
		}
		e.hmu.Unlock()
	}
}

// open builds the run of a stored rollout, without members.
func (e *Engine) open(rec *record) (*run, error) {
	spec, err := Parse([]byte(rec.Spec))
	if err != nil {
		return nil, fmt.Errorf("rollout %s: stored spec: %w", rec.ID, err)
	}
	r := &run{rec: rec, spec: spec, counts: make([]counter, len(rec.Waves)),
		slices: map[sliceKey]*counter{}}
	if rel, ok := e.cat.Release(rec.Release); ok {
		r.rel = rel
	} else {
		r.rel = release.Release{ID: rec.Release, Version: rec.Version}
	}
	for _, id := range rec.Path {
		rel, _ := e.cat.Release(id)
		r.path = append(r.path, rel)
	}
	r.versions = parseVersions(r.rel, r.path)
	return r, nil
}

// member returns r's member id, or nil. r.members is sorted: no map per
// device (it cost 40 bytes a member; membership is fixed at create).
func (r *run) member(id string) *member {
	i, ok := slices.BinarySearchFunc(r.members, id, func(m *member, id string) int { return strings.Compare(m.id, id) })
	if !ok {
		return nil
	}
	return r.members[i]
}

// add puts a loaded member into r.
func (r *run) add(m *member) {
	r.members = append(r.members, m)
	r.count(m, 1)
	if m.state == Succeeded {
		r.succeeded++
	}
}

// install makes r known and its devices held.
func (e *Engine) install(r *run) {
	sort.Slice(r.members, func(i, j int) bool { return r.members[i].id < r.members[j].id })
	e.mu.Lock()
	defer e.mu.Unlock()
	e.runs[r.rec.ID] = r
	minute := e.o.Clock.Now().Add(-time.Minute).UnixNano()
	e.hmu.Lock()
	for _, m := range r.members {
		if !finished(r.rec.State) || !m.state.Done() {
			e.holders[m.id] = r
		}
		if m.offered > minute && r.spec.Rate.PerMinute > 0 {
			r.starts = append(r.starts, m.offered)
		}
	}
	e.hmu.Unlock()
	sort.Slice(r.starts, func(i, j int) bool { return r.starts[i] < r.starts[j] })
}

// count adds (d 1) or removes (d -1) m from r's counters.
func (r *run) count(m *member, d int) {
	if int(m.wave) >= len(r.counts) {
		return
	}
	add := func(c *counter) {
		c[m.state] += d
		if m.flags&fHealth != 0 {
			c[healthIdx] += d
		}
	}
	add(&r.counts[m.wave])
	for _, k := range []sliceKey{{wave: m.wave, idx: m.hw}, {wave: m.wave, region: true, idx: m.region}} {
		c := r.slices[k]
		if c == nil {
			c = &counter{}
			r.slices[k] = c
		}
		add(c)
	}
}

// target returns the release m is to take next: the first stepping stone
// it still needs, or the rollout's release.
func (r *run) target(m *member) (release.Release, int) {
	for i := range r.path {
		if m.need&(1<<i) != 0 {
			return r.path[i], i
		}
	}
	return r.rel, -1
}

// offerID is the rollout ID of m's current offer: the rollout's own for
// the release, with "~s<i>" for stepping stone i and "~t<n>" for retry n,
// so that a device (which does not take the same rollout and image twice)
// sees each as a new offer.
func (r *run) offerID(m *member) string {
	_, stone := r.target(m)
	id := r.rec.ID
	if stone < 0 && m.tries == 0 {
		return id
	}
	id += "~"
	if stone >= 0 {
		id += "s" + strconv.Itoa(stone)
	}
	if m.tries > 0 {
		id += "t" + strconv.Itoa(int(m.tries))
	}
	return id
}

// splitOfferID returns the rollout ID an offer's rollout ID belongs to.
func splitOfferID(s string) string {
	base, _, _ := strings.Cut(s, "~")
	return base
}

// Run runs the evaluation pass every Tick, and whenever events arrive,
// until ctx ends.
func (e *Engine) Run(ctx context.Context) {
	t := e.o.Clock.NewTicker(e.o.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		case <-e.wake:
		}
		if err := e.Pass(ctx); err != nil && ctx.Err() == nil {
			e.o.Logger.Error("rollout pass", "err", err)
		}
	}
}

func (e *Engine) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// OnEvent implements event.Subscriber: what the broker sees of a device in
// a rollout (connects, disconnects, births, Last Wills, health) is noted
// for the next pass. It never blocks; what is noted is a few bits per
// device, so nothing is lost and nothing grows beyond the rollouts'
// devices.
func (e *Engine) OnEvent(ev event.Event) {
	var bit uint8
	switch x := ev.(type) {
	case event.Birth:
		bit = dBirth
	case event.Connected:
		bit = dConnect
	case event.Disconnected:
		bit = dDisconnect
	case event.WillFired:
		bit = dWill
	case event.Health:
		if x.Healthy {
			return
		}
		bit = dUnhealthy
	case event.OTAState:
		if x.To != wire.StateRebooting {
			return
		}
		bit = dRebooting
	default:
		return
	}
	id := ev.DeviceID()
	e.hmu.RLock()
	r := e.holders[id]
	e.hmu.RUnlock()
	if r == nil {
		return
	}
	e.dirtyMu.Lock()
	e.dirty[id] |= bit
	e.dirtyMu.Unlock()
	e.poke()
}

// change is a member's new state, decided and about to be written.
type change struct {
	r      *run
	m      member // the new state
	reason string
	// expect is the state the decision was made from; a transaction that
	// finds another leaves the member alone.
	expect State
	offer  bool // offer m's target
	cancel bool // withdraw its offer
}

// OnEventTx implements event.TxSubscriber: a device's update event moves
// it in its rollout in the transaction that records the event.
func (e *Engine) OnEventTx(tx store.Tx, ev event.Event) error {
	u, ok := ev.(event.Update)
	if !ok || u.Event.RolloutID == "" {
		return nil
	}
	e.mu.RLock()
	r := e.runs[splitOfferID(u.Event.RolloutID)]
	var cur *member
	if r != nil {
		cur = r.member(u.ID)
	}
	e.mu.RUnlock()
	if cur == nil {
		return nil
	}
	m, _, err := e.read(tx, r, u.ID)
	if err != nil || m == nil {
		return err
	}
	if r.offerID(m) != u.Event.RolloutID {
		return nil // about an earlier offer (a retry, a stepping stone)
	}
	c, ok := e.onUpdate(r, m, u)
	if !ok {
		return nil
	}
	if err := e.write(tx, c); err != nil {
		return err
	}
	tx.OnCommit(e.poke)
	return nil
}

// read returns device id's member of r as stored in tx.
func (e *Engine) read(tx store.Tx, r *run, id string) (*member, string, error) {
	v := tx.Get(bucketMembers, memberKey(r.rec.ID, id))
	if v == nil {
		return nil, "", nil
	}
	return decodeMember(id, v)
}

// write stores c in tx and applies it to memory when tx commits.
func (e *Engine) write(tx store.Tx, c *change) error {
	if err := e.put(tx, c); err != nil {
		return err
	}
	m, r, reason := c.m, c.r, c.reason
	tx.OnCommit(func() { e.apply(appliedChange{r: r, m: m, reason: reason}) })
	return nil
}

// put stores c in tx; the caller applies it to memory when tx commits.
func (e *Engine) put(tx store.Tx, c *change) error {
	if err := tx.Put(bucketMembers, memberKey(c.r.rec.ID, c.m.id), c.m.encode(c.reason)); err != nil {
		return err
	}
	// A device whose update ended without success no longer has the
	// release offered: otherwise it would get it again at its next
	// subscription and might take it, behind the rollout's back (its
	// retries are the rollout's to give).
	if st := c.m.state; (st == Failed || st == RolledBack || st == TimedOut) && !c.expect.Done() && !c.cancel {
		id := c.m.id
		withdrawn, err := e.dlv.Withdraw(tx, id, c.r.offerID(&c.m), "rollout "+c.r.rec.ID)
		if err != nil {
			return err
		}
		if withdrawn {
			tx.OnCommit(func() { e.dlv.Push([]string{id}) })
		}
	}
	return nil
}

// appliedChange is a committed member to apply to memory.
type appliedChange struct {
	r      *run
	m      member
	reason string
}

// afterApply is what follows a member's application, outside the lock:
// its metrics and its fleet event.
type afterApply struct {
	old, m           member
	rollout, wave    string
	hw, region, vers string
	reason           string
}

// apply makes memory follow committed members, under one lock.
func (e *Engine) apply(cs ...appliedChange) {
	after := make([]afterApply, 0, len(cs))
	e.mu.Lock()
	for i := range cs {
		if a, ok := e.applyLocked(cs[i].r, &cs[i].m, cs[i].reason); ok {
			after = append(after, a)
		}
	}
	e.mu.Unlock()
	for i := range after {
		e.applied(&after[i])
	}
}

// applyLocked makes memory follow committed member m of r. Callers hold
// e.mu.
func (e *Engine) applyLocked(r *run, m *member, reason string) (afterApply, bool) {
	cur := r.member(m.id)
	if cur == nil {
		return afterApply{}, false
	}
	old := *cur
	r.count(cur, -1)
	cmdAt := cur.cmdAt
	*cur = *m
	if old.state == m.state && old.need == m.need && old.tries == m.tries {
		cur.cmdAt = cmdAt
	}
	r.count(cur, 1)
	if old.state == Succeeded {
		r.succeeded--
	}
	if m.state == Succeeded {
		r.succeeded++
	}
	if m.offered != old.offered && old.state == Eligible && r.spec.Rate.PerMinute > 0 {
		r.starts = append(r.starts, m.offered)
	}
	if finished(r.rec.State) && m.state.Done() {
		e.release(r, m.id)
	}
	r.changed = true
	return afterApply{old: old, m: *m, rollout: r.rec.ID, wave: r.rec.Waves[m.wave].Name, hw: r.sliceName(false, m.hw),
		region: r.sliceName(true, m.region), vers: r.rel.Version, reason: reason}, true
}

// applied counts a member's result and publishes its new state.
func (e *Engine) applied(a *afterApply) {
	old, m, hw, region := &a.old, &a.m, a.hw, a.region
	if m.state != old.state && m.state.Done() && m.state != Skipped {
		// A result may follow another (failed health, then rolled back):
		// each device counts once as a result and once as a health
		// failure, by its first; a rollback counts when it happens.
		if !old.state.Done() {
			e.o.Recorder.Result(m.state.String(), hw, region, a.vers)
		}
		if m.state == RolledBack {
			e.o.Recorder.Rollback(hw, region, a.vers)
		}
		if m.flags&fHealth != 0 && (!old.state.Done() || old.flags&fHealth == 0) {
			e.o.Recorder.HealthFailure(hw, region, a.vers)
		}
	} else if m.state == old.state && m.state.Done() && m.flags&fHealth != 0 && old.flags&fHealth == 0 {
		// the device's report made its result a health failure too
		e.o.Recorder.HealthFailure(hw, region, a.vers)
	}
	if m.state != old.state {
		e.o.Feed.Publish(event.Rollout{Base: event.Base{ID: m.id, At: e.o.Clock.Now()}, Rollout: a.rollout, Kind: "device",
			Wave: a.wave, State: m.state.String(), Reason: a.reason})
	}
}

// release lets device id go if r holds it.
func (e *Engine) release(r *run, id string) {
	e.hmu.Lock()
	if e.holders[id] == r {
		delete(e.holders, id)
	}
	e.hmu.Unlock()
}

func (r *run) sliceName(region bool, i uint16) string {
	names := r.rec.Hardware
	if region {
		names = r.rec.Regions
	}
	if int(i) < len(names) {
		return names[i]
	}
	return ""
}

// putRecord stores rec in tx and makes it r's record when tx commits.
func (e *Engine) putRecord(tx store.Tx, r *run, rec *record) error {
	rec.Updated = e.o.Clock.Now().UTC()
	b, err := rec.encode()
	if err != nil {
		return err
	}
	if err := tx.Put(bucketRollouts, []byte(rec.ID), b); err != nil {
		return err
	}
	tx.OnCommit(func() {
		e.mu.Lock()
		r.rec = rec
		r.changed = true
		if finished(rec.State) {
			for _, m := range r.members {
				if m.state.Done() {
					e.release(r, m.id)
				}
			}
		}
		e.mu.Unlock()
	})
	return nil
}

// readRecord returns rollout id as stored in tx.
func readRecord(tx store.Tx, id string) (*record, error) {
	v := tx.Get(bucketRollouts, []byte(id))
	if v == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, quote(id))
	}
	var rec record
	if err := json.Unmarshal(v, &rec); err != nil {
		return nil, fmt.Errorf("rollout %s: %w", id, err)
	}
	return &rec, nil
}

// publish sends a rollout event.
func (e *Engine) publish(rec *record, kind, wave, reason, actor string) {
	e.o.Feed.Publish(event.Rollout{Base: event.Base{At: e.o.Clock.Now()}, Rollout: rec.ID, Kind: kind, Wave: wave,
		State: rec.State, Reason: reason, Actor: actor})
}
