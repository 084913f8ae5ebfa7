package test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/hooks"
	"github.com/otamq/otamq/ota/clock"
)

// rawLogin sends an MQTT 3.1.1 CONNECT from the local address from (an
// IP on the loopback network, "" for any) and returns the CONNACK return
// code and how long the answer took.
func rawLogin(addr, from, id, pass string) (byte, time.Duration, error) {
	var buf bytes.Buffer
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: id,
			UsernameFlag: true, Username: []byte(id), PasswordFlag: true, Password: []byte(pass)}}
	if err := pk.ConnectEncode(&buf); err != nil {
		return 0, 0, err
	}
	d := net.Dialer{Timeout: 10 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	start := time.Now()
	if _, err := c.Write(buf.Bytes()); err != nil {
		return 0, 0, err
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil {
		return 0, time.Since(start), fmt.Errorf("no CONNACK: %w", err)
	}
	if ack[0]>>4 != packets.Connack {
		return 0, time.Since(start), fmt.Errorf("packet type %d, want CONNACK", ack[0]>>4)
	}
	return ack[3], time.Since(start), nil
}

// TestLoginFloodDoesNotLockOutOthers: during 1000 parallel bad logins for
// the operators' IDs, from four addresses, a good login of another
// operator from another address succeeds, and most of the flood is
// refused without a password check (throttled). Without throttling all of
// them queue for the two password check slots (about 10 s of hashing). How
// long the good login took is logged, not checked: a threshold would
// measure the machine.
func TestLoginFloodDoesNotLockOutOthers(t *testing.T) {
	b := startBroker(t)
	b.addOperator("victim", "operator", "victim password 123")
	b.addOperator("other", "operator", "other password 1234")

	const n = 1000
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[byte]int{}
	var floodErr error
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			from := fmt.Sprintf("127.0.0.%d", 2+i%4)
			id := []string{"victim", opID}[i%2]
			rc, _, err := rawLogin(b.Addr(), from, id, fmt.Sprintf("guess %d", i))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				floodErr = err
				return
			}
			codes[rc]++
		}()
	}
	// The good login, while the flood runs.
	time.Sleep(0) // let the flood start dialling first
	var took time.Duration
	eventually(t, 10*time.Second, func() error {
		mu.Lock()
		started := codes[5]
		mu.Unlock()
		if started < 10 {
			return fmt.Errorf("flood not under way (%d refusals so far)", started)
		}
		return nil
	})
	rc, took, err := rawLogin(b.Addr(), "127.0.0.1", "other", "other password 1234")
	wg.Wait()
	if err != nil || rc != 0 {
		t.Fatalf("good login during the flood: rc %d, %v", rc, err)
	}
	t.Logf("good login answered in %v during a flood of %d bad ones; refusal codes %v", took, n, codes)
	if floodErr != nil {
		t.Fatalf("flood connection: %v", floodErr)
	}
	if codes[5] != n {
		t.Fatalf("flood answers %v, want %d × 5 (not authorized)", codes, n)
	}
	v, err := b.metric(`otamq_logins_throttled_total{scope="client_id"}`)
	if err != nil {
		t.Fatal(err)
	}
	va, _ := b.metric(`otamq_logins_throttled_total{scope="address"}`)
	vb, _ := b.metric(`otamq_logins_throttled_total{scope="busy"}`)
	if total := atoi(v) + atoi(va) + atoi(vb); total < n/2 {
		t.Fatalf("only %d of %d bad logins throttled (client_id %s, address %s, busy %s)", total, n, v, va, vb)
	}
}

// TestLoginGuessingBacksOff: after a few wrong passwords an operator ID
// is refused without a check, even with the right password, for the
// backoff; other operators are not affected.
func TestLoginGuessingBacksOff(t *testing.T) {
	// The backoff runs on the broker's clock, a fake one here, so that it
	// cannot run out between two guesses on a slow machine.
	clk := clock.NewFake(time.Now())
	b := startBroker(t, func(o *broker.Options) { o.Clock = clk })
	b.addOperator("guessed", "operator", "guessed password 12")
	for i := range 6 {
		if rc, _, err := rawLogin(b.Addr(), "127.0.0.9", "guessed", fmt.Sprintf("wrong %d", i)); err != nil || rc != 5 {
			t.Fatalf("guess %d: rc %d, %v", i, rc, err)
		}
	}
	if rc, _, err := rawLogin(b.Addr(), "127.0.0.10", "guessed", "guessed password 12"); err != nil || rc != 5 {
		t.Fatalf("right password during the backoff: rc %d, %v (want refused)", rc, err)
	}
	if v, err := b.metric(`otamq_logins_throttled_total{scope="client_id"}`); err != nil || atoi(v) < 2 {
		t.Fatalf("throttled logins by client_id = %q, %v", v, err)
	}
	if rc, _, err := rawLogin(b.Addr(), "127.0.0.10", opID, opPassword); err != nil || rc != 0 {
		t.Fatalf("another operator: rc %d, %v", rc, err)
	}
	// The backoff ends: 1 s after the fourth failure, the only one past
	// the free three (the guesses after it were throttled, not checked).
	clk.Advance(time.Second)
	if rc, _, err := rawLogin(b.Addr(), "127.0.0.11", "guessed", "guessed password 12"); err != nil || rc != 0 {
		t.Fatalf("right password after the backoff: rc %d, %v", rc, err)
	}
}

// TestLoginRefusalsLookAlike: an unknown ID, an operator with a wrong
// password, a device with a wrong token and a throttled attempt get the
// same answer after the same time, so that refusals do not tell which IDs
// exist or are operators.
func TestLoginRefusalsLookAlike(t *testing.T) {
	b := startBroker(t)
	b.register("known-dev", "device", "")
	kinds := []struct{ name, id, from string }{
		{"unknown id", "nobody-here", "127.0.0.20"},
		{"operator, wrong password", opID, "127.0.0.21"},
		{"device, wrong token", "known-dev", "127.0.0.22"},
	}
	// Interleaved, so that each kind meets the same load on the machine.
	const rounds = 9
	times := map[string][]time.Duration{}
	for i := range rounds {
		for _, k := range kinds {
			rc, d, err := rawLogin(b.Addr(), k.from, k.id, fmt.Sprintf("wrong %d", i))
			if err != nil || rc != 5 {
				t.Fatalf("%s: rc %d, %v", k.name, rc, err)
			}
			if d < hooks.DefaultRefusalDelay {
				t.Fatalf("%s answered after %v, before the uniform refusal delay %v", k.name, d, hooks.DefaultRefusalDelay)
			}
			times[k.name] = append(times[k.name], d)
		}
	}
	medians := map[string]time.Duration{}
	for name, ds := range times {
		slices.Sort(ds)
		medians[name] = ds[rounds/2]
	}
	t.Logf("median refusal times: %v", medians)
	lo, hi := time.Hour, time.Duration(0)
	for _, m := range medians {
		lo, hi = min(lo, m), max(hi, m)
	}
	// The delay hides the hash (and grows with it on a loaded machine);
	// what is left is scheduling noise.
	if hi-lo > max(hooks.DefaultRefusalDelay/4, hi/4) {
		t.Fatalf("refusal times differ by %v: %v", hi-lo, medians)
	}
}
