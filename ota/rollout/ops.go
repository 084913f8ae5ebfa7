package rollout

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/otamq/otamq/ota/store"
)

// Committer runs fn in one durable transaction, with whatever the caller
// adds to it (the admin API adds the audit record).
type Committer func(fn func(tx store.Tx) error) error

// NewID returns a fresh rollout ID.
func NewID(now time.Time) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return "r" + now.UTC().Format("20060102") + "-" + hex.EncodeToString(b)
}

// PlanSpec plans a spec without creating anything (rollout/plan with a
// spec). Without an id in the spec the cohorts are those of a provisional
// ID, and the view says so.
func (e *Engine) PlanSpec(text []byte) (*PlanView, error) {
	spec, err := Parse(text)
	if err != nil {
		return nil, err
	}
	id, provisional := spec.ID, false
	if id == "" {
		id, provisional = NewID(e.o.Clock.Now()), true
	} else if e.exists(id) {
		return nil, (&problems{{Field: "id", Message: fmt.Sprintf("rollout %s exists", id)}}).err()
	}
	p, err := e.pl.plan(spec, id)
	if err != nil {
		return nil, err
	}
	v := p.view()
	v.Provisional = provisional
	return v, nil
}

func (e *Engine) exists(id string) bool {
	e.mu.RLock()
	_, ok := e.runs[id]
	e.mu.RUnlock()
	if ok {
		return true
	}
	found := false
	_ = e.db.View(context.Background(), func(tx store.Tx) error {
		found = tx.Get(bucketRollouts, []byte(id)) != nil
		return nil
	})
	return found
}

