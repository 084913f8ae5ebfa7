package test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/cmd/otactl/rpc"
	"github.com/otamq/otamq/httpapi"
	"github.com/otamq/otamq/ota/admin"
	"github.com/otamq/otamq/ota/clock"
	"github.com/otamq/otamq/ota/release"
)

// Every admin verb through the HTTP API, as an operator with a bearer
// token: the same results as over MQTT, lists paged with their cursor.
func TestAPIEveryVerb(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	op := b.apiLogin(opID, opPassword)

	var who sessionResult
	op.ok("GET", "/api/v1/session", nil, &who)
	if who.Operator != opID || who.Role != "operator" || who.CSRFToken == "" || !strings.HasPrefix(who.Handle, "http-") {
		t.Fatalf("session %+v", who)
	}
	var verbs struct{ Actions []string }
	op.ok("GET", "/api/v1/verbs?limit=100", nil, &verbs)
	if !slices.Contains(verbs.Actions, "rollout/start") || !slices.Contains(verbs.Actions, "audit/list") {
		t.Fatalf("verbs %v", verbs.Actions)
	}

	// Devices, paged.
	var reg struct {
		Token  string
		Device struct{ ID string }
	}
	op.ok("POST", "/api/v1/devices", map[string]any{"id": "api-d1", "role": "device", "hardware": "esp32-v2"}, &reg)
	if reg.Token == "" || reg.Device.ID != "api-d1" {
		t.Fatalf("register %+v", reg)
	}
	var batch struct{ Count int }
	op.ok("POST", "/api/v1/devices", map[string]any{"devices": []map[string]any{
		{"id": "api-d2", "role": "device", "hardware": "esp32-v2"}, {"id": "api-d3", "role": "device", "hardware": "esp32-v2"}}}, &batch)
	if batch.Count != 2 {
		t.Fatalf("batch %+v", batch)
	}
	type devPage struct {
		Devices []struct {
			ID     string
			Region string
		}
		Next string
	}
	var ids []string
	for after, pages := "", 0; ; pages++ {
		var p devPage
		q := "/api/v1/devices?hardware=esp32-v2&limit=2"
		if after != "" {
			q += "&after=" + after
		}
		op.ok("GET", q, nil, &p)
		for _, d := range p.Devices {
			ids = append(ids, d.ID)
		}
		if p.Next == "" {
			break
		}
		after = p.Next
		if pages > 5 {
			t.Fatal("paging does not end")
		}
	}
	if !slices.Equal(ids, []string{"api-d1", "api-d2", "api-d3"}) {
		t.Fatalf("paged devices %v", ids)
	}
	var upd struct{ Device struct{ Region string } }
	op.ok("PATCH", "/api/v1/devices/api-d1", map[string]any{"region": "eu"}, &upd)
	var got struct {
		ID     string
		Region string
	}
	op.ok("GET", "/api/v1/devices/api-d1", nil, &got)
	if got.Region != "eu" {
		t.Fatalf("device after update %+v", got)
	}
	var tl struct{ Entries []json.RawMessage }
	op.ok("GET", "/api/v1/devices/api-d1/timeline?limit=10", nil, &tl)
	op.ok("POST", "/api/v1/devices/api-d3/revoke", map[string]any{"reason": "lost"}, nil)

	// Operators.
	var added struct{ Password string }
	op.ok("POST", "/api/v1/operators", map[string]any{"id": "api-obs", "role": "observer"}, &added)
	if added.Password == "" {
		t.Fatal("no generated password")
	}
	var ops struct{ Operators []struct{ ID string } }
	op.ok("GET", "/api/v1/operators?role=observer", nil, &ops)
	if len(ops.Operators) != 1 || ops.Operators[0].ID != "api-obs" {
		t.Fatalf("operators %+v", ops)
	}
	var rot struct{ Password string }
	op.ok("PATCH", "/api/v1/operators/api-obs", map[string]any{"rotate_password": true}, &rot)
	if rot.Password == "" || rot.Password == added.Password {
		t.Fatal("password not rotated")
	}
	op.ok("POST", "/api/v1/operators/api-obs/revoke", map[string]any{"reason": "left"}, nil)

	// Keys and releases: a multipart upload of an image of several parts.
	key, pub := newKey(t)
	var k struct{ Key release.Key }
	op.ok("POST", "/api/v1/keys", map[string]any{"name": "api", "pem": string(pub)}, &k)
	var keys struct{ Keys []release.Key }
	op.ok("GET", "/api/v1/keys", nil, &keys)
	if len(keys.Keys) != 1 {
		t.Fatalf("keys %+v", keys)
	}
	fw := makeFirmware(t, key, "1.1.0", []string{"esp32-v2"}, release.MaxPartSize*2+1000)
	up := op.uploadRelease(fw)
	var done struct {
		Done    bool
		Release release.Release
	}
	if !up.OK {
		t.Fatalf("upload: %d %+v", up.status, up.Error)
	}
	up.into(t, &done)
	if !done.Done || done.Release.Size != uint64(len(fw.image)) || done.Release.Version != "1.1.0" {
		t.Fatalf("upload result %+v", done)
	}
	// The same upload again: the release exists.
	if again := op.uploadRelease(fw); !again.OK {
		t.Fatalf("second upload: %+v", again.Error)
	}
	// An upload cut short stays, and the same request again resumes it
	// where the broker's copy ends.
	fw3 := makeFirmware(t, key, "1.0.9", []string{"esp32-v2"}, release.MaxPartSize+5000)
	cut := fw3
	cut.image = fw3.image[:release.MaxPartSize+10]
	checkRefused(t, "a cut upload", op.uploadRelease(cut), http.StatusUnprocessableEntity, admin.CodeSizeMismatch)
	var pending struct{ Uploads []release.Upload }
	op.ok("GET", "/api/v1/uploads", nil, &pending)
	if len(pending.Uploads) != 1 || pending.Uploads[0].Offset != uint64(release.MaxPartSize+10) {
		t.Fatalf("cut upload: %+v", pending)
	}
	resumed := op.uploadRelease(fw3)
	var rdone struct {
		Done    bool
		Release release.Release
	}
	if !resumed.OK {
		t.Fatalf("resumed upload: %+v", resumed.Error)
	}
	resumed.into(t, &rdone)
	if !rdone.Done || rdone.Release.Version != "1.0.9" {
		t.Fatalf("resumed upload: %+v", rdone)
	}
	var rels struct{ Releases []release.Release }
	op.ok("GET", "/api/v1/releases?version=1.1.0", nil, &rels)
	if len(rels.Releases) != 1 || rels.Releases[0].ID != done.Release.ID {
		t.Fatalf("releases %+v", rels)
	}
	var rel struct {
		Release    release.Release
		KeyTrusted bool `json:"key_trusted"`
	}
	op.ok("GET", "/api/v1/releases/1.1.0", nil, &rel)
	if rel.Release.ID != done.Release.ID || !rel.KeyTrusted {
		t.Fatalf("release/get %+v", rel)
	}
	// The verb itself, one CBOR request: begin an upload, list it, abort it.
	fw2 := makeFirmware(t, key, "1.2.0", []string{"esp32-v2"}, 4096)
	body, err := admin.EncodeUpload(admin.UploadPart{Manifest: fw2.signed})
	if err != nil {
		t.Fatal(err)
	}
	begun := op.raw("POST", "/api/v1/releases/upload", "application/cbor", body)
	var st struct{ Upload release.Upload }
	if !begun.OK {
		t.Fatalf("release/upload: %+v", begun.Error)
	}
	begun.into(t, &st)
	var uploads struct{ Uploads []release.Upload }
	op.ok("GET", "/api/v1/uploads", nil, &uploads)
	if len(uploads.Uploads) != 1 || uploads.Uploads[0].ID != st.Upload.ID {
		t.Fatalf("uploads %+v", uploads)
	}
	op.ok("DELETE", "/api/v1/uploads/"+st.Upload.ID, nil, nil)
	op.ok("GET", "/api/v1/uploads", nil, &uploads)
	if len(uploads.Uploads) != 0 {
		t.Fatalf("aborted upload still listed: %+v", uploads)
	}

	// Offers and commands.
	var offered struct {
		RolloutID string `json:"rollout_id"`
		Results   []struct {
			Device string
			OK     bool
		}
	}
	op.ok("POST", "/api/v1/offers", map[string]any{"release": done.Release.ID, "devices": []string{"api-d2"}}, &offered)
	if len(offered.Results) != 1 || !offered.Results[0].OK {
		t.Fatalf("offer %+v", offered)
	}
	var offers struct{ Offers []struct{ Device string } }
	op.ok("GET", "/api/v1/offers?device=api-d2", nil, &offers)
	if len(offers.Offers) != 1 {
		t.Fatalf("offers %+v", offers)
	}
	op.ok("POST", "/api/v1/offers/cancel", map[string]any{"devices": []string{"api-d2"}}, nil)
	op.ok("POST", "/api/v1/commands", map[string]any{"devices": []string{"api-d1"}, "verb": "check"}, nil)

	// Rollouts: created from a YAML body, planned, started, paused,
	// resumed, listed, aborted; another approved by a second operator.
	spec := "id: api-r1\nrelease: " + done.Release.ID + "\nwaves:\n  - {percent: [100]}\n"
	var plan struct{ Devices int }
	op.ok("POST", "/api/v1/rollouts/plan", map[string]any{"yaml": spec}, &plan)
	created := op.raw("POST", "/api/v1/rollouts", "application/yaml", []byte(spec))
	if !created.OK {
		t.Fatalf("rollout/create: %+v", created.Error)
	}
	op.ok("GET", "/api/v1/rollouts/api-r1/plan", nil, &plan)
	if plan.Devices != 2 { // api-d3 is revoked
		t.Fatalf("plan %+v", plan)
	}
	var v struct{ State string }
	op.ok("POST", "/api/v1/rollouts/api-r1/start", nil, &v)
	op.ok("POST", "/api/v1/rollouts/api-r1/pause", map[string]any{"reason": "look first"}, &v)
	if v.State != "paused" {
		t.Fatalf("after pause: %s", v.State)
	}
	op.refused("POST", "/api/v1/rollouts/api-r1/approve", nil, http.StatusConflict, admin.CodeConflict)
	op.ok("POST", "/api/v1/rollouts/api-r1/resume", nil, &v)
	var rds struct{ Devices []struct{ Device string } }
	op.ok("GET", "/api/v1/rollouts/api-r1/devices?limit=10", nil, &rds)
	if len(rds.Devices) < 2 {
		t.Fatalf("rollout devices %+v", rds)
	}
	var list struct{ Rollouts []struct{ ID string } }
	op.ok("GET", "/api/v1/rollouts?state=running", nil, &list)
	op.ok("POST", "/api/v1/rollouts/api-r1/abort", map[string]any{"reason": "test over"}, &v)
	op.ok("GET", "/api/v1/rollouts/api-r1", nil, &v)
	if v.State != "aborted" {
		t.Fatalf("after abort: %s", v.State)
	}
	b.addOperator("api-op2", "operator", "second operator password")
	op2 := b.apiLogin("api-op2", "second operator password")
	spec2 := "id: api-r2\nrelease: " + done.Release.ID + "\napproval: true\nwaves:\n  - {percent: [100]}\n"
	op.ok("POST", "/api/v1/rollouts", map[string]any{"yaml": spec2}, nil)
	op.refused("POST", "/api/v1/rollouts/api-r2/approve", nil, http.StatusForbidden, admin.CodeForbidden)
	op2.ok("POST", "/api/v1/rollouts/api-r2/approve", nil, &v)
	if v.State == "awaiting_approval" {
		t.Fatalf("approved rollout still %s", v.State)
	}

	// The audit log, paged with before; every request above is on it
	// with the session.
	var audit struct {
		Records []struct {
			Seq     uint64
			Actor   string
			Action  string
			Session string
			Remote  string
		}
		Next uint64
	}
	op.ok("GET", "/api/v1/audit?actor="+opID+"&limit=5", nil, &audit)
	if len(audit.Records) != 5 || audit.Next == 0 {
		t.Fatalf("audit page %+v", audit)
	}
	first := audit.Records[0]
	if !strings.HasPrefix(first.Session, opID+"~http-") || !strings.HasPrefix(first.Remote, "127.0.0.1:") {
		t.Fatalf("audit record without the HTTP session or address: %+v", first)
	}
	next := audit.Next
	op.ok("GET", "/api/v1/audit?actor="+opID+"&limit=5&before="+strconv.FormatUint(next, 10), nil, &audit)
	if len(audit.Records) == 0 || audit.Records[0].Seq >= next {
		t.Fatalf("second audit page %+v (before %d)", audit, next)
	}
	var logins struct {
		Records []struct{ Action, Remote, Result string }
	}
	op.ok("GET", "/api/v1/audit?action=session/login", nil, &logins)
	if len(logins.Records) < 2 || logins.Records[0].Result != "ok" || !strings.HasPrefix(logins.Records[0].Remote, "127.0.0.1:") {
		t.Fatalf("logins not on the record with their address: %+v", logins)
	}

	op.ok("POST", "/api/v1/logout", nil, nil)
	op.refused("GET", "/api/v1/devices", nil, http.StatusUnauthorized, admin.CodeUnauthorized)
}

