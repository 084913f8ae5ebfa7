package test

import (
	"strings"
	"testing"

	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/wire"
)

// TestOtactlShowsUpdateProgress: `otactl device list` and `otactl offer
// list` show each device's OTA state and how far its download is, and
// `otactl release uploads` lists unfinished uploads with the UPLOAD-ID that
// `otactl release abort` takes (which it documented without a way to find
// the ID).
func TestOtactlShowsUpdateProgress(t *testing.T) {
	b := startBroker(t)
	key, pub := newKey(t)
	b.trustKey(pub)
	fw := makeFirmware(t, key, "5.0.0", []string{"esp32-v2"}, 400_000)
	rel := b.release(fw)
	tok := b.register("d1", "device", "", map[string]any{"hardware": "esp32-v2"})
	b.register("d2", "device", "", map[string]any{"hardware": "esp32-v2"})
	b.offer(rel.ID, "d1", "d2")

	// d1 is downloading: a quarter of the image.
	d := b.device("d1", tok)
	d.publish("dm/d1/birth", birthPayload)
	off := uint64(100_000)
	d.publish("dm/d1/hb", wire.Heartbeat{UptimeSeconds: 9, HealthFlags: wire.HealthAllOK, OTAState: wire.StateDownloading, DownloadOffset: &off}.Encode())
	b.waitStatus("d1", "download offset", func(s fleet.Status) bool { return s.DownloadOffset != nil })

	must := func(args ...string) string {
		t.Helper()
		out, errOut, code := b.otactl("", args...)
		if code != 0 {
			t.Fatalf("otactl %v: exit %d\n%s%s", args, code, out, errOut)
		}
		return out
	}
	line := func(out, prefix string) string {
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, prefix) {
				return l
			}
		}
		t.Fatalf("no line %q in:\n%s", prefix, out)
		return ""
	}
	out := must("device", "list")
	if l := line(out, "d1 "); !strings.Contains(l, "downloading") || !strings.Contains(l, "25% of "+rel.ID) {
		t.Errorf("device list, d1: %q", l)
	}
	if l := line(out, "d2 "); !strings.Contains(l, "offered "+rel.ID) {
		t.Errorf("device list, d2: %q", l)
	}
	out = must("offer", "list")
	if l := line(out, "d1 "); !strings.Contains(l, "downloading") || !strings.Contains(l, "25% (100000 of 400000 bytes)") || !strings.Contains(l, "online") {
		t.Errorf("offer list, d1: %q", l)
	}
	if l := line(out, "d2 "); !strings.Contains(l, "offline") {
		t.Errorf("offer list, d2: %q", l)
	}
	out = must("device", "get", "d1")
	if !strings.Contains(out, "25% (100000 of 400000 bytes)") {
		t.Errorf("device get:\n%s", out)
	}

	// An upload cut off after two parts is listed, and its ID aborts it.
	fw2 := makeFirmware(t, key, "5.1.0", []string{"esp32-v2"}, 300_000)
	if _, err := uploadWith(b.admin(), fw2.signed, fw2.image, 64*1024, 2); err != nil {
		t.Fatal(err)
	}
	out = must("release", "uploads")
	l := line(out, fw2.m.ImageDigest.String())
	for _, want := range []string{"5.1.0", "43% (131072 of 300000 bytes)", " 2 ", opID} {
		if !strings.Contains(l, want) {
			t.Errorf("release uploads lacks %q: %q", want, l)
		}
	}
	must("release", "abort", fw2.m.ImageDigest.String())
	if out := must("release", "uploads"); !strings.Contains(out, "no unfinished upload") {
		t.Errorf("after the abort:\n%s", out)
	}
}
