package admin

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/audit"
	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/store"
)

// witness stands for the broker's side of the effects: each time an
// offer, a command or a disconnect would leave the broker, it looks in the
// store for the audit record of the request that caused it.
type witness struct {
	mu     sync.Mutex
	db     store.Store
	action string // the request in flight
	seen   map[string]bool
	kinds  []string
}

func (w *witness) check(kind string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.kinds = append(w.kinds, kind)
	recs, _, err := audit.List(w.db, audit.Query{Action: w.action, Limit: 1})
	if err != nil {
		panic(err)
	}
	// The record of the request in flight is the newest with its action:
	// durable (a read transaction sees only committed data) before the
	// effect.
	w.seen[w.action] = len(recs) == 1 && recs[0].Result == audit.ResultOK && recs[0].Time.After(time.Time{})
}

func (w *witness) SendOffer(string, []byte)         { w.check("offer") }
func (w *witness) SendCommand(string, []byte) error { w.check("command"); return nil }
func (w *witness) Disconnect(id, keep string)       { w.check("disconnect") }
func (w *witness) expect(action string) *witness {
	w.mu.Lock()
	w.action = action
	w.mu.Unlock()
	return w
}
func (w *witness) recorded(action string) (bool, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	v, ok := w.seen[action]
	return v, ok
}

// signedRelease uploads a small signed release through the API and
// returns its ID.
func signedRelease(t *testing.T, e *env, version string, hw ...string) string {
	t.Helper()
	key, err := manifest.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := manifest.MarshalPublicKey(&key.PublicKey)
	if _, code := e.do(op, "key/add", map[string]any{"pem": string(pub)}); code != "" && code != CodeConflict {
		t.Fatalf("key/add: %s", code)
	}
	img := make([]byte, 5000)
	_, _ = rand.Read(img)
	n, d, _ := manifest.HashImage(bytes.NewReader(img))
	signed, err := manifest.Sign(&manifest.Manifest{Sequence: uint64(time.Now().UnixNano()), Version: version, BuildID: "t", Hardware: hw,
		ImageSize: n, ImageDigest: d, Kind: manifest.KindFirmware}, key)
	if err != nil {
		t.Fatal(err)
	}
	upload := func(p UploadPart) map[string]any {
		t.Helper()
		body, _ := EncodeUpload(p)
		res, verb := "release", "upload"
		resp, code := e.svc.Handle(t.Context(), Request{Caller: op, Resource: res, Verb: verb, Body: body})
		if code != "" {
			t.Fatalf("upload: %v", resp.Error)
		}
		raw, _ := json.Marshal(resp.Result)
		var m map[string]any
		_ = json.Unmarshal(raw, &m)
		return m
	}
	r := upload(UploadPart{Manifest: signed})
	id := r["upload"].(map[string]any)["id"].(string)
	r = upload(UploadPart{Upload: id, Offset: 0, HasOffset: true, Data: img})
	return r["release"].(map[string]any)["id"].(string)
}

// TestAuditBeforeEffects: every effect of an admin request that leaves the
// broker (offers, commands, disconnects) happens only once the request's
// audit record is durable. Before, command/send sent the command first and
// wrote its record afterwards.
func TestAuditBeforeEffects(t *testing.T) {
	w := &witness{seen: map[string]bool{}}
	e := newReleaseEnv(t, w, func(o *Options) { o.Disconnector = w })
	w.db = e.db
	rel := signedRelease(t, e, "1.0.0", "esp32-v2")
	e.ok(op, "device/register", map[string]any{"id": "dev-1", "hardware": "esp32-v2"})
	e.ok(op, "operator/add", map[string]any{"id": op.ID, "password": "a long password"})
	e.ok(op, "operator/add", map[string]any{"id": "bob", "password": "a long password"})
	for _, c := range []struct {
		action string
		body   map[string]any
	}{
		{"command/send", map[string]any{"verb": "check", "devices": []string{"dev-1"}}},
		{"offer/create", map[string]any{"release": rel, "devices": []string{"dev-1"}}},
		{"offer/cancel", map[string]any{"devices": []string{"dev-1"}}},
		{"device/update", map[string]any{"id": "dev-1", "rotate_token": true}},
		{"operator/update", map[string]any{"id": "bob", "rotate_password": true}},
		{"device/revoke", map[string]any{"id": "dev-1"}},
		{"operator/revoke", map[string]any{"id": "bob"}},
	} {
		w.expect(c.action)
		e.ok(op, c.action, c.body)
		if durable, happened := w.recorded(c.action); !happened {
			t.Errorf("%s: no effect seen", c.action)
		} else if !durable {
			t.Errorf("%s: its effect left before its audit record was durable", c.action)
		}
	}
}
