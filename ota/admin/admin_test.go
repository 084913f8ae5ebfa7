package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/fleet/fleettest"
	"github.com/otamq/otamq/ota/store"
)

type kicks struct {
	mu    sync.Mutex
	ids   []string
	keeps []string
}

func (k *kicks) Disconnect(id, keep string) {
	k.mu.Lock()
	k.ids = append(k.ids, id)
	k.keeps = append(k.keeps, keep)
	k.mu.Unlock()
}

type env struct {
	t     testing.TB
	db    store.Store
	reg   *fleet.Registry
	svc   *Service
	kicks *kicks
}

// newEnv returns a service without a rate limit (the tests of the limit
// set their own).
func newEnv(t testing.TB, mods ...func(*Options)) *env {
	t.Helper()
	db, reg := fleettest.Open(t, nil)
	k := &kicks{}
	o := &Options{Disconnector: k, Rate: -1}
	for _, m := range mods {
		m(o)
	}
	svc, err := New(db, reg, o)
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, db: db, reg: reg, svc: svc, kicks: k}
}

var (
	op       = Caller{ID: "alice", Role: fleet.RoleOperator, Remote: "127.0.0.1:5000"}
	observer = Caller{ID: "olga", Role: fleet.RoleObserver}
)

// do sends a request and returns the reply as generic JSON.
func (e *env) do(c Caller, action string, body any) (map[string]any, string) {
	e.t.Helper()
	var raw []byte
	switch b := body.(type) {
	case nil:
	case string:
		raw = []byte(b)
	default:
		raw, _ = json.Marshal(b)
	}
	res, verb, _ := strings.Cut(action, "/")
	resp, code := e.svc.Handle(context.Background(), Request{Caller: c, Resource: res, Verb: verb, Body: raw})
	out, err := json.Marshal(resp)
	if err != nil {
		e.t.Fatal(err)
	}
	var m map[string]any
	_ = json.Unmarshal(out, &m)
	if resp.OK != (code == "") {
		e.t.Fatalf("ok=%v but code %q", resp.OK, code)
	}
	return m, code
}

func (e *env) ok(c Caller, action string, body any) map[string]any {
	e.t.Helper()
	m, code := e.do(c, action, body)
	if code != "" {
		e.t.Fatalf("%s: %v", action, m["error"])
	}
	return m["result"].(map[string]any)
}

// snapshot returns every bucket except the audit log, to prove a refused
// request changed nothing.
func (e *env) snapshot() string {
	var b strings.Builder
	_ = e.db.View(context.Background(), func(tx store.Tx) error {
		for _, bucket := range []string{"clients", "status", "meta"} {
			_ = tx.Scan(bucket, nil, false, func(k, v []byte) error {
				fmt.Fprintf(&b, "%s/%s=%s\n", bucket, k, v)
				return nil
			})
		}
		return nil
	})
	return b.String()
}