// Roles: an observer reads and is refused every change; anonymous
// requests are refused on every route but login; a logged-in request
// reaches every route in the table (none is missing from the mux).
func TestAPIRoles(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	b.addOperator("api-viewer", "observer", "observer password 1")
	obs := b.apiLogin("api-viewer", "observer password 1")
	op := b.apiLogin(opID, opPassword)
	anon := b.anonymous()
	b.register("api-rd1", "device", "")
	before := op.snapshot()

	fill := func(path string) string {
		for _, w := range []string{"{id}", "{kid}"} {
			path = strings.ReplaceAll(path, w, "x")
		}
		return path
	}
	for _, r := range httpapi.Routes() {
		path := fill(r.Path)
		if r.Public {
			continue
		}
		ar := anon.raw(r.Method, path, "application/json", []byte("{}"))
		checkRefused(t, "anonymous "+r.Method+" "+path, ar, http.StatusUnauthorized, admin.CodeUnauthorized)
		if ar.header.Get("WWW-Authenticate") == "" {
			t.Errorf("anonymous %s %s: no WWW-Authenticate", r.Method, path)
		}
		if r.Path == "/api/v1/logout" || r.Path == "/api/v1/events" || r.Path == "/api/v1/openapi.yaml" {
			continue
		}
		// The observer: reads pass the role check, changes are refused.
		or := obs.raw(r.Method, path, "application/json", []byte("{}"))
		if or.status == http.StatusMethodNotAllowed || or.Error != nil && strings.HasPrefix(or.Error.Message, "no resource") {
			t.Errorf("%s %s is not served: %d %+v", r.Method, path, or.status, or.Error)
		}
		readOnly := r.Method == "GET" || r.Path == "/api/v1/rollouts/plan"
		if forbidden := or.status == http.StatusForbidden; forbidden == readOnly {
			t.Errorf("observer %s %s: %d %+v (read-only %v)", r.Method, path, or.status, or.Error, readOnly)
		}
	}
	// The description, for generating clients.
	req, _ := http.NewRequest("GET", b.apiBase()+"/api/v1/openapi.yaml", nil)
	req.Header.Set("Authorization", "Bearer "+obs.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/yaml" {
		t.Fatalf("openapi.yaml: %v %v", resp, err)
	}
	_ = resp.Body.Close()
	// A path outside the table, and a method a path does not take.
	anon.refused("GET", "/api/v1/nothing", nil, http.StatusUnauthorized, admin.CodeUnauthorized)
	op.refused("GET", "/api/v1/nothing", nil, http.StatusNotFound, admin.CodeNotFound)
	if r := op.do("DELETE", "/api/v1/devices", nil); r.status != http.StatusMethodNotAllowed || r.header.Get("Allow") != "GET, POST" {
		t.Fatalf("DELETE /api/v1/devices: %d %q %+v", r.status, r.header.Get("Allow"), r.Error)
	}
	// A bad token, a malformed header.
	bad := b.anonymous()
	bad.token = "not-a-token"
	bad.refused("GET", "/api/v1/devices", nil, http.StatusUnauthorized, admin.CodeUnauthorized)
	req, _ = http.NewRequest("GET", b.apiBase()+"/api/v1/devices", nil)
	req.Header.Set("Authorization", "Basic b3BzOnB3")
	checkRefused(t, "basic auth", anon.send(req), http.StatusUnauthorized, admin.CodeUnauthorized)
	if after := op.snapshot(); after != before {
		t.Fatalf("refused requests changed stored state:\nbefore %s\nafter  %s", before, after)
	}
	// /healthz and /metrics stay open.
	for _, p := range []string{"/healthz", "/metrics"} {
		resp, err := http.Get(b.apiBase() + p)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %v %v", p, resp, err)
		}
		_ = resp.Body.Close()
	}
}

