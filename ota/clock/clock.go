// Package clock is time as otamq's domain sees it: the current time, timers
// and tickers, behind an interface, so that bake times, maintenance
// windows, deadlines and probation run on a fake in tests instead of being
// waited for.
//
// System is the real clock. Fake is a clock that moves only when told:
// Advance fires, in order of their deadlines, every timer and ticker that
// falls due, and Waiters says how many are pending, so a test can wait for
// the code under test to have armed its timer before advancing.
package clock

import (
	"sync"
	"time"
)

// Clock gives the current time and timers. Implementations are safe for
// concurrent use.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// NewTimer returns a timer that sends the time on its channel once,
	// after d.
	NewTimer(d time.Duration) Timer
	// NewTicker returns a ticker that sends the time on its channel every
	// d (d > 0), dropping ticks a slow reader misses, like time.Ticker.
	NewTicker(d time.Duration) Ticker
}

// Timer is a time.Timer of a Clock.
type Timer interface {
	// C is the channel the time is sent on (capacity 1).
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether it did.
	Stop() bool
	// Reset changes the timer to fire after d; it reports whether the
	// timer was active.
	Reset(d time.Duration) bool
}

// Ticker is a time.Ticker of a Clock.
type Ticker interface {
	// C is the channel the ticks are sent on (capacity 1).
	C() <-chan time.Time
	// Stop turns the ticker off.
	Stop()
}

// System returns the real clock.
func System() Clock { return systemClock{} }

// IsSystem reports whether c is the real clock.
func IsSystem(c Clock) bool {
	_, ok := c.(systemClock)
	return ok
}

type systemClock struct{}

func (systemClock) Now() time.Time                 { return time.Now() }
func (systemClock) NewTimer(d time.Duration) Timer { return sysTimer{time.NewTimer(d)} }
func (systemClock) NewTicker(d time.Duration) Ticker {
	return sysTicker{time.NewTicker(d)}
}

type sysTimer struct{ t *time.Timer }

func (t sysTimer) C() <-chan time.Time        { return t.t.C }
func (t sysTimer) Stop() bool                 { return t.t.Stop() }
func (t sysTimer) Reset(d time.Duration) bool { return t.t.Reset(d) }

type sysTicker struct{ t *time.Ticker }

func (t sysTicker) C() <-chan time.Time { return t.t.C }
func (t sysTicker) Stop()               { t.t.Stop() }

// Fake is a Clock that moves only when told. The zero value is not usable;
// use NewFake.
type Fake struct {
	// mu guards now, waiters and changed.
	mu      sync.Mutex
	now     time.Time
	waiters []*fakeWaiter
	// changed is closed (and replaced) whenever a timer or ticker is armed,
	// for WaitForWaiters.
	changed chan struct{}
}

// NewFake returns a fake clock showing start.
func NewFake(start time.Time) *Fake {
	return &Fake{now: start, changed: make(chan struct{})}
}

// fakeWaiter is an armed timer or ticker.
type fakeWaiter struct {
	c      *Fake
	ch     chan time.Time
	when   time.Time
	period time.Duration // ticker; 0 for a timer
	active bool          // guarded by c.mu
}

// Now implements Clock.
func (c *Fake) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// NewTimer implements Clock.
func (c *Fake) NewTimer(d time.Duration) Timer {
	w := &fakeWaiter{c: c, ch: make(chan time.Time, 1)}
	c.mu.Lock()
	c.arm(w, d)
	c.mu.Unlock()
	return fakeTimer{w}
}

// NewTicker implements Clock.
func (c *Fake) NewTicker(d time.Duration) Ticker {
	if d <= 0 {
		panic("clock: non-positive ticker interval") // as time.NewTicker
	}
	w := &fakeWaiter{c: c, ch: make(chan time.Time, 1), period: d}
	c.mu.Lock()
	c.arm(w, d)
	c.mu.Unlock()
	return fakeTicker{w}
}

// arm (re)schedules w d from now. c.mu is held.
func (c *Fake) arm(w *fakeWaiter, d time.Duration) {
	c.disarm(w)
	w.when, w.active = c.now.Add(d), true
	c.waiters = append(c.waiters, w)
	close(c.changed)
	c.changed = make(chan struct{})
	if d <= 0 {
		c.fire()
	}
}

// disarm removes w and reports whether it was active. c.mu is held.
func (c *Fake) disarm(w *fakeWaiter) bool {
	was := w.active
	w.active = false
	for i, x := range c.waiters {
		if x == w {
			c.waiters = append(c.waiters[:i], c.waiters[i+1:]...)
			break
		}
	}
	return was
}

// fire delivers everything due at c.now, earliest first. c.mu is held.
func (c *Fake) fire() {
	for {
		var next *fakeWaiter
		for _, w := range c.waiters {
			if !w.when.After(c.now) && (next == nil || w.when.Before(next.when)) {
				next = w
			}
		}
		if next == nil {
			return
		}
		select {
		case next.ch <- next.when:
		default: // a slow reader misses the tick, as with time.Ticker
		}
		if next.period > 0 {
			next.when = next.when.Add(next.period)
			if !next.when.After(c.now) {
				// A reader can take one tick at a time: skip the ones it
				// missed.
				skip := c.now.Sub(next.when)/next.period + 1
				next.when = next.when.Add(skip * next.period)
			}
		} else {
			c.disarm(next)
		}
	}
}

// Advance moves the clock forward by d, firing every timer and ticker that
// falls due, in order of their deadlines.
func (c *Fake) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// Step from deadline to deadline, so that each fires at its own time
	// and a ticker ticks once per period passed (its channel permitting).
	end := c.now.Add(d)
	for {
		var next time.Time
		for _, w := range c.waiters {
			if w.when.After(c.now) && !w.when.After(end) && (next.IsZero() || w.when.Before(next)) {
				next = w.when
			}
		}
		if next.IsZero() {
			break
		}
		c.now = next
		c.fire()
	}
	c.now = end
	c.fire()
}

// Set moves the clock to t (forward only), as Advance.
func (c *Fake) Set(t time.Time) {
	if d := t.Sub(c.Now()); d > 0 {
		c.Advance(d)
	}
}

// Waiters returns how many timers and tickers are armed.
func (c *Fake) Waiters() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiters)
}

// WaitForWaiters blocks until at least n timers and tickers are armed or
// timeout passes (real time), and reports whether they were.
func (c *Fake) WaitForWaiters(n int, timeout time.Duration) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		if len(c.waiters) >= n {
			c.mu.Unlock()
			return true
		}
		ch := c.changed
		c.mu.Unlock()
		select {
		case <-ch:
		case <-deadline.C:
			return false
		}
	}
}

type fakeTimer struct{ w *fakeWaiter }

func (t fakeTimer) C() <-chan time.Time { return t.w.ch }

func (t fakeTimer) Stop() bool {
	t.w.c.mu.Lock()
	defer t.w.c.mu.Unlock()
	return t.w.c.disarm(t.w)
}

func (t fakeTimer) Reset(d time.Duration) bool {
	t.w.c.mu.Lock()
	defer t.w.c.mu.Unlock()
	was := t.w.active
	t.w.c.arm(t.w, d)
	return was
}

type fakeTicker struct{ w *fakeWaiter }

func (t fakeTicker) C() <-chan time.Time { return t.w.ch }

func (t fakeTicker) Stop() {
	t.w.c.mu.Lock()
	defer t.w.c.mu.Unlock()
	t.w.c.disarm(t.w)
}