// Create validates and plans a spec and stores the rollout with every
// device's place in it, in one transaction: draft, or awaiting_approval
// when the spec asks for approval.
func (e *Engine) Create(actor string, text []byte, commit Committer) (*View, *PlanView, error) {
	spec, err := Parse(text)
	if err != nil {
		return nil, nil, err
	}
	now := e.o.Clock.Now()
	id := spec.ID
	if id == "" {
		id = NewID(now)
	} else if e.exists(id) {
		return nil, nil, (&problems{{Field: "id", Message: fmt.Sprintf("rollout %s exists", id)}}).err()
	}
	// One create at a time: the conflict check and the holding of the
	// devices must be one step.
	e.createMu.Lock()
	defer e.createMu.Unlock()
	p, err := e.pl.plan(spec, id)
	if err != nil {
		return nil, nil, err
	}
	rec := &record{ID: id, Name: spec.Name, Spec: string(text), Release: p.release.ID, Version: p.release.Version,
		State: StateDraft, CreatedBy: actor, Created: now.UTC(), Waves: p.waves, Members: len(p.members)}
	if spec.Approval {
		rec.State = StateAwaitingApproval
	}
	for _, s := range p.path {
		rec.Path = append(rec.Path, s.ID)
	}
	hw, region := map[string]uint16{}, map[string]uint16{}
	intern := func(m map[string]uint16, names *[]string, s string) uint16 {
		if i, ok := m[s]; ok {
			return i
		}
		if len(*names) >= math.MaxUint16 {
			return 0
		}
		i := uint16(len(*names))
		m[s] = i
		*names = append(*names, s)
		return i
	}
	r := &run{spec: spec, rel: p.release, path: p.path, versions: p.versions, counts: make([]counter, len(p.waves)),
		slices: map[sliceKey]*counter{}}
	type stored struct {
		m      *member
		reason string
	}
	ms := make([]stored, 0, len(p.members))
	for _, pm := range p.members {
		m := &member{id: pm.id, wave: uint8(pm.wave), need: pm.need, at: now.UnixNano(),
			hw: intern(hw, &rec.Hardware, pm.hw), region: intern(region, &rec.Regions, pm.region)}
		if pm.skip != "" {
			m.state = Skipped
		}
		ms = append(ms, stored{m, pm.skip})
		r.add(m)
	}
	r.rec = rec
	err = commit(func(tx store.Tx) error {
		if tx.Get(bucketRollouts, []byte(id)) != nil {
			return (&problems{{Field: "id", Message: fmt.Sprintf("rollout %s exists", id)}}).err()
		}
		b, err := rec.encode()
		if err != nil {
			return err
		}
		if err := tx.Put(bucketRollouts, []byte(id), b); err != nil {
			return err
		}
		for _, s := range ms {
			if err := tx.Put(bucketMembers, memberKey(id, s.m.id), s.m.encode(s.reason)); err != nil {
				return err
			}
		}
		tx.OnCommit(func() { e.install(r) })
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	e.publish(rec, "created", "", "", actor)
	e.mu.RLock()
	v := e.view(r, now, false)
	e.mu.RUnlock()
	return v, p.view(), nil
}

// op changes rollout id: fn gets a copy of its stored record (and the run)
// and changes it, returning the device changes to commit with it and the
// event to publish.
func (e *Engine) op(id string, commit Committer, fn func(rec *record, r *run, now time.Time) ([]*change, pending, error)) (*View, []string, error) {
	e.mu.RLock()
	r := e.runs[id]
	e.mu.RUnlock()
	if r == nil {
		if e.exists(id) {
			return nil, nil, fmt.Errorf("%w: rollout %s has finished", ErrState, quote(id))
		}
		return nil, nil, fmt.Errorf("%w: %s", ErrNotFound, quote(id))
	}
	now := e.o.Clock.Now()
	var ev pending
	var rec *record
	var pushed []string
	err := commit(func(tx store.Tx) error {
		cur, err := readRecord(tx, id)
		if err != nil {
			return err
		}
		rec = cur
		e.mu.RLock()
		changes, p, err := fn(rec, r, now)
		e.mu.RUnlock()
		if err != nil {
			return err
		}
		ev = p
		if err := e.putRecord(tx, r, rec); err != nil {
			return err
		}
		pushed, err = e.commitChanges(tx, changes, now)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	e.dlv.Push(pushed)
	if ev.kind != "" {
		e.publish(rec, ev.kind, ev.wave, ev.reason, ev.actor)
	}
	e.poke()
	e.mu.RLock()
	v := e.view(r, now, false)
	e.mu.RUnlock()
	return v, pushed, nil
}

func stateErr(rec *record, want string) error {
	msg := fmt.Sprintf("rollout %s is %s", rec.ID, rec.State)
	if rec.Reason != "" {
		msg += " (" + rec.Reason + ")"
	}
	return fmt.Errorf("%w: %s; %s", ErrState, msg, want)
}

// Approve approves a rollout that needs it. The creator cannot.
func (e *Engine) Approve(actor, id string, commit Committer) (*View, error) {
	v, _, err := e.op(id, commit, func(rec *record, r *run, now time.Time) ([]*change, pending, error) {
		if rec.State != StateAwaitingApproval {
			return nil, pending{}, stateErr(rec, "only a rollout awaiting approval can be approved")
		}
		if actor == rec.CreatedBy {
			return nil, pending{}, fmt.Errorf("%w: %s created rollout %s; another operator must approve it", ErrForbidden, actor, rec.ID)
		}
		rec.State, rec.Approved = StateDraft, &Approval{By: actor, At: now.UTC()}
		return nil, pending{kind: "approved", actor: actor}, nil
	})
	return v, err
}

// Start starts a draft rollout: scheduled when its schedule's start is
// ahead, running otherwise.
func (e *Engine) Start(actor, id string, commit Committer) (*View, error) {
	v, _, err := e.op(id, commit, func(rec *record, r *run, now time.Time) ([]*change, pending, error) {
		switch rec.State {
		case StateDraft:
		case StateAwaitingApproval:
			return nil, pending{}, fmt.Errorf("%w: rollout %s needs approval by an operator other than %s first (otactl rollout approve %s)", ErrState, rec.ID, rec.CreatedBy, rec.ID)
		default:
			return nil, pending{}, stateErr(rec, "only a draft can be started (a paused one is resumed)")
		}
		if end := r.spec.Schedule.End; end != nil && !now.Before(*end) {
			return nil, pending{}, fmt.Errorf("%w: rollout %s's schedule ended at %s", ErrState, rec.ID, end.Format(time.RFC3339))
		}
		rec.StartedBy, rec.Started = actor, now.UTC()
		rec.State = StateRunning
		if st := r.spec.Schedule.Start; st != nil && now.Before(*st) {
			rec.State = StateScheduled
		}
		return nil, pending{kind: "started", actor: actor}, nil
	})
	return v, err
}

// Pause stops new offers and install commands; devices under way go on.
func (e *Engine) Pause(actor, id, reason string, commit Committer) (*View, error) {
	v, _, err := e.op(id, commit, func(rec *record, r *run, now time.Time) ([]*change, pending, error) {
		if rec.State != StateRunning && rec.State != StateScheduled {
			return nil, pending{}, stateErr(rec, "only a running or scheduled rollout can be paused")
		}
		if reason == "" {
			reason = "paused by " + actor
		}
		rec.State, rec.PausedBy, rec.Reason = StatePaused, PauseOperator, reason
		return nil, pending{kind: "paused", reason: reason, actor: actor}, nil
	})
	return v, err
}

// Resume resumes a paused rollout. The results seen so far are
// acknowledged: thresholds count from here, and a wave that has finished
// below its success share passes.
func (e *Engine) Resume(actor, id string, commit Committer) (*View, error) {
	v, _, err := e.op(id, commit, func(rec *record, r *run, now time.Time) ([]*change, pending, error) {
		if rec.State != StatePaused {
			return nil, pending{}, stateErr(rec, "only a paused rollout can be resumed")
		}
		was := rec.Reason
		for wi := range rec.Waves {
			w := &rec.Waves[wi]
			if w.State == WavePending {
				continue
			}
			w.Base = map[string][3]int{}
			set := func(name string, c *counter) { w.Base[name] = [3]int{c.judged(), c[RolledBack], c[healthIdx]} }
			set("", &r.counts[wi])
			for k, c := range r.slices {
				if int(k.wave) != wi {
					continue
				}
				if k.region {
					set("region "+r.sliceName(true, k.idx), c)
				} else {
					set("hardware "+r.sliceName(false, k.idx), c)
				}
			}
		}
		// A wave that has nothing left to do and cannot reach its
		// success share any more passes: resuming accepts it.
		if cw := r.current(rec); cw < len(rec.Waves) && rec.Waves[cw].State != WavePending {
			c := &r.counts[cw]
			if c.open() == 0 && of(c[Succeeded], c.total()) < r.spec.Success {
				rec.Waves[cw].State, rec.Waves[cw].Passed = WavePassed, now.UTC()
			}
		}
		rec.State, rec.PausedBy, rec.Reason = StateRunning, "", ""
		if st := r.spec.Schedule.Start; st != nil && now.Before(*st) {
			rec.State = StateScheduled
		}
		return nil, pending{kind: "resumed", reason: "was: " + was, actor: actor}, nil
	})
	return v, err
}

// AbortResult is what an abort did.
type AbortResult struct {
	View *View `json:"rollout"`
	// Cancelled counts the devices that had not begun to install: they
	// got the cancel (the empty offer).
	Cancelled int `json:"cancelled"`
	// Installing are those past the point of a cancel: they finish, and
	// their results are still recorded.
	Installing []DeviceView `json:"installing"`
}

// Abort ends a rollout: devices that have not begun to install are
// cancelled; the others finish and are reported.
func (e *Engine) Abort(actor, id, reason string, commit Committer) (*AbortResult, error) {
	var cancelled int
	var installing []DeviceView
	v, _, err := e.op(id, commit, func(rec *record, r *run, now time.Time) ([]*change, pending, error) {
		if finished(rec.State) {
			return nil, pending{}, stateErr(rec, "it has finished already")
		}
		if reason == "" {
			reason = "aborted by " + actor
		}
		rec.State, rec.Reason, rec.Ended = StateAborted, reason, now.UTC()
		for i := range rec.Waves {
			if rec.Waves[i].State != WavePassed {
				rec.Waves[i].State = WaveStopped
			}
		}
		cs := e.cancellations(r, now, reason)
		cancelled = len(cs)
		installing = installing[:0]
		for _, m := range r.members {
			if m.state.inFlight() && m.state.installed() {
				installing = append(installing, e.deviceView(r, m, ""))
			}
		}
		return cs, pending{kind: "aborted", reason: reason, actor: actor}, nil
	})
	if err != nil {
		return nil, err
	}
	return &AbortResult{View: v, Cancelled: cancelled, Installing: installing}, nil
}

// Get returns rollout id with its spec.
func (e *Engine) Get(id string) (*View, error) {
	e.mu.RLock()
	r := e.runs[id]
	if r != nil {
		v := e.view(r, e.o.Clock.Now(), true)
		e.mu.RUnlock()
		return v, nil
	}
	e.mu.RUnlock()
	var rec *record
	err := e.db.View(context.Background(), func(tx store.Tx) error {
		var err error
		rec, err = readRecord(tx, id)
		return err
	})
	if err != nil {
		return nil, err
	}
	r, err = e.open(rec)
	if err != nil {
		return nil, err
	}
	return e.view(r, e.o.Clock.Now(), true), nil
}

// ListFilter selects rollouts for List.
type ListFilter struct {
	State string
	// After is the paging cursor: the ID of the last rollout of the
	// page before (rollouts come newest first).
	After string
	Limit int
}

// List returns rollouts, newest first, without their waves' details, and
// the cursor of the next page.
func (e *Engine) List(f ListFilter) ([]View, string, error) {
	var recs []*record
	err := e.db.View(context.Background(), func(tx store.Tx) error {
		return tx.Scan(bucketRollouts, nil, false, func(_, v []byte) error {
			var r record
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			if f.State == "" || r.State == f.State {
				recs = append(recs, &r)
			}
			return nil
		})
	})
	if err != nil {
		return nil, "", err
	}
	sort.Slice(recs, func(i, j int) bool {
		if !recs[i].Created.Equal(recs[j].Created) {
			return recs[i].Created.After(recs[j].Created)
		}
		return recs[i].ID > recs[j].ID
	})
	if f.After != "" {
		for i, r := range recs {
			if r.ID == f.After {
				recs = recs[i+1:]
				break
			}
		}
	}
	limit := f.Limit
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	next := ""
	if len(recs) > limit {
		recs = recs[:limit]
		next = recs[limit-1].ID
	}
	now := e.o.Clock.Now()
	out := make([]View, 0, len(recs))
	e.mu.RLock()
	defer e.mu.RUnlock()
	for _, rec := range recs {
		if r := e.runs[rec.ID]; r != nil {
			v := e.view(r, now, false)
			v.Waves, v.Alarms = nil, nil
			out = append(out, *v)
			continue
		}
		out = append(out, View{ID: rec.ID, Name: rec.Name, Release: rec.Release, Version: rec.Version, State: rec.State,
			Reason: rec.Reason, CreatedBy: rec.CreatedBy, Created: rec.Created, Started: rec.Started, Ended: rec.Ended,
			Updated: rec.Updated, Devices: rec.Members})
	}
	return out, next, nil
}

// DeviceFilter selects devices for Devices.
type DeviceFilter struct {
	State string
	Wave  string
	After string
	Limit int
}

// Devices returns the devices of rollout id in ID order, with their
// reasons, and the cursor of the next page.
func (e *Engine) Devices(id string, f DeviceFilter) ([]DeviceView, string, error) {
	var want State
	if f.State != "" {
		s, ok := ParseState(f.State)
		if !ok {
			return nil, "", fmt.Errorf("%w: state %s: want one of %s", ErrSpec, quote(f.State), strings.Join(States(), ", "))
		}
		want = s
	}
	limit := f.Limit
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	e.mu.RLock()
	r := e.runs[id]
	if r == nil {
		// A rollout finished long ago: from the store.
		e.mu.RUnlock()
		var rec *record
		if err := e.db.View(context.Background(), func(tx store.Tx) error {
			var err error
			rec, err = readRecord(tx, id)
			return err
		}); err != nil {
			return nil, "", err
		}
		lr, err := e.loadRun(rec)
		if err != nil {
			return nil, "", err
		}
		r = lr
		e.mu.RLock()
	}
	wave := -1
	if f.Wave != "" {
		for i, w := range r.rec.Waves {
			if w.Name == f.Wave {
				wave = i
			}
		}
		if wave < 0 {
			e.mu.RUnlock()
			return nil, "", fmt.Errorf("%w: rollout %s has no wave %s", ErrNotFound, id, quote(f.Wave))
		}
	}
	start := sort.Search(len(r.members), func(i int) bool { return r.members[i].id > f.After })
	var page []member
	next := ""
	for _, m := range r.members[start:] {
		if f.State != "" && m.state != want || wave >= 0 && int(m.wave) != wave {
			continue
		}
		if len(page) == limit {
			next = page[len(page)-1].id
			break
		}
		page = append(page, *m)
	}
	e.mu.RUnlock()
	reasons := make([]string, len(page))
	if err := e.db.View(context.Background(), func(tx store.Tx) error {
		for i := range page {
			if v := tx.Get(bucketMembers, memberKey(id, page[i].id)); v != nil {
				if _, reason, err := decodeMember(page[i].id, v); err == nil {
					reasons[i] = reason
				}
			}
		}
		return nil
	}); err != nil {
		return nil, "", err
	}
	out := make([]DeviceView, len(page))
	e.mu.RLock()
	for i := range page {
		out[i] = e.deviceView(r, &page[i], reasons[i])
	}
	e.mu.RUnlock()
	return out, next, nil
}

// deviceView renders member m of r. Callers hold e.mu.
func (e *Engine) deviceView(r *run, m *member, reason string) DeviceView {
	target, _ := r.target(m)
	v := DeviceView{Device: m.id, State: m.state.String(), Reason: reason, Target: target.ID, Tries: int(m.tries),
		Since: nanoTime(m.at), Offered: nanoTime(m.offered), Health: m.flags&fHealth != 0, Broker: m.flags&fBroker != 0,
		Hardware: r.sliceName(false, m.hw), Region: r.sliceName(true, m.region)}
	if int(m.wave) < len(r.rec.Waves) {
		v.Wave = r.rec.Waves[m.wave].Name
	}
	if m.offered != 0 {
		v.OfferID = r.offerID(m)
	}
	if d, ok := e.reg.Get(m.id); ok && d.Parent != "" {
		v.Gateway = d.Parent
		v.Unreachable = m.state.inFlight() && e.cutOff(&d) != ""
		if v.Unreachable && v.Reason == "" {
			v.Reason = "unreachable: its gateway " + d.Parent + " is offline"
		}
	}
	return v
}

// PlanOf returns the plan of an existing rollout, from its devices.
func (e *Engine) PlanOf(id string) (*PlanView, error) {
	e.mu.RLock()
	r := e.runs[id]
	e.mu.RUnlock()
	if r == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, quote(id))
	}
	p := &plan{id: id, spec: r.spec, release: r.rel, path: r.path, versions: r.versions}
	e.mu.RLock()
	p.waves = append(p.waves, r.rec.Waves...)
	ids := make([]member, len(r.members))
	for i, m := range r.members {
		ids[i] = *m
	}
	e.mu.RUnlock()
	_ = e.db.View(context.Background(), func(tx store.Tx) error {
		for _, m := range ids {
			pm := planned{id: m.id, wave: int(m.wave), need: m.need, hw: r.sliceName(false, m.hw), region: r.sliceName(true, m.region)}
			if m.state == Skipped {
				if v := tx.Get(bucketMembers, memberKey(id, m.id)); v != nil {
					_, pm.skip, _ = decodeMember(m.id, v)
				}
				if pm.skip == "" {
					pm.skip = "skipped"
				}
			}
			p.members = append(p.members, pm)
		}
		return nil
	})
	p.selected = len(p.members)
	return p.view(), nil
}

// perMinute is the per-minute limit now, ramp included.
func (r *run) perMinute() int {
	sp := r.spec
	per := float64(sp.Rate.PerMinute)
	if rp := sp.Rate.Ramp; rp != nil {
		per *= math.Pow(rp.Factor, float64(min(r.succeeded/rp.EverySucceeded, 64)))
		if rp.Max > 0 {
			per = min(per, float64(rp.Max))
		}
	}
	return int(min(per, 1e9))
}