func TestRegisterGetListUpdateRevoke(t *testing.T) {
	e := newEnv(t)
	gw := e.ok(op, "device/register", map[string]any{"id": "gw-1", "role": "gateway", "hardware": "rpi4", "region": "eu"})
	if tok, _ := gw["token"].(string); len(tok) < 22 {
		t.Fatalf("gateway token %q is too short for 128 bits", tok)
	}
	res := e.ok(op, "device/register", map[string]any{"id": "dev-1", "hardware": "esp32-v2", "region": "eu",
		"groups": []string{"canary", "canary", "lab"}, "tags": map[string]string{"floor": "3"}, "parent": "gw-1"})
	token := res["token"].(string)
	dev := res["device"].(map[string]any)
	if dev["role"] != "device" || dev["auth"] != "token" || fmt.Sprint(dev["groups"]) != "[canary lab]" {
		t.Fatalf("registered %v", dev)
	}
	if _, leaked := dev["secret"]; leaked {
		t.Fatal("reply carries the credential hash")
	}
	if _, err := e.reg.Authenticate(fleet.Credentials{ClientID: "dev-1", Username: "dev-1", Password: []byte(token)}); err != nil {
		t.Fatalf("token from register does not authenticate: %v", err)
	}
	e.ok(op, "device/register", map[string]any{"id": "dev-2", "hardware": "esp32-v3", "region": "us"})

	got := e.ok(observer, "device/get", map[string]any{"id": "dev-1"})
	if got["parent"] != "gw-1" || got["status"] == nil {
		t.Fatalf("get: %v", got)
	}

	list := e.ok(observer, "device/list", map[string]any{"region": "eu"})
	if n := len(list["devices"].([]any)); n != 2 {
		t.Fatalf("region eu lists %d, want 2", n)
	}
	list = e.ok(op, "device/list", map[string]any{"tag": "floor=3"})
	if n := len(list["devices"].([]any)); n != 1 {
		t.Fatalf("tag floor=3 lists %d, want 1", n)
	}
	// Paging: one at a time walks all three in ID order.
	var ids []string
	after := ""
	for range 5 {
		page := e.ok(op, "device/list", map[string]any{"limit": 1, "after": after})
		for _, d := range page["devices"].([]any) {
			ids = append(ids, d.(map[string]any)["id"].(string))
		}
		next, _ := page["next"].(string)
		if next == "" {
			break
		}
		after = next
	}
	if strings.Join(ids, ",") != "dev-1,dev-2,gw-1" {
		t.Fatalf("paged ids %v", ids)
	}

	upd := e.ok(op, "device/update", map[string]any{"id": "dev-1", "region": "us", "groups": []string{}, "rotate_token": true})
	newTok := upd["token"].(string)
	if newTok == "" || newTok == token {
		t.Fatal("rotate_token gave no new token")
	}
	if _, err := e.reg.Authenticate(fleet.Credentials{ClientID: "dev-1", Username: "dev-1", Password: []byte(token)}); err == nil {
		t.Fatal("old token still works after rotation")
	}
	if d, _ := e.reg.Lookup("dev-1"); d.Region != "us" || len(d.Groups) != 0 || d.Parent != "gw-1" {
		t.Fatalf("after update: %+v", d)
	}

	e.ok(op, "device/revoke", map[string]any{"id": "dev-1", "reason": "stolen"})
	if _, err := e.reg.Authenticate(fleet.Credentials{ClientID: "dev-1", Username: "dev-1", Password: []byte(newTok)}); err == nil {
		t.Fatal("revoked device authenticates")
	}
	if fmt.Sprint(e.kicks.ids) != "[dev-1 dev-1]" {
		t.Fatalf("disconnects: %v (want one for rotation, one for revocation)", e.kicks.ids)
	}
	// Reinstating needs a new token.
	if _, code := e.do(op, "device/update", map[string]any{"id": "dev-1", "reinstate": true}); code != CodeBadRequest {
		t.Fatalf("reinstate without new token: %s", code)
	}
	e.ok(op, "device/update", map[string]any{"id": "dev-1", "reinstate": true, "rotate_token": true})
}

func TestRefusedRequestsChangeNothing(t *testing.T) {
	e := newEnv(t)
	e.ok(op, "device/register", map[string]any{"id": "gw-1", "role": "gateway"})
	e.ok(op, "device/register", map[string]any{"id": "dev-1", "hardware": "esp32-v2"})
	e.ok(op, "operator/add", map[string]any{"id": "bob", "password": "correct horse battery"})
	cases := []struct {
		caller Caller
		action string
		body   any
		code   string
	}{
		{op, "device/register", map[string]any{"id": "dev-1"}, CodeExists},
		{op, "device/register", map[string]any{"id": "bad id"}, CodeBadRequest},
		{op, "device/register", map[string]any{"id": "admin"}, CodeBadRequest},
		{op, "device/register", map[string]any{"id": "x", "parent": "dev-1"}, CodeBadRequest},
		{op, "device/register", map[string]any{"id": "x", "parent": "nope"}, CodeNotFound},
		{op, "device/register", map[string]any{"id": "x", "role": "operator"}, CodeBadRequest},
		{op, "device/register", map[string]any{"id": "x", "hardware": "a b"}, CodeBadRequest},
		{op, "device/register", map[string]any{"id": "x", "connectivity": "carrier-pigeon"}, CodeBadRequest},
		{op, "device/register", map[string]any{"id": "x", "colour": "red"}, CodeBadRequest},
		{op, "device/register", `{"id": "x"} {"id": "y"}`, CodeBadRequest},
		{op, "device/register", `{"id": 7}`, CodeBadRequest},
		{op, "device/register", `[`, CodeBadRequest},
		{op, "device/register", strings.Repeat(" ", MaxBodySize+1), CodeTooLarge},
		{op, "device/update", map[string]any{"id": "nope", "region": "eu"}, CodeNotFound},
		{op, "device/update", map[string]any{"id": "dev-1", "parent": "dev-1"}, CodeBadRequest},
		{op, "device/update", map[string]any{"id": "bob", "region": "eu"}, CodeNotFound},
		{op, "device/revoke", map[string]any{"id": "bob"}, CodeNotFound},
		{op, "device/revoke", map[string]any{"id": "dev-1", "reason": strings.Repeat("x", 300)}, CodeBadRequest},
		{op, "device/list", map[string]any{"limit": 5000}, CodeBadRequest},
		{op, "device/list", map[string]any{"role": "operator"}, CodeBadRequest},
		{op, "device/explode", nil, CodeUnknownVerb},
		{op, "operator/add", map[string]any{"id": "carol", "password": "short"}, CodeBadRequest},
		{op, "operator/add", map[string]any{"id": "carol", "role": "device"}, CodeBadRequest},
		{op, "operator/revoke", map[string]any{"id": "dev-1"}, CodeNotFound},
		{observer, "device/register", map[string]any{"id": "x"}, CodeForbidden},
		{observer, "device/revoke", map[string]any{"id": "dev-1"}, CodeForbidden},
		{Caller{ID: "dev-1", Role: fleet.RoleDevice}, "device/list", nil, CodeForbidden},
	}
	for _, c := range cases {
		before := e.snapshot()
		m, code := e.do(c.caller, c.action, c.body)
		if code != c.code {
			t.Errorf("%s %v: code %q (%v), want %q", c.action, c.body, code, m["error"], c.code)
		}
		if after := e.snapshot(); after != before {
			t.Errorf("%s %v: refused request changed the store", c.action, c.body)
		}
	}
	// Every one of them is on the record, refused.
	recs := e.ok(op, "audit/list", map[string]any{"limit": 1000})["records"].([]any)
	refused := 0
	for _, r := range recs {
		if r.(map[string]any)["result"] != "ok" {
			refused++
		}
	}
	if refused != len(cases) {
		t.Fatalf("audit holds %d refusals, want %d", refused, len(cases))
	}
}

