package test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/otamq/otamq/cmd/otactl/rpc"
)

// TestOperatorSessionsRunSideBySide: otactl connects as a session of the
// operator, "OPERATOR~SUFFIX", so parallel otactl runs of one operator no
// longer take over each other's connection (before, the client ID was the
// operator's ID and each run threw the previous one out).
func TestOperatorSessionsRunSideBySide(t *testing.T) {
	b := startBroker(t)
	const runs = 6
	var wg sync.WaitGroup
	errs := make([]string, runs)
	for i := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each run registers several devices on one connection, so
			// the runs overlap.
			for j := range 5 {
				out, errOut, code := b.otactl("", "device", "register", fmt.Sprintf("p%d-%d", i, j))
				if code != 0 {
					errs[i] = fmt.Sprintf("exit %d\n%s%s", code, out, errOut)
					return
				}
			}
		}()
	}
	// Two long-lived clients of the same operator at the same time.
	a, c := b.dial(opID, opPassword), b.dial(opID, opPassword)
	for i := range 20 {
		for _, cl := range []*rpc.Client{a, c} {
			if err := cl.Call(context.Background(), "device/list", map[string]any{"limit": 1}, nil); err != nil {
				t.Fatalf("call %d on a parallel session: %v", i, err)
			}
		}
	}
	wg.Wait()
	for i, e := range errs {
		if e != "" {
			t.Errorf("otactl run %d: %s", i, e)
		}
	}
	// The audit actor is the operator; the session is recorded beside it.
	recs := auditAll(t, a, map[string]any{"actor": opID, "action": "device/register"})
	if len(recs) != runs*5 {
		t.Fatalf("%d device/register records by %s, want %d", len(recs), opID, runs*5)
	}
	for _, r := range recs {
		if !strings.HasPrefix(r.Session, opID+"~") {
			t.Fatalf("record of %s without its session: %+v", r.Target, r)
		}
	}
}

// session connects a session client ID of operator user.
func (b *tb) session(clientID, user, password string) *client {
	b.t.Helper()
	c, err := dialClient(b.t, b.Addr(), clientID, clientOpts{username: user, password: password})
	if err != nil {
		b.t.Fatalf("connect %s: %v", clientID, err)
	}
	return c
}

// TestSessionIdentity: what a session client ID may and may not do.
func TestSessionIdentity(t *testing.T) {
	b := startBroker(t)
	tok := b.register("dev-1", "device", "")
	b.addOperator("olga", "observer", "observer password 1")
	b.addOperator("ann", "operator", "operator password 2")
	refused := []struct {
		name, id, user, pass string
	}{
		{"a device has no sessions", "dev-1~x", "dev-1", tok},
		{"empty suffix", opID + "~", opID, opPassword},
		{"two separators", opID + "~a~b", opID, opPassword},
		{"no operator", "~abc", opID, opPassword},
		{"suffix too long", opID + "~" + strings.Repeat("a", 33), opID, opPassword},
		{"suffix with another character", opID + "~a+b", opID, opPassword},
		{"username of another operator", opID + "~x", "ann", "operator password 2"},
		{"wrong password", opID + "~x", opID, "wrong password here"},
		{"unknown operator", "nobody~x", "nobody", opPassword},
	}
	for _, c := range refused {
		cl, err := dialClient(t, b.Addr(), c.id, clientOpts{username: c.user, password: c.pass})
		if err == nil || cl.ca == nil || cl.ca.ReasonCode != 0x87 {
			code := byte(0)
			if cl != nil && cl.ca != nil {
				code = cl.ca.ReasonCode
			}
			t.Errorf("%s (%s): connected or refused with 0x%02x, want 0x87 (%v)", c.name, c.id, code, err)
		}
	}

	// A session reads its own replies only.
	s1 := b.session(opID+"~s1", opID, opPassword)
	if rc := s1.subscribe("dm/admin/reply/" + opID + "~s1/#"); rc != 1 {
		t.Fatalf("own reply topic: 0x%02x", rc)
	}
	for _, other := range []string{"dm/admin/reply/" + opID + "~s2/#", "dm/admin/reply/" + opID + "/#", "dm/admin/reply/+/#"} {
		if rc := s1.subscribe(other); rc != 0x87 {
			t.Errorf("session subscribed to %s: 0x%02x", other, rc)
		}
	}
	plain := b.operator(opID, opPassword)
	if rc := plain.subscribe("dm/admin/reply/" + opID + "~s1/#"); rc != 0x87 {
		t.Errorf("the operator's own connection reads a session's replies: 0x%02x", rc)
	}

	// An observer's session stays read-only.
	obs := b.dial("olga", "observer password 1")
	if err := obs.Call(context.Background(), "device/list", nil, nil); err != nil {
		t.Fatalf("observer session list: %v", err)
	}
	var re *rpc.RemoteError
	if err := obs.Call(context.Background(), "device/register", map[string]any{"id": "x"}, nil); !errors.As(err, &re) || re.Code != "mqtt_0x87" {
		t.Fatalf("observer session registers: %v", err)
	}
	if rc := b.session("olga~w", "olga", "observer password 1").publish("dm/admin/device/register", []byte(`{"id":"y"}`)); rc != 0x87 {
		t.Fatalf("observer session publishes a write request: 0x%02x", rc)
	}

	// Revoking an operator ends every one of its sessions.
	ann1, ann2 := b.session("ann~1", "ann", "operator password 2"), b.session("ann~2", "ann", "operator password 2")
	annPlain := b.operator("ann", "operator password 2")
	if err := b.admin().Call(context.Background(), "operator/revoke", map[string]any{"id": "ann"}, nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*client{ann1, ann2, annPlain} {
		select {
		case <-c.cli.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("%s still connected after ann was revoked", c.id)
		}
	}
	if _, err := dialClient(t, b.Addr(), "ann~3", clientOpts{username: "ann", password: "operator password 2"}); err == nil {
		t.Fatal("a revoked operator opened a session")
	}
}
