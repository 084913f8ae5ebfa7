package fleet

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/clock"
)

const opPW = "a long operator password"

func throttleSetup(t *testing.T, checks int) (*Registry, *clock.Fake) {
	t.Helper()
	db, r, _, clk := setup(t)
	if checks > 0 {
		r.throttle = newThrottle(checks)
	}
	for _, id := range []string{"ops", "ops2"} {
		pw, err := PasswordSecret(opPW)
		if err != nil {
			t.Fatal(err)
		}
		register(t, db, r, Registration{ID: id, Role: RoleOperator}, pw)
	}
	register(t, db, r, Registration{ID: "dev-1"}, TokenSecret("device-token"))
	return r, clk
}

func login(r *Registry, id, pw, remote string) error {
	_, err := r.Authenticate(Credentials{ClientID: id, Username: id, Password: []byte(pw), Remote: remote})
	return err
}

func scopeOf(err error) string {
	var te *ThrottledError
	if errors.As(err, &te) {
		return te.Scope
	}
	return ""
}

func TestThrottleBacksOffPerID(t *testing.T) {
	r, clk := throttleSetup(t, 0)
	for i := range LoginFreeFailuresID {
		// Different addresses: only the ID's count matters here.
		if err := login(r, "ops", "wrong", fmt.Sprintf("10.0.0.%d:1", i)); !errors.Is(err, ErrBadCredentials) {
			t.Fatalf("free failure %d: %v", i, err)
		}
	}
	// The next failure starts the backoff: 1 s.
	if err := login(r, "ops", "wrong", "10.0.1.1:1"); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("first counted failure: %v", err)
	}
	err := login(r, "ops", opPW, "10.0.1.2:1")
	if !errors.Is(err, ErrThrottled) || scopeOf(err) != ThrottleID {
		t.Fatalf("during the backoff even the right password is refused unchecked: %v", err)
	}
	var te *ThrottledError
	errors.As(err, &te)
	if te.Retry <= 0 || te.Retry > time.Second {
		t.Fatalf("retry %v, want within the first 1 s backoff", te.Retry)
	}
	// Another operator is not affected.
	if err := login(r, "ops2", opPW, "10.0.1.3:1"); err != nil {
		t.Fatalf("other operator: %v", err)
	}
	// Each failure after a backoff doubles it, up to the cap.
	for i, d := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second,
		16 * time.Second, 32 * time.Second, time.Minute, time.Minute} {
		clk.Advance(d - time.Millisecond)
		if err := login(r, "ops", "wrong", "10.0.3.1:1"); !errors.Is(err, ErrThrottled) {
			t.Fatalf("backoff %d: still within %v: %v", i, d, err)
		}
		clk.Advance(time.Millisecond)
		if err := login(r, "ops", "wrong", fmt.Sprintf("10.0.3.%d:1", i+2)); !errors.Is(err, ErrBadCredentials) {
			t.Fatalf("backoff %d: after %v the attempt is checked again: %v", i, d, err)
		}
	}
	// A good login clears the ID's record.
	clk.Advance(2 * time.Minute)
	if err := login(r, "ops", opPW, "10.0.4.1:1"); err != nil {
		t.Fatal(err)
	}
	for i := range LoginFreeFailuresID {
		if err := login(r, "ops", "wrong", fmt.Sprintf("10.0.5.%d:1", i)); !errors.Is(err, ErrBadCredentials) {
			t.Fatalf("after a good login, failure %d is free again: %v", i, err)
		}
	}
}

func TestThrottleForgets(t *testing.T) {
	r, clk := throttleSetup(t, 0)
	for i := range LoginFreeFailuresID + 1 {
		_ = login(r, "ops", "wrong", fmt.Sprintf("10.1.0.%d:1", i))
	}
	clk.Advance(LoginForget + time.Second)
	for i := range LoginFreeFailuresID + 1 {
		if err := login(r, "ops", "wrong", fmt.Sprintf("10.1.1.%d:1", i)); !errors.Is(err, ErrBadCredentials) {
			t.Fatalf("after %v the record starts over; failure %d: %v", LoginForget, i, err)
		}
	}
}