// Bad input gets a clear error and changes nothing stored.
func TestAPIBadInput(t *testing.T) {
	t.Parallel()
	b := startBroker(t, func(o *broker.Options) { o.MaxImageSize = 64 * 1024 })
	op := b.apiLogin(opID, opPassword)
	b.register("api-bd1", "device", "")
	key, pub := newKey(t)
	b.trustKey(pub)
	before := op.snapshot()

	big := fmt.Sprintf(`{"id": "api-big", "role": "device", "region": %q}`, strings.Repeat("x", admin.MaxBodySize))
	for _, c := range []struct {
		name, method, path, ctype, body string
		status                          int
		code                            string
	}{
		{"malformed JSON", "POST", "/api/v1/devices", "application/json", `{"id": "x",`, 400, admin.CodeBadRequest},
		{"not an object", "POST", "/api/v1/devices", "application/json", `["x"]`, 400, admin.CodeBadRequest},
		{"wrong type", "POST", "/api/v1/devices", "application/json", `{"id": 5, "role": "device"}`, 400, admin.CodeBadRequest},
		{"unknown field", "POST", "/api/v1/devices", "application/json", `{"id": "x", "role": "device", "colour": "red"}`, 400, admin.CodeBadRequest},
		{"trailing data", "POST", "/api/v1/devices", "application/json", `{"id": "x", "role": "device"} {}`, 400, admin.CodeBadRequest},
		{"oversized body", "POST", "/api/v1/devices", "application/json", big, 413, admin.CodeTooLarge},
		{"form body", "POST", "/api/v1/devices", "application/x-www-form-urlencoded", "id=x&role=device", 415, "unsupported_media_type"},
		{"path and body disagree", "PATCH", "/api/v1/devices/api-bd1", "application/json", `{"id": "other", "region": "eu"}`, 400, admin.CodeBadRequest},
		{"unknown query parameter", "GET", "/api/v1/devices?colour=red", "", "", 400, admin.CodeBadRequest},
		{"query parameter twice", "GET", "/api/v1/devices?region=a&region=b", "", "", 400, admin.CodeBadRequest},
		{"query not an integer", "GET", "/api/v1/devices?limit=many", "", "", 400, admin.CodeBadRequest},
		{"query not a bool", "GET", "/api/v1/devices?online=perhaps", "", "", 400, admin.CodeBadRequest},
		{"limit out of range", "GET", "/api/v1/devices?limit=-1", "", "", 400, admin.CodeBadRequest},
		{"query on a route without", "GET", "/api/v1/devices/api-bd1?x=1", "", "", 400, admin.CodeBadRequest},
		{"unknown device", "GET", "/api/v1/devices/nobody", "", "", 404, admin.CodeNotFound},
		{"exists", "POST", "/api/v1/devices", "application/json", `{"id": "api-bd1", "role": "device"}`, 409, admin.CodeExists},
		{"bad rollout spec", "POST", "/api/v1/rollouts", "application/yaml", "id: r\nwaves: 3\n", 400, admin.CodeBadRequest},
		{"upload not CBOR", "POST", "/api/v1/releases/upload", "application/json", `{}`, 415, "unsupported_media_type"},
		{"upload garbage CBOR", "POST", "/api/v1/releases/upload", "application/cbor", "\xff\x00", 400, admin.CodeBadRequest},
		{"upload not multipart", "POST", "/api/v1/releases", "application/octet-stream", "abc", 415, "unsupported_media_type"},
		{"login garbage", "POST", "/api/v1/login", "application/json", `{"id": 1}`, 400, admin.CodeBadRequest},
		{"login unknown field", "POST", "/api/v1/login", "application/json", `{"id": "ops", "password": "x", "otp": 1}`, 400, admin.CodeBadRequest},
		{"login as a form", "POST", "/api/v1/login", "application/x-www-form-urlencoded", "id=ops&password=x", 415, "unsupported_media_type"},
	} {
		r := op.raw(c.method, c.path, c.ctype, []byte(c.body))
		checkRefused(t, c.name, r, c.status, c.code)
	}
	// Multipart uploads: parts in the wrong order, a manifest that is not
	// one, an image larger than the bound, an image shorter than its
	// manifest says, a body over the bound.
	fw := makeFirmware(t, key, "2.0.0", []string{"esp32-v2"}, 8*1024)
	ct, body := multipartUpload(t, [2]any{"image", fw.image}, [2]any{"manifest", fw.signed})
	checkRefused(t, "parts swapped", op.raw("POST", "/api/v1/releases", ct, body), 400, admin.CodeBadRequest)
	ct, body = multipartUpload(t, [2]any{"manifest", []byte("not a manifest")}, [2]any{"image", fw.image})
	checkRefused(t, "bad manifest", op.raw("POST", "/api/v1/releases", ct, body), 400, admin.CodeBadManifest)
	huge := makeFirmware(t, key, "2.1.0", []string{"esp32-v2"}, 65*1024)
	ct, body = multipartUpload(t, [2]any{"manifest", huge.signed}, [2]any{"image", huge.image})
	checkRefused(t, "image over the bound", op.raw("POST", "/api/v1/releases", ct, body), 413, admin.CodeTooLarge)
	ct, body = multipartUpload(t, [2]any{"manifest", fw.signed}, [2]any{"image", fw.image[:100]})
	checkRefused(t, "short image", op.raw("POST", "/api/v1/releases", ct, body), 422, admin.CodeSizeMismatch)
	// That one left a resumable upload: drop it, as its message says.
	var ups struct{ Uploads []release.Upload }
	op.ok("GET", "/api/v1/uploads", nil, &ups)
	if len(ups.Uploads) != 1 || ups.Uploads[0].Offset != 100 {
		t.Fatalf("short upload: %+v", ups)
	}
	op.ok("DELETE", "/api/v1/uploads/"+ups.Uploads[0].ID, nil, nil)
	ct, body = multipartUpload(t, [2]any{"manifest", fw.signed}, [2]any{"image", make([]byte, 200*1024)})
	checkRefused(t, "body over the bound", op.raw("POST", "/api/v1/releases", ct, body), 413, admin.CodeTooLarge)

	if after := op.snapshot(); after != before {
		t.Fatalf("refused requests changed stored state:\nbefore %s\nafter  %s", before, after)
	}
}

