package admin

import (
	"testing"
)

// FuzzAdminRequest sends arbitrary bodies to every verb. Handle must never
// panic, must always answer with a code, and a refused request must leave
// the store as it was.
func FuzzAdminRequest(f *testing.F) {
	seeds := []string{
		`{"id":"dev-9","hardware":"esp32-v2","groups":["a"],"tags":{"k":"v"}}`,
		`{"id":"dev-1","region":"us","rotate_token":true}`,
		`{"id":"dev-1","reinstate":true}`,
		`{"id":"gw-1","role":"gateway"}`,
		`{"id":"x","parent":"gw-1"}`,
		`{"limit":1,"after":"a","online":true}`,
		`{"id":"carol","password":"0123456789abc"}`,
		`{"id":"dev-1","reason":"lost"}`,
		`{"id": 7}`, `[`, `{"id":"x"} {}`, ``, `null`, `{"tags":{"":""}}`,
		`{"devices":[{"id":"b1"},{"id":"b2","role":"gateway"},{"id":"b3","parent":"b2"}]}`,
		`{"devices":[{"id":"b1"},{"id":"dev-1"}],"dry_run":true}`,
		`{"limit":2,"after":"dev-1"}`, `{"before":3,"limit":1,"actor":"alice"}`,
	}
	e := newEnv(f)
	e.ok(op, "device/register", map[string]any{"id": "gw-1", "role": "gateway"})
	e.ok(op, "device/register", map[string]any{"id": "dev-1", "hardware": "esp32-v2"})
	actions := e.svc.Actions()
	for i, s := range seeds {
		f.Add(uint8(i), []byte(s))
	}
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		e.t = t
		action := actions[int(which)%len(actions)]
		before := e.snapshot()
		m, code := e.do(op, action, string(body))
		if code == "" {
			return
		}
		if m["error"] == nil {
			t.Fatalf("%s refused without an error", action)
		}
		if e.snapshot() != before {
			t.Fatalf("%s %q: refused but changed the store", action, body)
		}
	})
}

// FuzzDecodeUpload: release/upload bodies (CBOR from operators) never
// panic, and what is accepted is a well-formed request that encodes back to
// an equivalent one.
func FuzzDecodeUpload(f *testing.F) {
	for _, p := range []UploadPart{
		{Manifest: []byte{0xd2, 0x84, 0x43, 0xa1, 0x01, 0x26}},
		{Upload: "ab", Offset: 65536, HasOffset: true, Data: []byte("part")},
		{Upload: "ab"},
	} {
		b, err := EncodeUpload(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0xa1, 0x05, 0x00}) // unknown key
	f.Add([]byte{0xbf, 0xff})       // indefinite map
	f.Fuzz(func(t *testing.T, in []byte) {
		p, err := DecodeUpload(in)
		if err != nil {
			return
		}
		b, err := EncodeUpload(p)
		if err != nil {
			t.Fatalf("accepted %x but cannot encode it: %v", in, err)
		}
		again, err := DecodeUpload(b)
		if err != nil || again.Upload != p.Upload || again.Offset != p.Offset || string(again.Data) != string(p.Data) ||
			string(again.Manifest) != string(p.Manifest) {
			t.Fatalf("round trip %+v -> %+v, %v", p, again, err)
		}
	})
}