func TestThrottleBacksOffPerAddress(t *testing.T) {
	r, _ := throttleSetup(t, 0)
	// A spray of operator IDs from one address, each failing once (so no
	// ID backs off).
	var ids []string
	for i := range 2 * (LoginFreeFailuresAddr + 1) {
		id := fmt.Sprintf("spray-%d", i)
		pw, _ := PasswordSecret(opPW)
		register(t, r.db, r, Registration{ID: id, Role: RoleOperator}, pw)
		ids = append(ids, id)
	}
	for i := range LoginFreeFailuresAddr + 1 {
		if err := login(r, ids[i], "wrong", "192.0.2.7:4000"); !errors.Is(err, ErrBadCredentials) {
			t.Fatalf("failure %d from the address: %v", i, err)
		}
	}
	if err := login(r, "ops2", opPW, "192.0.2.7:4001"); scopeOf(err) != ThrottleAddress {
		t.Fatalf("address backing off: %v", err)
	}
	if err := login(r, "ops2", opPW, "192.0.2.8:4001"); err != nil {
		t.Fatalf("another address: %v", err)
	}
	// IPv6 is throttled by /64.
	for i := range LoginFreeFailuresAddr + 1 {
		_ = login(r, ids[LoginFreeFailuresAddr+1+i], "wrong", fmt.Sprintf("[2001:db8:1:2::%x]:5000", i+1))
	}
	if err := login(r, "ops", opPW, "[2001:db8:1:2:ffff::1]:5000"); scopeOf(err) != ThrottleAddress {
		t.Fatalf("same /64: %v", err)
	}
	if err := login(r, "ops", opPW, "[2001:db8:1:3::1]:5000"); err != nil {
		t.Fatalf("another /64: %v", err)
	}
}

func TestThrottleNeverTouchesDevicesOrUnknownIDs(t *testing.T) {
	r, _ := throttleSetup(t, 0)
	for range 100 {
		if err := login(r, "dev-1", "wrong", "198.51.100.1:1"); !errors.Is(err, ErrBadCredentials) {
			t.Fatalf("device with a wrong token: %v (tokens are never throttled)", err)
		}
		if err := login(r, "ghost", "wrong", "198.51.100.1:1"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown ID: %v", err)
		}
	}
	if _, err := r.Authenticate(Credentials{ClientID: "dev-1", Username: "dev-1", Password: []byte("device-token"), Remote: "198.51.100.1:1"}); err != nil {
		t.Fatalf("the device itself: %v", err)
	}
	if err := login(r, "ops", opPW, "198.51.100.1:2"); err != nil {
		t.Fatalf("operator from that address: %v", err)
	}
}

// TestThrottleParallelBurst: a burst of parallel guesses is throttled
// before the failures are known (at most LoginInflightAddr checks of one
// address run at once), and a clean login of another operator from
// another address still gets the kept slot while the suspect ones wait.
func TestThrottleParallelBurst(t *testing.T) {
	r, _ := throttleSetup(t, 2)
	const n = 200
	var wg sync.WaitGroup
	var mu sync.Mutex
	checked, throttled := 0, 0
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := login(r, "ops", "wrong", "203.0.113.9:1")
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, ErrBadCredentials):
				checked++
			case errors.Is(err, ErrThrottled):
				throttled++
			default:
				t.Errorf("burst: %v", err)
			}
		}()
	}
	wg.Wait()
	// The ID allows LoginInflightID at once and LoginFreeFailuresID+1
	// checked failures before backing off; whatever the interleaving, far
	// fewer than n were hashed.
	if checked > LoginFreeFailuresID+1+LoginInflightID || checked+throttled != n {
		t.Fatalf("%d checked, %d throttled of %d", checked, throttled, n)
	}
	t.Logf("burst of %d: %d checked, %d throttled", n, checked, throttled)
}