// Sessions expire (on the broker's clock), end at logout, when their
// operator is revoked or its password changes (except the session that
// changed its own), and one operator has at most MaxSessionsPerOperator.
func TestAPISessionsEnd(t *testing.T) {
	t.Parallel()
	clk := clock.NewFake(time.Now())
	b := startBroker(t, func(o *broker.Options) {
		o.Clock = clk
		o.SessionTTL = time.Hour
		o.MaxSessionsPerOperator = 2
	})
	op := b.apiLogin(opID, opPassword)

	// Expiry.
	exp := b.apiLogin(opID, opPassword)
	exp.ok("GET", "/api/v1/devices", nil, nil)
	clk.Advance(time.Hour + time.Second)
	exp.refused("GET", "/api/v1/devices", nil, http.StatusUnauthorized, admin.CodeUnauthorized)
	op.refused("GET", "/api/v1/devices", nil, http.StatusUnauthorized, admin.CodeUnauthorized)
	op = b.apiLogin(opID, opPassword)

	// The bound: a third login ends the oldest session.
	s2 := b.apiLogin(opID, opPassword)
	s3 := b.apiLogin(opID, opPassword)
	op.refused("GET", "/api/v1/devices", nil, http.StatusUnauthorized, admin.CodeUnauthorized)
	s2.ok("GET", "/api/v1/devices", nil, nil)
	s3.ok("GET", "/api/v1/devices", nil, nil)

	// Revocation ends an observer's sessions.
	b.addOperator("api-gone", "observer", "observer password 2")
	gone := b.apiLogin("api-gone", "observer password 2")
	gone.ok("GET", "/api/v1/devices", nil, nil)
	s2.ok("POST", "/api/v1/operators/api-gone/revoke", nil, nil)
	gone.refused("GET", "/api/v1/devices", nil, http.StatusUnauthorized, admin.CodeUnauthorized)
	b.anonymous().refused("POST", "/api/v1/login", map[string]any{"id": "api-gone", "password": "observer password 2"},
		http.StatusUnauthorized, admin.CodeUnauthorized)

	// A password change: the session that asked for its own keeps going,
	// the other ends.
	b.addOperator("api-pw", "operator", "first password of pw")
	a1 := b.apiLogin("api-pw", "first password of pw")
	a2 := b.apiLogin("api-pw", "first password of pw")
	a1.ok("PATCH", "/api/v1/operators/api-pw", map[string]any{"password": "second password of pw"}, nil)
	a1.ok("GET", "/api/v1/devices", nil, nil)
	a2.refused("GET", "/api/v1/devices", nil, http.StatusUnauthorized, admin.CodeUnauthorized)
	// ...and another operator's change of it ends them all.
	s3.ok("PATCH", "/api/v1/operators/api-pw", map[string]any{"password": "third password of pw"}, nil)
	a1.refused("GET", "/api/v1/devices", nil, http.StatusUnauthorized, admin.CodeUnauthorized)

	// Logout.
	s3.ok("POST", "/api/v1/logout", nil, nil)
	s3.refused("GET", "/api/v1/devices", nil, http.StatusUnauthorized, admin.CodeUnauthorized)
	s3.refused("POST", "/api/v1/logout", nil, http.StatusUnauthorized, admin.CodeUnauthorized)
}

