package admin

import (
	"fmt"
	"testing"

	"github.com/otamq/otamq/ota/audit"
	"github.com/otamq/otamq/ota/fleet"
)

func TestBatchRegister(t *testing.T) {
	e := newEnv(t)
	e.ok(op, "device/register", map[string]any{"id": "taken"})
	var devs []map[string]any
	devs = append(devs, map[string]any{"id": "gw-1", "role": "gateway"})
	for i := range 299 {
		devs = append(devs, map[string]any{"id": fmt.Sprintf("d%03d", i), "hardware": "esp32-v2", "parent": "gw-1",
			"groups": []string{"canary"}, "tags": map[string]string{"site": "a"}})
	}

	// A batch with mistakes: all of them reported, nothing registered.
	bad := append([]map[string]any{}, devs...)
	bad = append(bad, map[string]any{"id": "taken"}, map[string]any{"id": "d007"}, map[string]any{"id": "x", "hardware": "a b"},
		map[string]any{"id": "y", "parent": "nope"}, map[string]any{"id": "z", "role": "operator"})
	before := e.snapshot()
	m, code := e.do(op, "device/register", map[string]any{"devices": bad})
	if code != CodeBadRequest {
		t.Fatalf("bad batch: %q %v", code, m)
	}
	refused := m["error"].(map[string]any)["refused"].([]any)
	want := map[float64]string{300: CodeExists, 301: CodeExists, 302: CodeBadRequest, 303: CodeNotFound, 304: CodeBadRequest}
	if len(refused) != len(want) {
		t.Fatalf("refused %v", refused)
	}
	for _, r := range refused {
		r := r.(map[string]any)
		if want[r["index"].(float64)] != r["code"] || r["message"] == "" {
			t.Errorf("refusal %v", r)
		}
	}
	if e.snapshot() != before {
		t.Fatal("a refused batch changed the registry")
	}
	// The dry run finds the same, and changes nothing either way.
	if m, code := e.do(op, "device/register", map[string]any{"devices": bad, "dry_run": true}); code != CodeBadRequest ||
		len(m["error"].(map[string]any)["refused"].([]any)) != len(want) {
		t.Fatalf("dry run of the bad batch: %q %v", code, m)
	}
	res := e.ok(op, "device/register", map[string]any{"devices": devs, "dry_run": true})
	if res["dry_run"] != true || res["count"].(float64) != 300 || e.snapshot() != before {
		t.Fatalf("dry run: %v", res)
	}

	res = e.ok(op, "device/register", map[string]any{"devices": devs})
	got := res["registered"].([]any)
	if len(got) != 300 {
		t.Fatalf("registered %d", len(got))
	}
	for _, g := range got {
		g := g.(map[string]any)
		id, tok := g["id"].(string), g["token"].(string)
		if _, err := e.reg.Authenticate(fleet.Credentials{ClientID: id, Username: id, Password: []byte(tok)}); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
	if d, _ := e.reg.Lookup("d123"); d.Parent != "gw-1" || len(d.Groups) != 1 || d.Tags["site"] != "a" {
		t.Fatalf("d123: %+v", d)
	}
	// One audit record per registered device.
	if recs, _, _ := audit.List(e.db, audit.Query{Target: "d123", Action: "device/register"}); len(recs) != 1 || recs[0].Result != audit.ResultOK {
		t.Fatalf("audit of d123: %+v", recs)
	}
	recs, _, _ := audit.List(e.db, audit.Query{Action: "device/register", Limit: 1000})
	if len(recs) != 1+300+1+2 { // taken, the batch, the refused batch, two dry runs
		t.Fatalf("%d device/register records", len(recs))
	}

	for _, body := range []map[string]any{
		{"devices": make([]map[string]any, MaxBatch+1)},
		{"devices": []map[string]any{}},
		{"id": "q", "devices": []map[string]any{{"id": "r"}}},
		{"id": "q", "dry_run": true},
	} {
		if _, code := e.do(op, "device/register", body); code != CodeBadRequest {
			t.Errorf("%v: %q", body, code)
		}
	}
}
