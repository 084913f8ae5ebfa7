package fleet

import (
	"strings"
	"sync"
	"time"
)

// Login throttling of operator passwords. A password check costs about
// 20 ms of CPU and 19 MiB (argon2id), and an operator password is what an
// attacker guesses; device tokens (192 random bits, checked with one
// SHA-256) are never throttled, so that a fleet behind one NAT address, or
// an attacker spamming a device's ID, cannot lock devices out.
//
// Failures back off per client ID and per source address, and the backoff
// is checked before the slow hash, so a throttled attempt costs nothing:
//
//   - a client ID gets LoginFreeFailuresID failures, then each further one
//     makes it wait 1 s, 2 s, 4 s... up to LoginMaxBackoffID;
//   - a source address gets LoginFreeFailuresAddr failures, then backs off
//     the same way up to LoginMaxBackoffAddr;
//   - at most LoginInflightID checks of one ID and LoginInflightAddr of one
//     address run at once; more wait (up to LoginInflightWait) for one to
//     end, so a burst of parallel guesses meets the backoff its first
//     failures start, and parallel good logins go one after another;
//   - a record is forgotten LoginForget after its last failure; a good login
//     clears its client ID's record (not its address's).
//
// Of the password-check slots, one is kept for clean attempts (no recent
// failure of the ID or the address), so a flood of bad logins does not
// queue a good login of another operator behind it. Attempts with recent failures
// that cannot get a slot within LoginSlotWait are throttled.
const (
	LoginFreeFailuresID   = 3
	LoginMaxBackoffID     = time.Minute
	LoginFreeFailuresAddr = 10
	LoginMaxBackoffAddr   = 5 * time.Minute
	LoginInflightID       = 2
	LoginInflightAddr     = 4
	LoginForget           = 15 * time.Minute
	LoginSlotWait         = 100 * time.Millisecond
	LoginInflightWait     = 2 * time.Second
	// loginMaxTracked bounds each map; when it is full of live records,
	// new keys are treated as having failed before.
	loginMaxTracked = 100_000
)

// Throttle scopes, for ThrottledError and metrics: the attempt's client ID
// or source address is backing off, or the check slots stayed busy.
const (
	ThrottleID      = "client_id"
	ThrottleAddress = "address"
	ThrottleBusy    = "busy"
)

// ThrottleScopes lists every scope, so counters can start at 0.
var ThrottleScopes = []string{ThrottleID, ThrottleAddress, ThrottleBusy}

// ThrottledError is returned by Authenticate for an attempt refused without
// a password check.
type ThrottledError struct {
	// Scope is ThrottleID, ThrottleAddress or ThrottleBusy.
	Scope string
	// Retry is how long the backoff still runs (0 for too many attempts
	// at once).
	Retry time.Duration
}

func (e *ThrottledError) Error() string {
	switch {
	case e.Scope == ThrottleBusy:
		return "login throttled: password checks busy"
	case e.Retry == 0:
		return "login throttled: too many checks of this " + strings.ReplaceAll(e.Scope, "_", " ") + " at once"
	}
	return "login throttled by " + e.Scope + " after failed attempts"
}

// Is makes errors.Is(err, ErrThrottled) true.
func (e *ThrottledError) Is(target error) bool { return target == ErrThrottled }

type failures struct {
	n        int       // failures since the record was last forgotten
	last     time.Time // last failure
	until    time.Time // no attempt before this
	inflight int       // checks running now
}

// throttle keeps the failure records. Its methods are safe for concurrent
// use.
type throttle struct {
	// mu guards ids, addrs, swept and changed.
	mu    sync.Mutex
	ids   map[string]*failures
	addrs map[string]*failures
	swept time.Time // last sweep of a full map
	// changed is closed (and replaced) whenever a check ends.
	changed chan struct{}

	// slots bounds concurrent password checks; clean is the one kept for
	// attempts without recent failures.
	slots chan struct{}
	clean chan struct{}

	// inflightWait is LoginInflightWait (tests that are not about it
	// lengthen it).
	inflightWait time.Duration
}

func newThrottle(checks int) *throttle {
	t := &throttle{ids: map[string]*failures{}, addrs: map[string]*failures{}, clean: make(chan struct{}, 1), changed: make(chan struct{}),
		inflightWait: LoginInflightWait}
	if checks > 1 {
		t.slots = make(chan struct{}, checks-1)
	}
	return t
}

// attempt is one admitted password check; done ends it.
type attempt struct {
	t        *throttle
	id, addr string
	slot     chan struct{}
}