// Sessions are durable: a restarted broker still knows them.
func TestAPISessionSurvivesRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b := startBroker(t, func(o *broker.Options) { o.DataDir = dir })
	s := b.apiLogin(opID, opPassword)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := b.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	b2 := startBroker(t, func(o *broker.Options) { o.DataDir = dir })
	s.base = b2.apiBase()
	s.ok("GET", "/api/v1/devices", nil, nil)
}

// A cookie session needs its CSRF token on requests that change state;
// the cookie is HttpOnly and SameSite=Strict.
func TestAPICSRF(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	op := b.apiLogin(opID, opPassword)
	ck := op.cookie
	if ck == nil || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Secure || ck.Path != "/api/" {
		t.Fatalf("session cookie %+v", ck)
	}
	before := op.snapshot()
	browser := op.asBrowser(true)
	forged := op.asBrowser(false)
	forged.ok("GET", "/api/v1/devices", nil, nil) // reads need no token
	reg := map[string]any{"id": "api-csrf", "role": "device"}
	forged.refused("POST", "/api/v1/devices", reg, http.StatusForbidden, admin.CodeForbidden)
	wrong := op.asBrowser(true)
	wrong.csrf = "x" + wrong.csrf
	wrong.refused("POST", "/api/v1/devices", reg, http.StatusForbidden, admin.CodeForbidden)
	forged.refused("POST", "/api/v1/logout", nil, http.StatusForbidden, admin.CodeForbidden)
	if after := op.snapshot(); after != before {
		t.Fatalf("a forged request changed state:\nbefore %s\nafter  %s", before, after)
	}
	browser.ok("POST", "/api/v1/devices", reg, nil)
	op.ok("POST", "/api/v1/devices", map[string]any{"id": "api-csrf2", "role": "device"}, nil) // bearer: no CSRF token
	// The console, reloaded, learns its CSRF token from the cookie alone.
	var s sessionResult
	forged.ok("GET", "/api/v1/session", nil, &s)
	if s.CSRFToken != op.csrf || s.Token != "" {
		t.Fatalf("session view %+v", s)
	}
	browser.ok("POST", "/api/v1/logout", nil, nil)
	browser.refused("GET", "/api/v1/devices", nil, http.StatusUnauthorized, admin.CodeUnauthorized)
}