func TestOperatorsAndLastOperator(t *testing.T) {
	e := newEnv(t)
	created, pw, err := e.svc.EnsureOperator(context.Background(), "root", "")
	if err != nil || !created || len(pw) < 16 {
		t.Fatalf("EnsureOperator: %v %v %q", created, err, pw)
	}
	if again, _, _ := e.svc.EnsureOperator(context.Background(), "root2", ""); again {
		t.Fatal("second bootstrap created another operator")
	}
	if _, err := e.reg.Authenticate(fleet.Credentials{ClientID: "root", Username: "root", Password: []byte(pw)}); err != nil {
		t.Fatalf("bootstrap password: %v", err)
	}
	root := Caller{ID: "root", Role: fleet.RoleOperator}
	if _, code := e.do(root, "operator/revoke", map[string]any{"id": "root"}); code != CodeForbidden {
		t.Fatalf("revoking itself: %q", code)
	}
	// Someone not registered as an operator (the bootstrap's own
	// caller) still cannot revoke the last one.
	if _, code := e.do(Caller{ID: "otamq", Role: fleet.RoleOperator}, "operator/revoke", map[string]any{"id": "root"}); code != CodeBadRequest {
		t.Fatalf("revoking the last operator: %q", code)
	}
	res := e.ok(root, "operator/add", map[string]any{"id": "viewer", "role": "observer"})
	if res["password"] == "" {
		t.Fatal("no generated password")
	}
	list := e.ok(root, "operator/list", nil)["operators"].([]any)
	if len(list) != 2 {
		t.Fatalf("operators: %v", list)
	}
	// The audit log never holds a password.
	recs := e.ok(root, "audit/list", nil)["records"].([]any)
	raw, _ := json.Marshal(recs)
	if bytes.Contains(raw, []byte(pw)) || bytes.Contains(raw, []byte(res["password"].(string))) {
		t.Fatal("audit log contains a password")
	}
	if strings.Contains(string(raw), `"password":`) {
		t.Fatal("audit log records a password field")
	}
	// Audit is newest first and filterable.
	adds := e.ok(root, "audit/list", map[string]any{"action": "operator/add"})["records"].([]any)
	if len(adds) != 2 || adds[0].(map[string]any)["target"] != "viewer" {
		t.Fatalf("operator/add audit: %v", adds)
	}
}

func TestConcurrentRegistrationsDurableAndDistinct(t *testing.T) {
	e := newEnv(t)
	var wg sync.WaitGroup
	tokens := make([]string, 64)
	for i := range tokens {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, code := e.do(op, "device/register", map[string]any{"id": fmt.Sprintf("d%03d", i)})
			if code != "" {
				t.Error(m)
				return
			}
			tokens[i] = m["result"].(map[string]any)["token"].(string)
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, tok := range tokens {
		if seen[tok] {
			t.Fatal("duplicate token")
		}
		seen[tok] = true
		if _, err := e.reg.Authenticate(fleet.Credentials{ClientID: fmt.Sprintf("d%03d", i), Username: fmt.Sprintf("d%03d", i), Password: []byte(tok)}); err != nil {
			t.Fatal(err)
		}
	}
	// Reload from disk: everything acknowledged is there.
	reg2, err := fleet.Open(e.db, nil)
	if err != nil {
		t.Fatal(err)
	}
	if reg2.Len() != 64 {
		t.Fatalf("reloaded %d, want 64", reg2.Len())
	}
}
