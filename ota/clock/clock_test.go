package clock

import (
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func recv(t *testing.T, ch <-chan time.Time) (time.Time, bool) {
	t.Helper()
	select {
	case v := <-ch:
		return v, true
	default:
		return time.Time{}, false
	}
}

func TestFakeTimer(t *testing.T) {
	c := NewFake(t0)
	tm := c.NewTimer(time.Minute)
	if c.Waiters() != 1 {
		t.Fatalf("%d waiters", c.Waiters())
	}
	c.Advance(59 * time.Second)
	if _, ok := recv(t, tm.C()); ok {
		t.Fatal("fired early")
	}
	c.Advance(time.Second)
	if v, ok := recv(t, tm.C()); !ok || !v.Equal(t0.Add(time.Minute)) {
		t.Fatalf("fired %v %v, want at %v", v, ok, t0.Add(time.Minute))
	}
	if c.Waiters() != 0 || tm.Stop() {
		t.Fatal("a fired timer is still armed")
	}
	// Reset arms it again; Stop before it fires.
	if tm.Reset(time.Second) {
		t.Fatal("Reset of a fired timer reports it active")
	}
	if !tm.Stop() {
		t.Fatal("Stop of an armed timer reports it inactive")
	}
	c.Advance(time.Hour)
	if _, ok := recv(t, tm.C()); ok {
		t.Fatal("a stopped timer fired")
	}
	// A zero duration fires at once.
	z := c.NewTimer(0)
	if _, ok := recv(t, z.C()); !ok {
		t.Fatal("a zero timer did not fire")
	}
}

func TestFakeOrderAndTicker(t *testing.T) {
	c := NewFake(t0)
	tk := c.NewTicker(10 * time.Second)
	a := c.NewTimer(25 * time.Second)
	c.Advance(15 * time.Second)
	if v, ok := recv(t, tk.C()); !ok || !v.Equal(t0.Add(10*time.Second)) {
		t.Fatalf("first tick %v %v", v, ok)
	}
	// A reader that misses ticks gets one (capacity 1), as time.Ticker.
	c.Advance(30 * time.Second) // ticks at 20, 30, 40; timer at 25
	if v, ok := recv(t, tk.C()); !ok || !v.Equal(t0.Add(20*time.Second)) {
		t.Fatalf("kept tick %v %v (the first missed one is kept)", v, ok)
	}
	if _, ok := recv(t, tk.C()); ok {
		t.Fatal("more than one tick buffered")
	}
	if v, ok := recv(t, a.C()); !ok || !v.Equal(t0.Add(25*time.Second)) {
		t.Fatalf("timer %v %v", v, ok)
	}
	if !c.Now().Equal(t0.Add(45 * time.Second)) {
		t.Fatalf("now %v", c.Now())
	}
	tk.Stop()
	c.Advance(time.Minute)
	if _, ok := recv(t, tk.C()); ok {
		t.Fatal("a stopped ticker ticked")
	}
}

func TestFakeWaitForWaiters(t *testing.T) {
	c := NewFake(t0)
	go func() {
		tm := c.NewTimer(time.Hour)
		<-tm.C()
	}()
	if !c.WaitForWaiters(1, 10*time.Second) {
		t.Fatal("the goroutine's timer was never armed")
	}
	c.Advance(time.Hour)
	if c.WaitForWaiters(5, 10*time.Millisecond) {
		t.Fatal("more waiters than there are")
	}
}

func TestSystem(t *testing.T) {
	c := System()
	if !IsSystem(c) || IsSystem(NewFake(t0)) {
		t.Fatal("IsSystem")
	}
	tm := c.NewTimer(time.Millisecond)
	select {
	case <-tm.C():
	case <-time.After(10 * time.Second):
		t.Fatal("the system timer did not fire")
	}
	if d := time.Since(c.Now()); d < 0 || d > time.Minute {
		t.Fatalf("system now is %v off", d)
	}
}