// Logins are throttled as on MQTT (the same records: ID and address), and
// on the record with their source address.
func TestAPILoginThrottledAndAudited(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	b.addOperator("api-guess", "operator", "the right password")
	anon := b.anonymous()
	wrong := map[string]any{"id": "api-guess", "password": "a wrong password"}
	var last apiReply
	for i := 0; i < 10; i++ {
		last = anon.do("POST", "/api/v1/login", wrong)
		if last.status == http.StatusTooManyRequests {
			break
		}
		checkRefused(t, "wrong password", last, http.StatusUnauthorized, admin.CodeUnauthorized)
	}
	checkRefused(t, "guessing", last, http.StatusTooManyRequests, admin.CodeRateLimited)
	if s, err := strconv.Atoi(last.header.Get("Retry-After")); err != nil || s < 1 {
		t.Fatalf("Retry-After %q", last.header.Get("Retry-After"))
	}
	// The same ID over MQTT is throttled too: one record.
	if _, err := dialClient(t, b.Addr(), "api-guess", clientOpts{username: "api-guess", password: "the right password"}); err == nil {
		t.Fatal("MQTT login of a throttled ID accepted")
	}
	// Unknown IDs and wrong passwords look alike.
	unknown := anon.do("POST", "/api/v1/login", map[string]any{"id": "nobody-here", "password": "whatever it is"})
	first := anon.do("POST", "/api/v1/login", map[string]any{"id": opID, "password": "wrong"})
	if unknown.Error == nil || first.Error == nil || unknown.Error.Message != first.Error.Message {
		t.Fatalf("refusals differ: %+v / %+v", unknown.Error, first.Error)
	}
	// A device cannot log in, and its attempts (tokens are not
	// throttled) are not on the record.
	tok := b.register("api-dev-login", "device", "")
	dev := anon.do("POST", "/api/v1/login", map[string]any{"id": "api-dev-login", "password": tok})
	checkRefused(t, "device login", dev, http.StatusUnauthorized, admin.CodeUnauthorized)
	if dev.Error.Message != first.Error.Message {
		t.Fatalf("a device's refusal differs: %+v", dev.Error)
	}
	op := b.apiLogin(opID, opPassword)
	var logins struct {
		Records []struct {
			Actor, Action, Remote, Result, Error string
		}
	}
	op.ok("GET", "/api/v1/audit?action=session/login", nil, &logins)
	var ok, refused int
	for _, r := range logins.Records {
		if !strings.HasPrefix(r.Remote, "127.0.0.1:") {
			t.Errorf("login record without the address: %+v", r)
		}
		switch {
		case r.Result == "ok" && r.Actor == opID:
			ok++
		case r.Result == admin.CodeUnauthorized && r.Actor == "api-guess":
			refused++
		case r.Actor == "api-dev-login" || r.Actor == "nobody-here":
			t.Errorf("a login without a password check is on the record: %+v", r)
		}
	}
	if ok != 1 || refused < 3 {
		t.Fatalf("login records: %d ok, %d refused: %+v", ok, refused, logins.Records)
	}
}

// The admin rate limit holds per caller, as on MQTT: 429 with Retry-After.
func TestAPIRateLimited(t *testing.T) {
	t.Parallel()
	b := startBroker(t, func(o *broker.Options) { o.AdminRate, o.AdminBurst = 0.01, 3 })
	op := b.apiLogin(opID, opPassword)
	mq, err := rpc.Dial(context.Background(), rpc.Config{URL: b.url(), Username: opID, Password: opPassword, NoRetry: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = mq.Close() }()
	var r apiReply
	for i := 0; i < 10; i++ {
		if r = op.do("GET", "/api/v1/devices", nil); !r.OK {
			break
		}
	}
	checkRefused(t, "over the rate", r, http.StatusTooManyRequests, admin.CodeRateLimited)
	if s, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || s < 1 || r.Error.RetryAfterMS <= 0 {
		t.Fatalf("Retry-After %q, retry_after_ms %d", r.header.Get("Retry-After"), r.Error.RetryAfterMS)
	}
	// One bucket per operator, whatever the transport: its MQTT requests
	// are refused too now.
	err = mq.Call(context.Background(), "device/list", map[string]any{}, nil)
	var re *rpc.RemoteError
	if !errors.As(err, &re) || re.Code != admin.CodeRateLimited {
		t.Fatalf("MQTT request of the same operator: %v", err)
	}
}

// A request header over the bound is refused (431) before any handler.
func TestAPIHeaderBound(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	req, _ := http.NewRequest("GET", b.apiBase()+"/api/v1/devices", nil)
	req.Header.Set("X-Padding", strings.Repeat("p", 100*1024))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("a 100 KiB header: %d", resp.StatusCode)
	}
}

// sse reads Server-Sent Events from a stream into a channel.
type sse struct {
	resp   *http.Response
	events chan [2]string // event, data
}

