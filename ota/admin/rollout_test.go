package admin

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/otamq/otamq/ota/delivery"
	"github.com/otamq/otamq/ota/event"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/release"
	"github.com/otamq/otamq/ota/rollout"
	"github.com/otamq/otamq/ota/store"
)

// newRolloutEnv is newEnv with a catalog, a delivery service and a rollout
// engine.
func newRolloutEnv(t *testing.T) *env {
	t.Helper()
	e := newEnv(t)
	feed := &event.Feed{}
	var err error
	if e.reg, err = fleet.Open(e.db, &fleet.Options{Feed: feed}); err != nil {
		t.Fatal(err)
	}
	cat, err := release.Open(e.db, nil)
	if err != nil {
		t.Fatal(err)
	}
	dlv, err := delivery.New(e.db, cat, e.reg, &delivery.Options{Feed: feed})
	if err != nil {
		t.Fatal(err)
	}
	eng, err := rollout.New(e.db, e.reg, cat, dlv, &rollout.Options{Feed: feed})
	if err != nil {
		t.Fatal(err)
	}
	if e.svc, err = New(e.db, e.reg, &Options{Disconnector: e.kicks, Rate: -1, Catalog: cat, Delivery: dlv, Rollouts: eng}); err != nil {
		t.Fatal(err)
	}
	return e
}

// rolloutSnapshot returns the rollout and offer buckets.
func (e *env) rolloutSnapshot() string {
	var b strings.Builder
	_ = e.db.View(context.Background(), func(tx store.Tx) error {
		for _, bucket := range []string{"rollouts", "rollout_devices", "offers"} {
			_ = tx.Scan(bucket, nil, false, func(k, v []byte) error {
				fmt.Fprintf(&b, "%s/%q=%q\n", bucket, k, v)
				return nil
			})
		}
		return nil
	})
	return b.String() + e.snapshot()
}

