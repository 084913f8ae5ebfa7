package admin

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/otamq/otamq/ota/fleet"
)

// handleFit sends a request with a reply bound and checks the reply keeps
// it.
func (e *env) handleFit(c Caller, action string, body map[string]any, maxReply int) Response {
	e.t.Helper()
	raw, _ := json.Marshal(body)
	res, verb, _ := strings.Cut(action, "/")
	resp, _ := e.svc.Handle(e.t.(*testing.T).Context(), Request{Caller: c, Resource: res, Verb: verb, Body: raw, MaxReply: maxReply})
	if n := len(Encode(resp)); maxReply > 0 && n > maxReply {
		e.t.Fatalf("%s: a reply of %d bytes for a bound of %d", action, n, maxReply)
	}
	return resp
}

// pages reads a whole list with replies bounded to maxReply, following its
// cursor, and returns the items (as JSON) and the number of pages.
func (e *env) pages(c Caller, action string, body map[string]any, key, cursor string, maxReply int) ([]string, int) {
	e.t.Helper()
	var items []string
	for n := 1; ; n++ {
		resp := e.handleFit(c, action, body, maxReply)
		if !resp.OK {
			e.t.Fatalf("%s page %d: %v", action, n, resp.Error)
		}
		var m map[string]json.RawMessage
		_ = json.Unmarshal(Encode(resp), &m)
		var res map[string]json.RawMessage
		_ = json.Unmarshal(m["result"], &res)
		var page []json.RawMessage
		if err := json.Unmarshal(res[key], &page); err != nil {
			e.t.Fatalf("%s: %s: %v", action, res[key], err)
		}
		for _, it := range page {
			items = append(items, string(it))
		}
		next := string(res["next"])
		if next == `""` || next == "0" || next == "" {
			return items, n
		}
		if len(page) == 0 || n > 10_000 {
			e.t.Fatalf("%s: page %d is empty but has a cursor", action, n)
		}
		body[cursor] = json.RawMessage(next)
	}
}

// TestEveryListPagesToFit: with replies bounded (the requester's Maximum
// Packet Size), every list verb cuts its pages to what fits and its cursor
// continues after them, so a small client reads the whole list.
func TestEveryListPagesToFit(t *testing.T) {
	e := newReleaseEnv(t, nil)
	rel := signedRelease(t, e, "1.0.0", "esp32-v2")
	signedRelease(t, e, "1.0.1", "esp32-v2")
	signedRelease(t, e, "1.0.2", "esp32-v2")
	tags := map[string]string{}
	for i := range 8 {
		tags[fmt.Sprintf("tag%d", i)] = strings.Repeat("v", 40)
	}
	var devices []string
	for i := range 40 {
		id := fmt.Sprintf("dev-%02d", i)
		devices = append(devices, id)
		e.ok(op, "device/register", map[string]any{"id": id, "hardware": "esp32-v2", "tags": tags})
	}
	for i := range 5 {
		e.ok(op, "operator/add", map[string]any{"id": fmt.Sprintf("op-%d", i), "password": "a long password"})
	}
	for range 6 {
		e.ok(op, "offer/create", map[string]any{"release": rel, "devices": devices})
	}
	for _, c := range []struct {
		action, key, cursor string
		body                map[string]any
		maxReply            int
	}{
		{"device/list", "devices", "after", map[string]any{}, 2500},
		{"device/get", "", "", nil, 0},
		{"operator/list", "operators", "after", map[string]any{}, 600},
		{"audit/list", "records", "before", map[string]any{"action": "device/register"}, 1500},
		{"key/list", "keys", "after", map[string]any{}, 700},
		{"release/list", "releases", "after", map[string]any{}, 800},
		{"offer/list", "offers", "after", map[string]any{}, 900},
		{"device/timeline", "entries", "before", map[string]any{"id": "dev-07"}, 500},
		{"verbs/list", "actions", "after", map[string]any{}, 120},
	} {
		if c.key == "" {
			continue
		}
		whole, _ := e.pages(op, c.action, cloneMap(c.body), c.key, c.cursor, 0)
		got, n := e.pages(op, c.action, cloneMap(c.body), c.key, c.cursor, c.maxReply)
		if n < 2 {
			t.Errorf("%s: %d page(s) within %d bytes; the test wants several", c.action, n, c.maxReply)
		}
		if strings.Join(got, "\n") != strings.Join(whole, "\n") {
			t.Errorf("%s: read %d items in %d pages, want the %d of one unbounded read", c.action, len(got), n, len(whole))
		}
	}
}

func cloneMap(m map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range m {
		out[k] = v
	}
	return out
}

// TestReplyTooLarge: a reply that cannot fit becomes a small too_large error
// with its size; a change that was made says so.
func TestReplyTooLarge(t *testing.T) {
	e := newEnv(t)
	tags := map[string]string{}
	for i := range fleet.MaxTags {
		tags[fmt.Sprintf("t%02d", i)] = strings.Repeat("v", fleet.MaxTagValLen)
	}
	e.ok(op, "device/register", map[string]any{"id": "big", "tags": tags})
	resp := e.handleFit(observer, "device/get", map[string]any{"id": "big"}, 1000)
	if resp.OK || resp.Error.Code != CodeTooLarge || resp.Error.Size <= 1000 || resp.Error.Limit != 1000 {
		t.Fatalf("device/get that cannot fit: %+v", resp.Error)
	}
	// One device too large for a page is too large as well.
	resp = e.handleFit(observer, "device/list", map[string]any{}, 1000)
	if resp.OK || resp.Error.Code != CodeTooLarge {
		t.Fatalf("a list whose first item cannot fit: %+v", resp)
	}
	// A change whose reply cannot fit is made, and the error says so.
	resp = e.handleFit(op, "device/update", map[string]any{"id": "big", "region": "eu"}, 150)
	if resp.OK || resp.Error.Code != CodeTooLarge || !strings.Contains(resp.Error.Message, "carried out") {
		t.Fatalf("update whose reply cannot fit: %+v", resp.Error)
	}
	if d, _ := e.reg.Lookup("big"); d.Region != "eu" {
		t.Fatal("the change said to be carried out is not there")
	}
	// A registration's token is shown once: one whose reply cannot fit is
	// refused before anything is registered.
	resp = e.handleFit(op, "device/register", map[string]any{"id": "new-1"}, 150)
	if resp.OK || resp.Error.Code != CodeTooLarge {
		t.Fatalf("register whose reply cannot fit: %+v", resp.Error)
	}
	if _, ok := e.reg.Lookup("new-1"); ok {
		t.Fatal("registered although its token could not be returned")
	}
}