func openStream(t *testing.T, c *apiClient) *sse {
	t.Helper()
	req, _ := http.NewRequest("GET", c.base+"/api/v1/events", nil)
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := (&http.Client{}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("events: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	s := &sse{resp: resp, events: make(chan [2]string, 1024)}
	t.Cleanup(func() { _ = resp.Body.Close() })
	go func() {
		defer close(s.events)
		sc := bufio.NewScanner(resp.Body)
		var ev, data string
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev != "" || data != "" {
					s.events <- [2]string{ev, data}
				}
				ev, data = "", ""
			case strings.HasPrefix(line, ":"):
				s.events <- [2]string{"comment", line}
			case strings.HasPrefix(line, "event: "):
				ev = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				data = line[len("data: "):]
			}
		}
	}()
	return s
}

// await waits for an event for which match holds.
func (s *sse) await(t *testing.T, within time.Duration, what string, match func(ev, data string) bool) {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case e, ok := <-s.events:
			if !ok {
				t.Fatalf("stream ended before %s", what)
			}
			if match(e[0], e[1]) {
				return
			}
		case <-deadline:
			t.Fatalf("no %s within %v", what, within)
		}
	}
}

// Fleet and rollout events reach open streams of operators and observers;
// heartbeats keep them open; a session's end ends its stream.
func TestAPIEventStream(t *testing.T) {
	t.Parallel()
	b := startBroker(t, func(o *broker.Options) {
		o.StreamHeartbeat = 50 * time.Millisecond
		o.HTTPRequestTimeout = time.Second
	})
	b.addOperator("api-watch", "observer", "observer password 3")
	op := b.apiLogin(opID, opPassword)
	obs := b.apiLogin("api-watch", "observer password 3")
	so := openStream(t, op)
	sb := openStream(t, obs)
	so.await(t, 30*time.Second, "heartbeat", func(ev, data string) bool { return ev == "comment" && data == ": heartbeat" })
	// A stream outlives the request timeout (which bounds each write, not
	// the stream; a login must fit in it, hence not shorter): heartbeats
	// still come well after it.
	opened := time.Now()
	so.await(t, 30*time.Second, "heartbeat after the request timeout", func(ev, data string) bool {
		return ev == "comment" && data == ": heartbeat" && time.Since(opened) > 3*time.Second
	})

	op.ok("POST", "/api/v1/devices", map[string]any{"id": "api-ev1", "role": "device"}, nil)
	registered := func(ev, data string) bool {
		var fe struct{ Type, ID string }
		return ev == "fleet" && json.Unmarshal([]byte(data), &fe) == nil && fe.Type == "device.registered" && fe.ID == "api-ev1"
	}
	so.await(t, 30*time.Second, "registration on the operator's stream", registered)
	sb.await(t, 30*time.Second, "registration on the observer's stream", registered)

	// The observer's session ends: so does its stream.
	op.ok("POST", "/api/v1/operators/api-watch/revoke", nil, nil)
	sb.await(t, 30*time.Second, "end of the revoked observer's stream", func(ev, data string) bool { return ev == "end" })
}

// A client that never reads its stream is dropped; the broker, other
// streams and requests go on meanwhile.
func TestAPIEventStreamSlowClientDropped(t *testing.T) {
	t.Parallel()
	b := startBroker(t, func(o *broker.Options) {
		o.MaxEventStreams = 2
		o.AdminRate = -1
	})
	op := b.apiLogin(opID, opPassword)
	// The slow one: a raw connection with a small receive buffer that
	// reads nothing after the request.
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048)
		}); err != nil {
			return err
		}
		return serr
	}}
	conn, err := d.Dial("tcp", b.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	fmt.Fprintf(conn, "GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", op.token)
	streams := func(n int) func() error {
		return func() error {
			if got := metricLine(t, b, "otamq_http_event_streams "); got != fmt.Sprintf("otamq_http_event_streams %d", n) {
				return fmt.Errorf("%q, want %d streams", got, n)
			}
			return nil
		}
	}
	eventually(t, 30*time.Second, streams(1)) // the slow one holds its place
	good := openStream(t, op)
	eventually(t, 30*time.Second, streams(2))
	// Both places are taken: a third stream is refused.
	if code := streamStatus(t, b, op.token); code != http.StatusServiceUnavailable {
		t.Fatalf("third stream: %d", code)
	}
	// Events flow until the slow stream is dropped, and the good stream
	// sees each batch meanwhile.
	for i := 0; ; i++ {
		devs := make([]map[string]any, 200)
		for j := range devs {
			devs[j] = map[string]any{"id": fmt.Sprintf("api-slow-%d-%d", i, j), "role": "device", "region": strings.Repeat("r", 60)}
		}
		op.ok("POST", "/api/v1/devices", map[string]any{"devices": devs}, nil)
		last := fmt.Sprintf("api-slow-%d-199", i)
		good.await(t, 60*time.Second, "batch "+strconv.Itoa(i)+" on the good stream", func(ev, data string) bool {
			return ev == "fleet" && strings.Contains(data, `"id":"`+last+`"`)
		})
		// The slow stream's place is free once it was dropped.
		if streamStatus(t, b, op.token) == 200 {
			t.Logf("dropped after %d batches of 200 events", i+1)
			break
		}
		if i > 500 {
			t.Fatal("the stream that never reads was never dropped")
		}
	}
	op.ok("GET", "/api/v1/devices?limit=1", nil, nil)
	resp, err := http.Get(b.apiBase() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), "otamq_http_event_streams_dropped_total 1\n") {
		t.Fatalf("the dropped stream is not counted:\n%s", grepLines(string(body), "otamq_http_"))
	}
}

