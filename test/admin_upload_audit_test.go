package test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/otamq/otamq/cmd/otactl/rpc"
	"github.com/otamq/otamq/ota/admin"
)

// TestUploadAuditRecords: an upload is on the record once when it begins
// (again when it resumes) and once with its result and part count, not once
// per part (before, three uploads of 64 KiB parts filled 996 of the last
// 1000 records).
func TestUploadAuditRecords(t *testing.T) {
	b := startBroker(t)
	key, pub := newKey(t)
	b.trustKey(pub)
	c := b.admin()

	// A whole upload in 16 KiB parts: 44 parts.
	fw := makeFirmware(t, key, "4.0.0", []string{"esp32-v2"}, 700_000)
	r, err := uploadWith(c, fw.signed, fw.image, 16*1024, 0)
	if err != nil || !r.Done {
		t.Fatalf("upload: %+v %v", r, err)
	}
	recs := auditAll(t, c, map[string]any{"action": "release/upload"})
	if len(recs) != 2 {
		t.Fatalf("%d release/upload records for one upload, want 2 (begin, result)", len(recs))
	}
	result, begin := recs[0], recs[1]
	var args struct {
		Begin   bool   `json:"begin"`
		Parts   int    `json:"parts"`
		Release string `json:"release"`
		Upload  string `json:"upload"`
	}
	if err := json.Unmarshal(begin.Args, &args); err != nil || !args.Begin || begin.Target != r.Release.ID || args.Upload == "" {
		t.Fatalf("begin record %+v (%s)", begin, begin.Args)
	}
	args = struct {
		Begin   bool   `json:"begin"`
		Parts   int    `json:"parts"`
		Release string `json:"release"`
		Upload  string `json:"upload"`
	}{}
	if err := json.Unmarshal(result.Args, &args); err != nil || args.Parts != 43 || args.Release != r.Release.ID ||
		result.Target != r.Release.ID || result.Result != "ok" {
		t.Fatalf("result record %+v (%s), want 43 parts", result, result.Args)
	}

	// Interrupted and resumed: two begins, one result, the parts of both
	// sessions counted.
	fw2 := makeFirmware(t, key, "4.1.0", []string{"esp32-v2"}, 300_000)
	if _, err := uploadWith(c, fw2.signed, fw2.image, 64*1024, 2); err != nil {
		t.Fatal(err)
	}
	if r, err := uploadWith(c, fw2.signed, fw2.image, 64*1024, 0); err != nil || !r.Done {
		t.Fatalf("resume: %+v %v", r, err)
	}
	recs = auditAll(t, c, map[string]any{"action": "release/upload", "target": "4.1.0@" + fw2.m.ImageDigest.String()[:8]})
	if len(recs) != 3 || !strings.Contains(string(recs[0].Args), `"parts":5`) {
		t.Fatalf("resumed upload: %d records, newest %s", len(recs), recs[0].Args)
	}

	// An image that is not the manifest's: begin and the refusal that
	// removed it.
	fw3 := makeFirmware(t, key, "4.2.0", []string{"esp32-v2"}, 200_000)
	wrong := append([]byte(nil), fw3.image...)
	wrong[len(wrong)-1] ^= 1
	_, err = uploadWith(c, fw3.signed, wrong, 64*1024, 0)
	var re *rpc.RemoteError
	if !errors.As(err, &re) || re.Code != admin.CodeDigestMismatch {
		t.Fatalf("mismatching image: %v", err)
	}
	recs = auditAll(t, c, map[string]any{"action": "release/upload", "target": "4.2.0@" + fw3.m.ImageDigest.String()[:8]})
	if len(recs) != 2 || recs[0].Result != admin.CodeDigestMismatch || !strings.Contains(string(recs[0].Args), `"parts":4`) {
		t.Fatalf("refused upload: %+v", recs)
	}

	// Aborted: begin and abort.
	fw4 := makeFirmware(t, key, "4.3.0", []string{"esp32-v2"}, 200_000)
	r, err = uploadWith(c, fw4.signed, fw4.image, 64*1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Call(context.Background(), "release/abort", map[string]any{"id": r.Upload.ID}, nil); err != nil {
		t.Fatal(err)
	}
	recs = auditAll(t, c, map[string]any{"target": "4.3.0@" + fw4.m.ImageDigest.String()[:8]})
	if len(recs) != 2 || recs[0].Action != "release/abort" || !strings.Contains(string(recs[0].Args), `"parts":1`) {
		t.Fatalf("aborted upload: %+v", recs)
	}
}