func TestThrottleKeepsASlotForCleanLogins(t *testing.T) {
	r, _ := throttleSetup(t, 2)
	th := r.throttle
	now := time.Now()
	// A suspect attempt holds the shared slot...
	th.mu.Lock()
	fail(th.record(th.addrs, "203.0.113.1", now), now, LoginFreeFailuresAddr, LoginMaxBackoffAddr)
	th.mu.Unlock()
	held, err := th.begin("ops", "203.0.113.1", func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	// ...a second suspect gets none within LoginSlotWait...
	th.mu.Lock()
	fail(th.record(th.addrs, "203.0.113.2", now), now, LoginFreeFailuresAddr, LoginMaxBackoffAddr)
	th.mu.Unlock()
	if _, err := th.begin("ops2", "203.0.113.2", func() time.Time { return now }); scopeOf(err) != ThrottleBusy {
		t.Fatalf("second suspect: %v, want busy", err)
	}
	// ...but a clean one does.
	clean, err := th.begin("ops2", "198.51.100.2", func() time.Time { return now })
	if err != nil {
		t.Fatalf("clean attempt while the shared slot is held: %v", err)
	}
	clean.done(true, now)
	held.done(false, now)
}

func TestThrottleMapsAreBounded(t *testing.T) {
	th := newThrottle(2)
	now := time.Now()
	for i := range loginMaxTracked + 10 {
		th.mu.Lock()
		f := th.record(th.addrs, fmt.Sprint(i), now)
		fail(f, now, LoginFreeFailuresAddr, LoginMaxBackoffAddr)
		th.mu.Unlock()
	}
	if n := len(th.addrs); n > loginMaxTracked+1 {
		t.Fatalf("%d records, bound %d", n, loginMaxTracked)
	}
	// A new key while full of live records counts as failed before.
	th.mu.Lock()
	f := th.record(th.addrs, "fresh", now)
	th.mu.Unlock()
	if f.n == 0 {
		t.Fatal("a key that could not be tracked counts as clean")
	}
	// Once the records are stale, the map makes room.
	later := now.Add(LoginForget + 2*time.Second)
	th.mu.Lock()
	f = th.record(th.addrs, "fresh2", later)
	th.mu.Unlock()
	if f.n != 0 || len(th.addrs) > 2 {
		t.Fatalf("stale records not swept: %d left", len(th.addrs))
	}
}

// TestThrottleCountsSessionsAsTheirOperator: guesses through session
// client IDs "ops~SUFFIX" count toward ops, so a fresh suffix per guess
// does not evade the backoff.
func TestThrottleCountsSessionsAsTheirOperator(t *testing.T) {
	r, _ := throttleSetup(t, 0)
	for i := range LoginFreeFailuresID + 1 {
		_, err := r.AuthenticateClient(Credentials{ClientID: fmt.Sprintf("ops~s%d", i), Username: "ops", Password: []byte("wrong"),
			Remote: fmt.Sprintf("10.9.0.%d:1", i)})
		if !errors.Is(err, ErrBadCredentials) {
			t.Fatalf("guess %d: %v", i, err)
		}
	}
	_, err := r.AuthenticateClient(Credentials{ClientID: "ops~fresh", Username: "ops", Password: []byte(opPW), Remote: "10.9.1.1:1"})
	if scopeOf(err) != ThrottleID {
		t.Fatalf("a new session suffix after the guesses: %v, want throttled by client_id", err)
	}
}

// TestThrottleParallelGoodLogins: more good logins of one operator at once
// than may be checked at once wait their turn instead of being refused.
func TestThrottleParallelGoodLogins(t *testing.T) {
	r, _ := throttleSetup(t, 2)
	// Twelve password hashes two at a time may take longer than
	// LoginInflightWait on a loaded machine; waiting is what is tested.
	r.throttle.inflightWait = 10 * time.Minute
	const n = 12
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- login(r, "ops", opPW, fmt.Sprintf("198.51.100.7:%d", 1000+i))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a parallel good login: %v", err)
		}
	}
}