// streamStatus opens an event stream and closes it at once, returning
// its status.
func streamStatus(t *testing.T, b *tb, token string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", b.apiBase()+"/api/v1/events", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

// metricLine returns the first line of /metrics that starts with prefix.
func metricLine(t *testing.T, b *tb, prefix string) string {
	t.Helper()
	resp, err := http.Get(b.apiBase() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// One operator may hold at most httpapi.MaxStreamsPerOperator streams;
// another still gets one.
func TestAPIEventStreamsPerOperator(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	b.addOperator("api-many", "observer", "observer password 4")
	op := b.apiLogin(opID, opPassword)
	for range httpapi.MaxStreamsPerOperator {
		openStream(t, op)
	}
	op.refused("GET", "/api/v1/events", nil, http.StatusServiceUnavailable, admin.CodeUnavailable)
	other := b.apiLogin("api-many", "observer password 4")
	openStream(t, other)
	eventually(t, 30*time.Second, func() error {
		resp, err := http.Get(b.apiBase() + "/metrics")
		if err != nil {
			return err
		}
		defer func() { _ = resp.Body.Close() }()
		body, _ := io.ReadAll(resp.Body)
		if want := fmt.Sprintf("otamq_http_event_streams %d\n", httpapi.MaxStreamsPerOperator+1); !strings.Contains(string(body), want) {
			return fmt.Errorf("metrics lack %q", want)
		}
		return nil
	})
}

// The API can be turned off: /metrics and /healthz stay.
func TestAPIOff(t *testing.T) {
	t.Parallel()
	b := startBroker(t, func(o *broker.Options) { o.APIOff = true })
	resp, err := http.Post(b.apiBase()+"/api/v1/login", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("login with the API off: %d", resp.StatusCode)
	}
	for _, p := range []string{"/healthz", "/metrics"} {
		resp, err := http.Get(b.apiBase() + p)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %v %v", p, resp, err)
		}
		_ = resp.Body.Close()
	}
}

// Over TLS (the MQTT certificate): the cookie is Secure, /metrics is
// served over TLS too, and plain HTTP is refused.
func TestAPIOverTLS(t *testing.T) {
	t.Parallel()
	p := newPKI(t, "api")
	cert, key, _ := p.issue("127.0.0.1", true)
	b := startBroker(t, func(o *broker.Options) { o.HTTPTLS, o.TLSCert, o.TLSKey = true, cert, key })
	c := b.anonymous()
	c.base = "https://" + b.HTTPAddr()
	c.hc = tlsHTTPClient(p)
	c.login(opID, opPassword)
	if c.cookie == nil || !c.cookie.Secure {
		t.Fatalf("cookie over TLS: %+v", c.cookie)
	}
	c.ok("GET", "/api/v1/devices", nil, nil)
	resp, err := c.hc.Get(c.base + "/metrics")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("metrics over TLS: %v %v", resp, err)
	}
	_ = resp.Body.Close()
	if resp, err := http.Get("http://" + b.HTTPAddr() + "/healthz"); err == nil && resp.StatusCode == 200 {
		t.Fatal("plain HTTP served on the TLS listener")
	}
}

// At most HTTPMaxInflight requests run at once: two uploads whose bodies
// are still coming hold both places, a third request is refused 503, and
// once they end requests go through again.
func TestAPIInflightBound(t *testing.T) {
	t.Parallel()
	b := startBroker(t, func(o *broker.Options) { o.HTTPMaxInflight = 2 })
	op := b.apiLogin(opID, opPassword)
	// a client of the uploads' own: the default one's connections are
	// shared with the package's other tests, which run in parallel
	uploads := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(uploads.CloseIdleConnections)
	type upload struct {
		pw   *io.PipeWriter
		done chan string // its status, or the client's error
	}
	var all []*upload
	t.Cleanup(func() {
		for _, u := range all {
			_ = u.pw.CloseWithError(io.ErrUnexpectedEOF)
		}
	})
	// start begins an upload that sends the start of its body and stalls.
	start := func() *upload {
		pr, pw := io.Pipe()
		u := &upload{pw: pw, done: make(chan string, 1)}
		all = append(all, u)
		req, _ := http.NewRequest("POST", b.apiBase()+"/api/v1/releases", pr)
		req.Header.Set("Authorization", "Bearer "+op.token)
		req.Header.Set("Content-Type", "multipart/form-data; boundary=x")
		go func() {
			resp, err := uploads.Do(req)
			if err != nil {
				u.done <- err.Error()
				return
			}
			_ = resp.Body.Close()
			u.done <- resp.Status
		}()
		if _, err := pw.Write([]byte("--x\r\n")); err != nil { // the client is sending it
			t.Fatal(err)
		}
		return u
	}
	busy := fmt.Sprintf("%d %s", http.StatusServiceUnavailable, http.StatusText(http.StatusServiceUnavailable))
	running := []*upload{start(), start()}
	eventually(t, 30*time.Second, func() error { // once both handlers run
		for i, u := range running {
			select {
			case d := <-u.done:
				if d != busy {
					t.Fatalf("an upload ended early: %s", d)
				}
				// it came while a request of this loop held a slot:
				// refused, as it should be, and at once; another
				running[i] = start()
				return fmt.Errorf("an upload was refused as the third request under way")
			default:
			}
		}
		if r := op.do("GET", "/api/v1/devices", nil); r.status != http.StatusServiceUnavailable || r.Error.Code != admin.CodeUnavailable {
			return fmt.Errorf("third request: %d", r.status)
		}
		return nil
	})
	// a third upload is refused before its body ends
	select {
	case d := <-start().done:
		if d != busy {
			t.Fatalf("third upload: %s, want %s", d, busy)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("third upload: no answer within 30s while its body stalls")
	}
	for _, u := range running {
		_ = u.pw.CloseWithError(io.ErrUnexpectedEOF)
		<-u.done
	}
	eventually(t, 30*time.Second, func() error { // once both handlers returned
		if r := op.do("GET", "/api/v1/devices", nil); !r.OK {
			return fmt.Errorf("after the uploads: %d %+v", r.status, r.Error)
		}
		return nil
	})
}
