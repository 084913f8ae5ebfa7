package admin

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/audit"
	"github.com/otamq/otamq/ota/clock"
	"github.com/otamq/otamq/ota/delivery"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/release"
)

// newReleaseEnv is newEnv with a catalog and a delivery service.
func newReleaseEnv(t testing.TB, sender delivery.Sender, mods ...func(*Options)) *env {
	t.Helper()
	e := newEnv(t)
	cat, err := release.Open(e.db, nil)
	if err != nil {
		t.Fatal(err)
	}
	dlv, err := delivery.New(e.db, cat, e.reg, &delivery.Options{Sender: sender})
	if err != nil {
		t.Fatal(err)
	}
	o := &Options{Disconnector: e.kicks, Rate: -1, Catalog: cat, Delivery: dlv}
	for _, m := range mods {
		m(o)
	}
	if e.svc, err = New(e.db, e.reg, o); err != nil {
		t.Fatal(err)
	}
	return e
}

// TestMessagesQuoteBoundedInput: no error message repeats unbounded client
// input, whatever the field (the observer sent 60 KiB IDs).
func TestMessagesQuoteBoundedInput(t *testing.T) {
	e := newReleaseEnv(t, nil)
	long := strings.Repeat("x", 60*1024)
	e.ok(op, "device/register", map[string]any{"id": "dev-1", "hardware": "esp32-v2"})
	cases := []struct {
		caller Caller
		action string
		body   any
	}{
		{observer, "release/get", map[string]any{"id": long}},
		{observer, "device/get", map[string]any{"id": long}},
		{observer, "device/timeline", map[string]any{"id": long}},
		{observer, "device/list", map[string]any{"role": long}},
		{observer, "release/" + long, nil},
		{observer, "device/list", `{"` + long + `": 1}`},
		{op, "device/register", map[string]any{"id": long}},
		{op, "device/register", map[string]any{"id": "x", "role": long}},
		{op, "device/register", map[string]any{"id": "x", "hardware": long}},
		{op, "device/register", map[string]any{"id": "x", "connectivity": long}},
		{op, "device/register", map[string]any{"id": "x", "parent": long}},
		{op, "device/register", map[string]any{"id": "x", "tags": map[string]string{long: "v"}}},
		{op, "device/update", map[string]any{"id": long, "region": "eu"}},
		{op, "device/revoke", map[string]any{"id": long}},
		{op, "operator/add", map[string]any{"id": long}},
		{op, "operator/add", map[string]any{"id": "carol", "role": long}},
		{op, "operator/add", map[string]any{"id": "carol", "auth": long}},
		{op, "operator/revoke", map[string]any{"id": long}},
		{op, "key/revoke", map[string]any{"kid": long}},
		{op, "release/abort", map[string]any{"id": long}},
		{op, "offer/create", map[string]any{"release": long, "devices": []string{"dev-1"}}},
		{op, "offer/create", map[string]any{"release": "1.0.0", "devices": []string{long[:30000]}}},
		{op, "offer/create", map[string]any{"release": "1.0.0", "devices": []string{"dev-1"}, "install_mode": long}},
		{op, "offer/cancel", map[string]any{"devices": []string{long}}},
		{op, "command/send", map[string]any{"verb": long, "devices": []string{"dev-1"}}},
		{op, "command/send", map[string]any{"verb": "check", "devices": []string{long}}},
		{Caller{ID: "dev-1", Role: fleet.Role(long)}, "device/list", nil},
	}
	for _, c := range cases {
		m, code := e.do(c.caller, c.action, c.body)
		if code == "" {
			t.Errorf("%.40s: accepted", c.action)
			continue
		}
		raw, _ := json.Marshal(m["error"])
		if len(raw) > maxMessage+200 || strings.Contains(string(raw), strings.Repeat("x", 2*fleet.MaxQuote)) {
			t.Errorf("%.40s: the error repeats the input (%d bytes): %.200s", c.action, len(raw), raw)
		}
	}
	// Every one is on the record, bounded: no record is larger than a few
	// KiB, and none was dropped.
	recs, _, err := audit.List(e.db, audit.Query{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != len(cases)+1 {
		t.Fatalf("%d audit records, want %d", len(recs), len(cases)+1)
	}
	for _, r := range recs {
		if raw, _ := json.Marshal(r); len(raw) > 5*1024 {
			t.Errorf("audit record of %.40s is %d bytes", r.Action, len(raw))
		}
	}
}

// TestRateLimitPerCaller: beyond its burst a caller is refused with
// rate_limited and the time to wait, refusals cost no audit record each
// but are recorded together before its next accepted request, and other
// callers are not affected.
func TestRateLimitPerCaller(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC))
	e := newEnv(t, func(o *Options) { o.Rate, o.Burst, o.Clock = 2, 5, clk })
	for i := range 5 {
		if _, code := e.do(observer, "device/list", nil); code != "" {
			t.Fatalf("request %d of the burst: %s", i+1, code)
		}
	}
	before := auditCount(t, e)
	for range 20 {
		m, code := e.do(observer, "device/list", nil)
		if code != CodeRateLimited {
			t.Fatalf("over the burst: %q", code)
		}
		errObj := m["error"].(map[string]any)
		if ms := errObj["retry_after_ms"].(float64); ms < 1 || ms > 501 {
			t.Fatalf("retry_after_ms %v, want about 500", ms)
		}
	}
	if n := auditCount(t, e); n != before {
		t.Fatalf("refusals wrote %d audit records", n-before)
	}
	// Another caller has its own bucket.
	if _, code := e.do(op, "device/list", nil); code != "" {
		t.Fatalf("another caller: %s", code)
	}
	clk.Advance(500 * time.Millisecond)
	if _, code := e.do(observer, "device/list", nil); code != "" {
		t.Fatalf("after the wait: %s", code)
	}
	recs, _, _ := audit.List(e.db, audit.Query{Action: "admin/rate_limited"})
	if len(recs) != 1 || recs[0].Actor != observer.ID || recs[0].Result != CodeRateLimited {
		t.Fatalf("refusal records: %+v", recs)
	}
	var args struct {
		Refused int            `json:"refused"`
		Actions map[string]int `json:"actions"`
	}
	if err := json.Unmarshal(recs[0].Args, &args); err != nil || args.Refused != 20 || args.Actions["device/list"] != 20 {
		t.Fatalf("refusal record args %s: %v", recs[0].Args, err)
	}
	if _, code := e.do(observer, "device/list", nil); code != CodeRateLimited {
		t.Fatalf("the bucket refilled by one only: %q", code)
	}
}

func auditCount(t *testing.T, e *env) int {
	t.Helper()
	n := 0
	q := audit.Query{Limit: 1000}
	for {
		recs, next, err := audit.List(e.db, q)
		if err != nil {
			t.Fatal(err)
		}
		n += len(recs)
		if next == 0 {
			return n
		}
		q.Before = next
	}
}

// TestAuditRetentionThroughTheService: the service's log keeps at most its
// configured count however many requests arrive.
func TestAuditRetentionThroughTheService(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Audit = audit.Retention{MaxRecords: 50} })
	for i := range 300 {
		if _, code := e.do(observer, "device/get", map[string]any{"id": fmt.Sprintf("d%d", i)}); code != CodeNotFound {
			t.Fatalf("device/get: %q", code)
		}
	}
	if n := auditCount(t, e); n != 50 {
		t.Fatalf("the log holds %d records, want 50", n)
	}
}
