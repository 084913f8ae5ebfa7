package httpapi

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"net/url"
	"testing"
)

// FuzzRequestBody: the decoder that turns a request's body, path and query
// into an admin request body never panics, and what it accepts is one JSON
// object with the path's ID in it and every query parameter typed.
func FuzzRequestBody(f *testing.F) {
	for _, s := range []struct{ body, ctype, query, id string }{
		{`{"region": "eu"}`, "application/json", "", "d1"},
		{`{"id": "d1"}`, "application/json", "", "d1"},
		{`{"id": "d2"}`, "application/json", "", "d1"},
		{`{"id": `, "application/json", "", "d1"},
		{`[1,2]`, "application/json", "", "d1"},
		{`null`, "application/json", "", "d1"},
		{"id: r1\nwaves: []\n", "application/yaml", "", "r1"},
		{"", "", "limit=5&after=x", "d1"},
		{"", "", "online=true&limit=-3", "d1"},
		{"", "", "limit=1e9&limit=2", "d1"},
		{"", "", "colour=red", "d1"},
		{"", "", "%zz", "d1"},
	} {
		f.Add(s.body, s.ctype, s.query, s.id)
	}
	rt := &route{method: "PATCH", path: "/api/v1/devices/{id}", action: "device/update", yaml: true,
		query: q("after", "limit:int", "online:bool")}
	f.Fuzz(func(t *testing.T, body, ctype, query, id string) {
		r := httptest.NewRequest("PATCH", "/api/v1/devices/x", bytes.NewReader([]byte(body)))
		r.URL.RawQuery = query
		r.Header.Set("Content-Type", ctype)
		r.SetPathValue("id", id)
		w := httptest.NewRecorder()
		out, aerr := requestBody(w, r, rt)
		if aerr != nil {
			if aerr.Code == "" || aerr.Message == "" {
				t.Fatalf("refusal without code or message: %+v", aerr)
			}
			return
		}
		var m map[string]any
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatalf("accepted, but made %q: %v", out, err)
		}
		if m["id"] != id {
			t.Fatalf("id %v, path had %q", m["id"], id)
		}
		qv, _ := url.ParseQuery(query)
		if v, ok := m["limit"]; ok && qv.Get("limit") != "" {
			if _, isNum := v.(float64); !isNum {
				t.Fatalf("limit became %T", v)
			}
		}
		if v, ok := m["online"]; ok && qv.Get("online") != "" {
			if _, isBool := v.(bool); !isBool {
				t.Fatalf("online became %T", v)
			}
		}
	})
}