func TestRolloutVerbs(t *testing.T) {
	e := newRolloutEnv(t)
	rel := signedRelease(t, e, "1.1.0", "esp32-v2")
	for i := 0; i < 4; i++ {
		groups := []string{}
		if i == 0 {
			groups = []string{"canary"}
		}
		e.ok(op, "device/register", map[string]any{"id": fmt.Sprintf("dev-%d", i), "hardware": "esp32-v2", "groups": groups})
	}
	e.ok(op, "operator/add", map[string]any{"id": "bob", "password": "correct horse battery"})
	bob := op
	bob.ID = "bob"
	spec := "id: r1\nrelease: " + rel + "\napproval: true\nwaves: [{groups: [canary]}, {percent: [100]}]\n"

	// Refused specs and verbs change nothing, are audited, and list every
	// problem.
	for _, c := range []struct {
		caller        Caller
		action        string
		body          any
		code, problem string
	}{
		{op, "rollout/create", map[string]any{"yaml": "release: [\n"}, CodeBadRequest, "line"},
		{op, "rollout/create", map[string]any{"yaml": "release: x\nwaves: []\nfoo: 1\n"}, CodeBadRequest, "foo"},
		{op, "rollout/create", map[string]any{"yaml": "release: " + rel + "\nwaves: [{groups: [nosuch]}]\n"}, CodeBadRequest, "selects no device"},
		{op, "rollout/create", map[string]any{"yaml": spec, "id": "r9"}, CodeBadRequest, ""},
		{op, "rollout/create", map[string]any{"yaml": spec, "colour": "red"}, CodeBadRequest, ""},
		{observer, "rollout/create", map[string]any{"yaml": spec}, CodeForbidden, ""},
		{op, "rollout/start", map[string]any{"id": "nope"}, CodeNotFound, ""},
		{op, "rollout/start", map[string]any{}, CodeBadRequest, ""},
		{op, "rollout/devices", map[string]any{"id": "r1", "state": "sleeping"}, CodeBadRequest, ""},
		{op, "rollout/list", map[string]any{"state": "sleeping"}, CodeBadRequest, ""},
	} {
		before := e.rolloutSnapshot()
		m, code := e.do(c.caller, c.action, c.body)
		if code != c.code {
			t.Errorf("%s %v: %q %v", c.action, c.body, code, m["error"])
			continue
		}
		if c.problem != "" {
			probs, _ := m["error"].(map[string]any)["problems"].([]any)
			found := false
			for _, p := range probs {
				found = found || strings.Contains(p.(map[string]any)["message"].(string), c.problem)
			}
			if !found {
				t.Errorf("%s: no problem %q in %v", c.action, c.problem, m["error"])
			}
		}
		if e.rolloutSnapshot() != before {
			t.Errorf("%s %v changed the store", c.action, c.body)
		}
	}

	// Observers may plan.
	p := e.ok(observer, "rollout/plan", map[string]any{"yaml": spec})
	if p["devices"].(float64) != 4 || p["provisional"] != nil {
		t.Fatalf("plan %v", p)
	}
	res := e.ok(op, "rollout/create", map[string]any{"yaml": spec})
	if v := res["rollout"].(map[string]any); v["state"] != "awaiting_approval" || v["id"] != "r1" {
		t.Fatalf("create %v", v)
	}
	if _, code := e.do(op, "rollout/start", map[string]any{"id": "r1"}); code != CodeConflict {
		t.Fatalf("start before approval: %s", code)
	}
	if _, code := e.do(op, "rollout/approve", map[string]any{"id": "r1"}); code != CodeForbidden {
		t.Fatalf("approve by the creator: %s", code)
	}
	e.ok(bob, "rollout/approve", map[string]any{"id": "r1"})
	if v := e.ok(op, "rollout/start", map[string]any{"id": "r1"}); v["state"] != "running" {
		t.Fatal(v)
	}
	// A manual offer to a device the rollout holds is refused for it.
	r := e.ok(op, "offer/create", map[string]any{"release": rel, "devices": []string{"dev-1"}})
	if res := r["results"].([]any)[0].(map[string]any); res["ok"] == true || !strings.Contains(res["error"].(string), "rollout r1") {
		t.Fatalf("manual offer %v", res)
	}
	if v := e.ok(op, "rollout/pause", map[string]any{"id": "r1", "reason": "lunch"}); v["state"] != "paused" || v["reason"] != "lunch" {
		t.Fatal(v)
	}
	if _, code := e.do(op, "rollout/pause", map[string]any{"id": "r1"}); code != CodeConflict {
		t.Fatal(code)
	}
	e.ok(op, "rollout/resume", map[string]any{"id": "r1"})
	g := e.ok(observer, "rollout/get", map[string]any{"id": "r1"})
	if g["spec"] != spec || len(g["waves"].([]any)) != 2 {
		t.Fatalf("get %v", g)
	}
	if l := e.ok(observer, "rollout/list", nil)["rollouts"].([]any); len(l) != 1 {
		t.Fatal(l)
	}
	ds := e.ok(observer, "rollout/devices", map[string]any{"id": "r1", "wave": "canary"})["devices"].([]any)
	if len(ds) != 1 || ds[0].(map[string]any)["device"] != "dev-0" {
		t.Fatal(ds)
	}
	a := e.ok(op, "rollout/abort", map[string]any{"id": "r1"})
	if a["rollout"].(map[string]any)["state"] != "aborted" {
		t.Fatal(a)
	}
	// Every request is on the record, with its target.
	for _, action := range []string{"rollout/create", "rollout/approve", "rollout/start", "rollout/pause", "rollout/resume", "rollout/abort", "rollout/get", "rollout/plan"} {
		recs := e.ok(op, "audit/list", map[string]any{"action": action})["records"].([]any)
		if len(recs) == 0 {
			t.Errorf("no audit record of %s", action)
		}
	}
	recs := e.ok(op, "audit/list", map[string]any{"action": "rollout/start", "target": "r1"})["records"].([]any)
	if len(recs) != 2 { // refused before the approval, then started
		t.Errorf("%d records of rollout/start for r1", len(recs))
	}
}