// begin admits a password check of id from addr at now, or refuses it
// with a *ThrottledError. An admitted attempt holds a check slot until done.
func (t *throttle) begin(id, addr string, clock func() time.Time) (*attempt, error) {
	var wait *time.Timer
	defer func() {
		if wait != nil {
			wait.Stop()
		}
	}()
	t.mu.Lock()
	var fid, fad *failures
	for {
		now := clock()
		fid = t.record(t.ids, id, now)
		fad = t.record(t.addrs, addr, now)
		var err error
		switch {
		case now.Before(fid.until):
			err = &ThrottledError{Scope: ThrottleID, Retry: fid.until.Sub(now)}
		case now.Before(fad.until):
			err = &ThrottledError{Scope: ThrottleAddress, Retry: fad.until.Sub(now)}
		}
		if err != nil {
			t.mu.Unlock()
			return nil, err
		}
		if fid.inflight < LoginInflightID && fad.inflight < LoginInflightAddr {
			break
		}
		// Too many checks of this ID or address at once: wait for one to
		// end (a burst of guesses then meets the backoff its first
		// failures start; parallel good logins go one after another).
		if wait == nil {
			wait = time.NewTimer(t.inflightWait)
		}
		scope := ThrottleID // what the attempt waits for, read under the lock
		if fid.inflight < LoginInflightID {
			scope = ThrottleAddress
		}
		changed := t.changed
		t.mu.Unlock()
		select {
		case <-changed:
		case <-wait.C:
			return nil, &ThrottledError{Scope: scope}
		}
		t.mu.Lock()
	}
	// Clean: no recent failure of the ID or the address.
	suspect := fid.n > 0 || fad.n > 0
	fid.inflight++
	fad.inflight++
	t.mu.Unlock()

	a := &attempt{t: t, id: id, addr: addr}
	if !suspect {
		// The kept slot first, then any.
		select {
		case t.clean <- struct{}{}:
			a.slot = t.clean
		case t.slots <- struct{}{}:
			a.slot = t.slots
		}
		return a, nil
	}
	timer := time.NewTimer(LoginSlotWait)
	defer timer.Stop()
	select {
	case t.slots <- struct{}{}:
		a.slot = t.slots
		return a, nil
	case <-timer.C:
	}
	t.mu.Lock()
	t.release(id, addr)
	t.mu.Unlock()
	return nil, &ThrottledError{Scope: ThrottleBusy}
}

// done ends the attempt and records its outcome at now.
func (a *attempt) done(ok bool, now time.Time) {
	<-a.slot
	t := a.t
	t.mu.Lock()
	defer t.mu.Unlock()
	t.release(a.id, a.addr)
	if ok {
		delete(t.ids, a.id)
		if f := t.addrs[a.addr]; f != nil && f.n == 0 && f.inflight == 0 {
			delete(t.addrs, a.addr)
		}
		return
	}
	fail(t.record(t.ids, a.id, now), now, LoginFreeFailuresID, LoginMaxBackoffID)
	fail(t.record(t.addrs, a.addr, now), now, LoginFreeFailuresAddr, LoginMaxBackoffAddr)
}

// release ends a check of id from addr and wakes those waiting for one.
// t.mu is held.
func (t *throttle) release(id, addr string) {
	if f := t.ids[id]; f != nil {
		f.inflight--
	}
	if f := t.addrs[addr]; f != nil {
		f.inflight--
	}
	close(t.changed)
	t.changed = make(chan struct{})
}

func fail(f *failures, now time.Time, free int, maxBackoff time.Duration) {
	f.n++
	f.last = now
	if over := f.n - free; over > 0 {
		d := maxBackoff
		if over < 32 {
			d = min(maxBackoff, time.Second<<(over-1))
		}
		f.until = now.Add(d)
	}
}

// record returns the live record of key in m, creating it. Records whose
// last failure is older than LoginForget start again. When m is full of
// live records, a new key shares one record that counts as failed, so an
// attacker who fills the map gains nothing by it.
func (t *throttle) record(m map[string]*failures, key string, now time.Time) *failures {
	f := m[key]
	if f != nil {
		if f.n > 0 && now.Sub(f.last) > LoginForget && now.After(f.until) {
			f.n, f.until = 0, time.Time{}
		}
		return f
	}
	if len(m) >= loginMaxTracked && now.Sub(t.swept) > time.Second {
		// At most one sweep a second, so a flood of new keys cannot make
		// every attempt walk the map.
		t.swept = now
		for k, g := range m {
			if g.inflight == 0 && (g.n == 0 || now.Sub(g.last) > LoginForget && now.After(g.until)) {
				delete(m, k)
			}
		}
	}
	if len(m) >= loginMaxTracked {
		const overflow = "\x00overflow"
		if f = m[overflow]; f == nil {
			f = &failures{n: 1, last: now}
			m[overflow] = f
		}
		f.last = now
		return f
	}
	f = &failures{}
	m[key] = f
	return f
}
