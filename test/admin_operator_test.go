package test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/otamq/otamq/cmd/otactl/rpc"
)

// TestOperatorCannotLockEveryoneOut: an operator cannot revoke itself or
// the last operator, two operators revoking each other at once leave one,
// and an operator that rotates its own password gets the new one (before,
// its own connection was ended before the reply with the password was
// sent).
func TestOperatorCannotLockEveryoneOut(t *testing.T) {
	b := startBroker(t)
	b.addOperator("ann", "operator", "operator password 2")
	var re *rpc.RemoteError
	if err := b.admin().Call(context.Background(), "operator/revoke", map[string]any{"id": opID}, nil); !errors.As(err, &re) || re.Code != "forbidden" {
		t.Fatalf("an operator revoked itself: %v", err)
	}
	// The same through otactl.
	if _, errOut, code := b.otactl("", "operator", "revoke", opID); code != 1 || !strings.Contains(errOut, "cannot revoke itself") {
		t.Fatalf("otactl operator revoke self: exit %d\n%s", code, errOut)
	}

	// ann rotates her own password: she gets it, her connection stays,
	// and the new password is the one that works.
	ann := b.dial("ann", "operator password 2")
	var res struct {
		Password string `json:"password"`
	}
	if err := ann.Call(context.Background(), "operator/update", map[string]any{"id": "ann", "rotate_password": true}, &res); err != nil || res.Password == "" {
		t.Fatalf("rotating her own password: %q %v", res.Password, err)
	}
	if err := ann.Call(context.Background(), "device/list", nil, nil); err != nil {
		t.Fatalf("the connection that rotated its password: %v", err)
	}
	if _, err := rpc.Dial(context.Background(), rpc.Config{URL: b.url(), Username: "ann", Password: "operator password 2"}); err == nil {
		t.Fatal("the old password still works")
	}
	b.dial("ann", res.Password)

	// ops and ann revoke each other at once: exactly one of them goes.
	annNew := b.dial("ann", res.Password)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, c := range []struct {
		cl     *rpc.Client
		target string
	}{{b.admin(), "ann"}, {annNew, opID}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.cl.Call(context.Background(), "operator/revoke", map[string]any{"id": c.target}, nil)
		}()
	}
	wg.Wait()
	t.Logf("errs %v / %v", errs[0], errs[1])
	if (errs[0] == nil) == (errs[1] == nil) {
		t.Fatalf("revoking each other: %v / %v; want exactly one to succeed", errs[0], errs[1])
	}
	survivor, pw := opID, opPassword
	if errs[0] != nil {
		survivor, pw = "ann", res.Password
	}
	// The survivor is the last operator, and cannot revoke itself.
	last := b.dial(survivor, pw)
	if err := last.Call(context.Background(), "operator/revoke", map[string]any{"id": survivor}, nil); !errors.As(err, &re) {
		t.Fatalf("the last operator revoked itself: %v", err)
	}
	if err := last.Call(context.Background(), "device/list", nil, nil); err != nil {
		t.Fatalf("the last operator: %v", err)
	}
}
