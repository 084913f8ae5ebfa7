package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/rollout"
	"github.com/otamq/otamq/ota/wire"
	"github.com/otamq/otamq/test/faultproxy"
	"github.com/otamq/otamq/test/testkit"
)

// TestAttacks is scenario 7: what an attacker on the path, a rogue or
// compromised broker, a rogue release key and a device with stolen or
// borrowed credentials can do, each with real processes.
//
// Through the real broker (the otamq binary, otactl, otamq-agent
// --supervise): a fault proxy inverts one byte of block data on its way to
// the "flip" agents (the digest fails, the agents fetch the image again and
// commit); a release signed by a key nobody trusts is refused at upload; a
// release signed by a second key the broker trusts (otactl key add) but the
// agents do not is rolled out to the "trust" agents, which refuse it; a
// device asks for blocks of images offered to others and for another
// device's topics; a device's token is used with another client ID.
//
// Against a hostile MQTT server (hostile_test.go: mochi embedded in the
// test, serving the contract's payloads built with ota/manifest and
// ota/wire): an agent, after a genuine update through that server, is
// offered manifests signed by an unknown key, by the broker-trusted key it
// does not trust, tampered after signing, for another hardware, replayed
// (signed earlier, a sequence below its guard; the one it runs), and a
// genuine manifest whose image the server swaps for another's. It refuses
// each, and stays on its image with its flash unchanged.
//
// A manifest names hardware, not a device (docs/PROTOCOL.md): the device
// can refuse another hardware's image, and an image whose bytes are not the
// ones signed, but not a release meant for another device of its own
// hardware; that choice is the broker's, which the contract says a
// compromised broker has.
func TestAttacks(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "")
	per := 1
	if suite.long {
		per = 3
	}
	groups := []group{{"flip", per}, {"trust", per}}
	rec := newRecord(t, 7, "", "")
	proxies := map[string]*faultproxy.Proxy{}
	agents := w.fleet(7, groups, func(id, g string) agentOpts {
		if g != "flip" {
			return agentOpts{}
		}
		px, url := w.proxy(id, uint64(len(proxies)))
		proxies[id] = px
		// a request that timed out would drop its late blocks, the
		// corrupted one with them: give the requests all the time a
		// loaded machine needs, so the corrupted block is the one written
		return agentOpts{url: url, flags: []string{"--request-timeout-ms", "15000"}}
	})
	var flips, trusts []*agent
	for _, a := range agents {
		if a.group == "flip" {
			flips = append(flips, a)
		} else {
			trusts = append(trusts, a)
		}
	}
	rec.r.Setup = fmt.Sprintf("the otamq binary, %d otamq-agent --supervise processes (%d behind a test/faultproxy each), otactl (keygen, key add, sign, release upload, rollout), MQTT v5 clients (paho) as devices; and a hostile MQTT server (mochi-mqtt embedded in the test, the contract's payloads built with ota/manifest and ota/wire) with one more agent",
		len(agents), len(flips))
	rec.r.Injected = "one inverted byte of block data per flip agent; a release key nobody trusts; a second release key only the broker trusts; block requests for images offered to others and for other devices' topics; a device's token with another client ID; from the hostile server: manifests signed by an unknown key, by the broker-only key, tampered after signing, for another hardware, replayed (lower sequence; the one running), and an image swapped for another's"

	attackFlip(t, w, rec, flips, proxies)
	if t.Failed() {
		return
	}
	resigned := attackKeys(t, w, rec, trusts)
	if t.Failed() {
		return
	}
	attackFetch(t, w, rec, flips[0], trusts[0])
	attackToken(t, w, rec, flips[0], trusts[0])
	if t.Failed() {
		return
	}
	attackHostile(t, w, rec, resigned)
}

// attackFlip: the proxy inverts one byte of one block to each flip agent;
// its image digest fails, it fetches the image again in full, verifies and
// commits.
func attackFlip(t *testing.T, w *world, rec *record, flips []*agent, proxies map[string]*faultproxy.Proxy) {
	const size = 48 * 1024
	rel := w.release(7, "1.1.0", healthy, 1000, size)
	base := map[string]faultproxy.Stats{}
	for i, a := range flips {
		px := proxies[a.id]
		px.SetFlip(faultproxy.Flip{TopicSuffix: "/ota/blk", Every: 3 + i, Limit: 1})
		base[a.id] = px.Stats()
	}
	bytes0 := w.metrics().sum("otamq_block_bytes_total")
	w.rollout("flip", "release: "+rel.ID+"\nselector: {groups: [flip]}\nwaves:\n  - {groups: [flip]}\nprobation: 2s\n")
	v := w.waitRollout("flip", 3*time.Minute, func(v rollout.View) error {
		if v.State != "completed" {
			return fmt.Errorf("not completed")
		}
		return nil
	})
	if v.Counts["succeeded"] != len(flips) {
		t.Fatalf("counts %v, want %d succeeded", nonzero(v.Counts), len(flips))
	}
	worst := 0.0
	for _, a := range flips {
		eventually(t, 30*time.Second, func() error {
			f, err := a.flash()
			if err != nil {
				return err
			}
			if f.Boot != 1 || f.BootState != "VALID" || f.Slots != [2]string{"1.0.0", "1.1.0"} || f.State != "committed" {
				return fmt.Errorf("%s: flash %s, slots %v; want slot 1 (1.1.0) VALID, committed", a.id, f, f.Slots)
			}
			return nil
		})
		st := proxies[a.id].Stats()
		if got := st.Flips - base[a.id].Flips; got != 1 {
			t.Errorf("%s: the proxy flipped %d bytes, want 1", a.id, got)
		}
		sent := st.ToClient - base[a.id].ToClient
		worst = max(worst, float64(sent)/size)
		if sent < 2*size {
			t.Errorf("%s was sent %d bytes for a %d-byte image: not fetched twice", a.id, sent, size)
		}
		tl := w.timeline(a.id, "flip")
		if err := inOrder(tl, "offer", "update.download.started", "update.download.started", "update.download.completed",
			"update.reboot.completed", "update.health.ok"); err != nil {
			t.Errorf("%s: %v", a.id, err)
		}
		refetch := 0
		for _, e := range tl {
			if e.Type == "update.download.started" && e.Detail == "refetching" {
				refetch++
			}
			if e.Type == "update.download.failed" || e.Type == "update.rejected" {
				t.Errorf("%s: %+v", a.id, e)
			}
		}
		if refetch != 1 {
			t.Errorf("%s: %d refetches in its timeline, want 1: %+v", a.id, refetch, tl)
		}
	}
	served := w.metrics().sum("otamq_block_bytes_total") - bytes0
	if served < float64(2*size*len(flips)) {
		t.Errorf("otamq_block_bytes_total grew by %.0f, want at least %d (each image twice)", served, 2*size*len(flips))
	}
	rec.checked("byte flip: the proxy inverted one byte of block data (the last byte of one ota/blk PUBLISH, so MQTT and CBOR framing stay intact) to each of the %d flip agent(s); each's image digest failed, it reported update.download.started \"refetching\" once, fetched the whole image again, verified it and committed 1.1.0 (own flash slot 1 VALID, committed); no download failure, no rejection", len(flips))
	rec.figure("byte flip: bytes sent to an agent / image size, worst agent", "%.2f (the image twice, with MQTT and CBOR overhead)", worst)
	rec.figure("byte flip: image bytes the broker served (otamq_block_bytes_total)", "%.0f for %d × %d-byte images: %.0f refetched", served, len(flips), size, served-float64(size*len(flips)))
}

// attackKeys: a release signed by a key nobody trusts is refused at
// upload; one signed by a key the broker trusts (otactl key add) but the
// agents do not is uploaded, rolled out to the trust agents and refused by
// each. It returns the broker-only key's manifest file (signed 1.3.0), for
// the hostile server.
func attackKeys(t *testing.T, w *world, rec *record, trusts []*agent) string {
	const size = 32 * 1024
	w.must("keygen", "--out", w.dir, "--name", "rogue")
	w.must("keygen", "--out", w.dir, "--name", "second")
	rogue, second := filepath.Join(w.dir, "rogue.key"), filepath.Join(w.dir, "second.key")

	// ---- a key nobody trusts: the broker refuses the upload
	file := w.signWith(rogue, 7, "1.2.0", healthy, 2000, size)
	m0 := w.metrics()
	out, errOut, code := w.otactl("--json", "release", "upload", file, file+".manifest")
	if code == 0 || !strings.Contains(out+errOut, "unknown_key") {
		t.Errorf("upload of a release signed by an unknown key: exit %d, want refused with unknown_key:\n%s%s", code, out, errOut)
	}
	m1 := w.metrics()
	if d := m1.sum("otamq_uploads_rejected_total", "reason", "unknown_key") - m0.sum("otamq_uploads_rejected_total", "reason", "unknown_key"); d != 1 {
		t.Errorf("otamq_uploads_rejected_total{reason=unknown_key} grew by %v, want 1", d)
	}
	var rels []release
	w.mustJSON(&rels, "release", "list")
	for _, r := range rels {
		if r.Version == "1.2.0" {
			t.Errorf("the release signed by an unknown key is stored: %+v", r)
		}
	}
	rec.checked("unknown key, through the broker: otactl release upload of a release signed by a key nobody trusts is refused (%s), otamq_uploads_rejected_total{reason=unknown_key} +1, no release stored: the broker's check stops it before any device could be offered it (the agent's own check of an unknown key is shown against the hostile server)",
		firstLine(errOut))

	// ---- a key the broker trusts and the devices do not
	w.must("key", "add", filepath.Join(w.dir, "second.pub"), "--name", "second")
	file = w.signWith(second, 7, "1.3.0", healthy, 3000, size)
	var rel release
	w.mustJSON(&rel, "release", "upload", file, file+".manifest")
	before := map[string]flash{}
	for _, a := range trusts {
		f, err := a.flash()
		if err != nil {
			t.Fatal(err)
		}
		before[a.id] = f
	}
	served0 := w.metrics().sum("otamq_block_requests_total", "result", "served")
	w.rollout("resigned", "release: "+rel.ID+"\nselector: {groups: [trust]}\nwaves:\n  - {groups: [trust]}\nprobation: 2s\n")
	var devs map[string]rollout.DeviceView
	eventually(t, 2*time.Minute, func() error {
		devs = w.rolloutDevices("resigned")
		for _, a := range trusts {
			if d := devs[a.id]; d.State != "failed" {
				return fmt.Errorf("%s: %s (%s), want failed", a.id, d.State, d.Reason)
			}
		}
		return nil
	})
	// the wave cannot reach its success share: the rollout pauses
	v := w.waitRollout("resigned", time.Minute, func(v rollout.View) error {
		if v.State != "paused" || v.PausedBy != "success" {
			return fmt.Errorf("not paused by its success share")
		}
		return nil
	})
	if got := w.metrics().sum("otamq_updates_total", "result", "failed", "version", "1.3.0"); int(got) != len(trusts) {
		t.Errorf("otamq_updates_total{result=failed,version=1.3.0} = %v, want %d", got, len(trusts))
	}
	offers := 0
	for _, a := range trusts {
		d := devs[a.id]
		if !strings.Contains(d.Reason, "refused by the device") || !strings.Contains(d.Reason, "signature") {
			t.Errorf("%s: reason %q, want refused by the device (signature)", a.id, d.Reason)
		}
		tl := w.timeline(a.id, "resigned")
		if err := inOrder(tl, "offer", "update.rejected"); err != nil {
			t.Errorf("%s: %v", a.id, err)
		}
		for _, e := range tl {
			switch {
			case e.Type == "offer":
				offers++
			case e.Type == "update.rejected" && e.Error != "signature":
				t.Errorf("%s: rejected with %q, want signature: %+v", a.id, e.Error, e)
			case e.Source == "device" && e.Type != "update.rejected":
				t.Errorf("%s: the agent went on with the refused release: %+v", a.id, e)
			}
		}
		f, err := a.flash()
		if err != nil {
			t.Fatal(err)
		}
		if b := before[a.id]; f.Boot != b.Boot || f.BootState != b.BootState || f.Slots != b.Slots || f.Guard != b.Guard || f.version() != "1.0.0" {
			t.Errorf("%s: flash %s, slots %v; before the offer %s, slots %v", a.id, f, f.Slots, b, b.Slots)
		}
	}
	if d := w.metrics().sum("otamq_block_requests_total", "result", "served") - served0; d != 0 {
		t.Errorf("%v block requests served during the refused rollout, want 0", d)
	}
	rec.checked("broker-trusted key the devices do not trust: otactl key add of a second key, a release signed with it is uploaded (the broker trusts it) and rolled out to the %d trust agent(s), which trust only the first; each refused it with update.rejected, error signature, fetched no block, and its flash is as before (slot 0, 1.0.0, VALID); the rollout counts each as failed with reason %q (otamq_updates_total{result=failed} +%d) and is paused by its success share (%q)",
		len(trusts), devs[trusts[0].id].Reason, len(trusts), v.Reason)
	rec.figure("broker-only key: rollout result", "%d of %d devices failed (refused by the device), %d offers, rollout %s", v.Counts["failed"], len(trusts), offers, v.State)
	return file + ".manifest"
}

// attackFetch: a device (registered, with its own token) asks the broker for
// blocks of images offered to other devices only, and publishes and
// subscribes on another device's topics.
func attackFetch(t *testing.T, w *world, rec *record, flip, trust *agent) {
	var reg struct{ Token string }
	w.mustJSON(&reg, "device", "register", "mallory", "--hardware", "esp32-v2")
	mallory := dialDevice(t, w.addr, "mallory", "mallory", reg.Token)
	if mallory.err != nil {
		t.Fatalf("mallory connects with its own token: %v", mallory.err)
	}
	if rc := mallory.subscribe("dm/mallory/ota/blk"); rc >= 0x80 {
		t.Fatalf("mallory subscribes to its own block topic: 0x%02x", rc)
	}
	flipImg, err := os.ReadFile(filepath.Join(w.dir, "firmware-1.1.0.bin"))
	if err != nil {
		t.Fatal(err)
	}
	trustImg, err := os.ReadFile(filepath.Join(w.dir, "firmware-1.3.0.bin"))
	if err != nil {
		t.Fatal(err)
	}
	m0 := w.metrics()
	for i, img := range [][]byte{flipImg, trustImg} {
		d := sha256.Sum256(img)
		req := wire.BlockRequest{Digest: d[:], Offset: 0, Size: 4096, Count: 4, RequestID: uint32(100 + i)}
		if rc := mallory.publish("dm/mallory/ota/get", req.Encode()); rc >= 0x80 {
			t.Errorf("mallory's block request: PUBACK 0x%02x", rc)
		}
	}
	var answers []*wire.BlockError
	eventually(t, 20*time.Second, func() error {
		answers = answers[:0]
		for _, p := range mallory.messages("dm/mallory/ota/blk") {
			b, be, err := wire.DecodeBlock(p.Payload, 1<<16)
			if err != nil {
				return err
			}
			if b != nil {
				return fmt.Errorf("mallory was sent a block: request %d offset %d, %d bytes", b.RequestID, b.Offset, len(b.Data))
			}
			answers = append(answers, be)
		}
		if len(answers) < 2 {
			return fmt.Errorf("%d answers, want 2", len(answers))
		}
		return nil
	})
	for _, be := range answers {
		if be.Code != wire.BlockNotAssigned {
			t.Errorf("mallory's request %d: block error %d (%s), want %d (not assigned to you)", be.RequestID, be.Code, be.Message, wire.BlockNotAssigned)
		}
	}
	// another device's topics
	pub := mallory.publish("dm/"+flip.id+"/ota/get", wire.BlockRequest{Digest: make([]byte, 32), Size: 4096, Count: 1, RequestID: 7}.Encode())
	sub := mallory.subscribe("dm/" + trust.id + "/ota/blk")
	if pub != 0x87 || sub != 0x87 {
		t.Errorf("mallory on %s's get topic: PUBACK 0x%02x, on %s's block topic: SUBACK 0x%02x; want 0x87 (not authorized) for both", flip.id, pub, trust.id, sub)
	}
	var m1 metrics
	eventually(t, 10*time.Second, func() error {
		m1 = w.metrics()
		if d := m1.sum("otamq_block_requests_total", "result", "not_assigned") - m0.sum("otamq_block_requests_total", "result", "not_assigned"); d != 2 {
			return fmt.Errorf("otamq_block_requests_total{result=not_assigned} grew by %v, want 2", d)
		}
		return nil
	})
	for _, c := range []struct {
		name  string
		label []string
	}{
		{"otamq_block_bytes_total", nil},
		{"otamq_block_requests_total", []string{"result", "served"}},
	} {
		if d := m1.sum(c.name, c.label...) - m0.sum(c.name, c.label...); d != 0 {
			t.Errorf("%s%v grew by %v while only mallory asked for blocks, want 0", c.name, c.label, d)
		}
	}
	for _, reason := range []string{"acl_publish", "acl_subscribe"} {
		if d := m1.sum("otamq_rejected_total", "reason", reason) - m0.sum("otamq_rejected_total", "reason", reason); d != 1 {
			t.Errorf("otamq_rejected_total{reason=%s} grew by %v, want 1", reason, d)
		}
	}
	rec.checked("another device's image: a device (its own token, MQTT v5) asked for blocks of the two images offered to the flip and the trust agents only: each answered with block error 1 (not assigned to you), no block; otamq_block_requests_total{result=not_assigned} +2, otamq_block_bytes_total and {result=served} unchanged; its publish on another device's ota/get got PUBACK 0x87 and its subscription to another's ota/blk SUBACK 0x87 (otamq_rejected_total acl_publish +1, acl_subscribe +1)")
}

// attackToken: agent a's token with another client ID is refused at
// connect; a's session and the other device's go on.
func attackToken(t *testing.T, w *world, rec *record, a, b *agent) {
	tok, err := os.ReadFile(filepath.Join(w.dir, "agents", a.id+".token"))
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(tok))
	devs0 := w.devices()
	m0 := w.metrics()
	for _, c := range []struct{ client, user string }{
		{b.id, b.id},     // a's token as b's password
		{b.id, a.id},     // a's user name and token, b's client ID
		{"dev-99", a.id}, // a's user name and token, a client ID nobody has
	} {
		d := dialDevice(t, w.addr, c.client, c.user, token)
		if d.err == nil || d.connack == nil || d.connack.ReasonCode != 0x87 {
			code := -1
			if d.connack != nil {
				code = int(d.connack.ReasonCode)
			}
			t.Errorf("client ID %s, user %s, %s's token: %v, CONNACK %#x; want refused with 0x87", c.client, c.user, a.id, d.err, code)
		}
	}
	m1 := w.metrics()
	var refused []string
	total := 0.0
	for _, reason := range []string{"bad_credentials", "identity_mismatch", "unknown_client", "login_throttled"} {
		if d := m1.sum("otamq_rejected_total", "reason", reason) - m0.sum("otamq_rejected_total", "reason", reason); d != 0 {
			refused = append(refused, fmt.Sprintf("%s +%.0f", reason, d))
			total += d
		}
	}
	if total != 3 {
		t.Errorf("otamq_rejected_total grew by %v (%s), want 3", total, strings.Join(refused, ", "))
	}
	if d := m1.sum("otamq_connects_total") - m0.sum("otamq_connects_total"); d != 0 {
		t.Errorf("otamq_connects_total grew by %v during the refused connects", d)
	}
	devs1 := w.devices()
	for _, x := range []*agent{a, b} {
		s0, s1 := devs0[x.id].Status, devs1[x.id].Status
		if !s1.Online || s1.Connects != s0.Connects || !s1.ConnectedAt.Equal(s0.ConnectedAt) {
			t.Errorf("%s: online %v, connects %d since %v; before the attempts %d since %v: its session was touched",
				x.id, s1.Online, s1.Connects, s1.ConnectedAt, s0.Connects, s0.ConnectedAt)
		}
	}
	rec.checked("stolen token: %s's token with client ID %s (as %s's password, and with %s as user name) and with an unknown client ID: each CONNACK 0x87 (not authorized); otamq_rejected_total %s, otamq_connects_total unchanged; both agents still online on the same session (same connect count and time)",
		a.id, b.id, b.id, a.id, strings.Join(refused, ", "))
}

// attackHostile: an agent against the hostile server. After a genuine
// update through it (the server speaks the contract: the control), every
// bad offer is refused with the right error, the agent fetches nothing for
// it and stays on its image with its flash unchanged; an image swapped for
// another's fails its digest after each of the agent's refetches. A last
// genuine update shows the agent still takes a good one.
func attackHostile(t *testing.T, w *world, rec *record, brokerOnly string) {
	h := startHostile(t)
	const id = "victim"
	a := w.startAgent(id, "hostile", "anything", agentOpts{url: h.url()})
	eventually(t, 30*time.Second, func() error {
		if b := h.birthsOf(id); len(b) == 0 || b[len(b)-1].FirmwareVersion != "1.0.0" {
			return fmt.Errorf("no birth on 1.0.0 yet: %+v", b)
		}
		return nil
	})
	trusted := w.privateKey(w.key)
	rogue, err := manifest.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	const size = 24 * 1024
	image := func(v string, seed uint64) []byte {
		img := make([]byte, size)
		r := rng(seed)
		for i := 64; i < size; i++ {
			img[i] = byte(r.Uint32())
		}
		copy(img, []byte{0xe9, 'S', 'I', 'M', 1, byte(healthy)})
		copy(img[16:48], v)
		return img
	}
	sign := func(key *ecdsa.PrivateKey, v string, seq uint64, hw string, img []byte) []byte {
		d := digestOf(img)
		m := manifest.Manifest{Sequence: seq, Version: v, BuildID: "e2e-attacks", Hardware: []string{hw},
			ImageSize: uint64(len(img)), ImageDigest: d, Kind: manifest.KindFirmware}
		b, err := manifest.Sign(&m, key)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	offer := func(rolloutID string, signed []byte) {
		h.offer(id, wire.Offer{RolloutID: rolloutID, Manifest: signed, BlockSize: 4096, MaxWindow: 4})
	}
	events := func(rolloutID string) []wire.Event {
		var out []wire.Event
		for _, e := range h.eventsOf(id) {
			if e.RolloutID == rolloutID {
				out = append(out, e)
			}
		}
		return out
	}
	waitCommitted := func(rolloutID, v string, slot int, seq uint64) {
		eventually(t, 90*time.Second, func() error {
			f, err := a.flash()
			if err != nil {
				return err
			}
			if f.Boot != slot || f.version() != v || f.BootState != "VALID" || f.State != "committed" || f.Guard != seq {
				return fmt.Errorf("flash %s; want slot %d (%s) VALID, committed, guard %d", f, slot, v, seq)
			}
			for _, e := range events(rolloutID) {
				if e.Code == wire.EvHealthOK {
					return nil
				}
			}
			return fmt.Errorf("no health ok for %s yet: %+v", rolloutID, events(rolloutID))
		})
	}

	// the control: a genuine release through the hostile server
	good := image("1.1.0", 71)
	goodSigned := sign(trusted, "1.1.0", 1000, "esp32-v2", good)
	h.serve(digestOf(good), good)
	offer("h-good", goodSigned)
	waitCommitted("h-good", "1.1.0", 1, 1000)
	rec.checked("hostile server, control: a genuine release (trusted key, sequence 1000) sent and served by it is installed and committed by the agent (slot 1, 1.1.0, VALID, replay guard 1000): the server speaks the contract, so what the agent refuses below it refuses for what was changed")

	// manifests for the attacks
	newer := image("1.2.0", 72)
	tampered := sign(trusted, "1.2.0", 2000, "esp32-v2", newer)
	// the payload's image size (key 7) grows by one, after signing
	i := bytes.Index(tampered, []byte{0x07, 0x19, size >> 8, size & 0xff})
	if i < 0 {
		t.Fatal("image size not found in the manifest")
	}
	tampered[i+3]++
	brokerSigned, err := os.ReadFile(brokerOnly)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, rollout string
		manifest      []byte
		err           wire.ErrorCode
		detail        string // in the event's detail, when not ""
		what          string // for the report
	}{
		{"unknown key", "h-unknown", sign(rogue, "1.2.0", 2000, "esp32-v2", newer), wire.ErrCodeSignature, "",
			"signed by a key neither the broker nor the device trusts"},
		{"broker-only key", "h-resigned", brokerSigned, wire.ErrCodeSignature, "",
			"of release 1.3.0 exactly as otactl sign made it with the second key (the one the broker trusts and the device does not)"},
		{"tampered", "h-tampered", tampered, wire.ErrCodeSignature, "",
			"signed by the trusted key, then its image size changed by the server"},
		{"another device's image", "h-other-hw", sign(trusted, "1.2.0", 2000, "esp32-v3", newer), wire.ErrCodeHardware, "",
			"signed by the trusted key for hardware esp32-v3 (another device's image; the device is esp32-v2)"},
		{"replayed, lower sequence", "h-replay-seq", sign(trusted, "1.5.0", 900, "esp32-v2", newer), wire.ErrCodeVersionPolicy, "sequence",
			"signed by the trusted key before the running one (sequence 900 < guard 1000), a newer version 1.5.0"},
		{"replayed, running one", "h-replay-same", goodSigned, wire.ErrCodeVersionPolicy, "",
			"of the release it runs (1.1.0, sequence 1000) again, under a new rollout ID"},
	}
	for _, c := range cases {
		f0, raw0 := snapshot(t, a)
		gets0, boots0, pids0 := len(h.getsOf(id)), a.boots(1, "1.1.0"), testkit.ChildProcesses(a.cmd.Process.Pid)
		offer(c.rollout, c.manifest)
		var got wire.Event
		eventually(t, 30*time.Second, func() error {
			for _, e := range events(c.rollout) {
				if e.Code == wire.EvRejected {
					got = e
					return nil
				}
			}
			return fmt.Errorf("%s: no update.rejected for %s: %+v", c.name, c.rollout, events(c.rollout))
		})
		if got.Error != c.err || !strings.Contains(got.Detail, c.detail) {
			t.Errorf("%s: rejected with error %s, detail %q; want %s, detail with %q", c.name, got.Error, got.Detail, c.err, c.detail)
		}
		// the heartbeats go on after the refusal: the agent keeps running
		hb := h.heartbeats(id)
		eventually(t, 20*time.Second, func() error {
			if n := h.heartbeats(id); n < hb+2 {
				return fmt.Errorf("%s: %d heartbeats since the refusal", c.name, n-hb)
			}
			return nil
		})
		for _, e := range events(c.rollout) {
			if e.Code != wire.EvRejected {
				t.Errorf("%s: the agent went on with the refused offer: %+v", c.name, e)
			}
		}
		if n := len(h.getsOf(id)) - gets0; n != 0 {
			t.Errorf("%s: %d block requests for a refused offer", c.name, n)
		}
		f1, raw1 := snapshot(t, a)
		if f1.Boot != f0.Boot || f1.BootState != f0.BootState || f1.Other != f0.Other || f1.Slots != f0.Slots ||
			f1.Guard != f0.Guard || f1.State != f0.State || raw1 != raw0 {
			t.Errorf("%s: flash %s (%s) after the refusal, %s (%s) before", c.name, f1, raw1, f0, raw0)
		}
		if b, p := a.boots(1, "1.1.0"), testkit.ChildProcesses(a.cmd.Process.Pid); b != boots0 || fmt.Sprint(p) != fmt.Sprint(pids0) {
			t.Errorf("%s: boots %d, device process %v; before %d, %v", c.name, b, p, boots0, pids0)
		}
		rec.checked("hostile server, %s: a manifest %s: update.rejected, error %s%s; no block requested, no event but the refusal, otadata, slots and state record unchanged, the same device process (no reboot) on 1.1.0, heartbeats going on",
			c.name, c.what, got.Error, detailNote(got.Detail))
	}
	if t.Failed() {
		return
	}

	// an image swapped for another's: a genuine manifest, other bytes
	f0, _ := snapshot(t, a)
	boots0 := a.boots(1, "1.1.0")
	other := image("1.2.0", 73) // the same size, another device's build
	h.serve(digestOf(newer), other)
	gets0 := len(h.getsOf(id))
	offer("h-swapped", sign(trusted, "1.2.0", 2000, "esp32-v2", newer))
	var failed wire.Event
	eventually(t, 60*time.Second, func() error {
		for _, e := range events("h-swapped") {
			if e.Code == wire.EvDownloadFailed {
				failed = e
				return nil
			}
		}
		return fmt.Errorf("no update.download.failed for h-swapped: %+v", events("h-swapped"))
	})
	refetch := 0
	for _, e := range events("h-swapped") {
		switch {
		case e.Code == wire.EvDownloadStarted && e.Detail == "refetching":
			refetch++
		case e.Code == wire.EvDownloadCompleted || e.Code >= wire.EvInstallStarted:
			t.Errorf("swapped image: %+v", e)
		}
	}
	fetched := uint64(0)
	for _, r := range h.getsOf(id)[gets0:] {
		fetched += uint64(r.Size) * uint64(r.Count)
	}
	if failed.Error != wire.ErrCodeDigest || refetch != 3 {
		t.Errorf("swapped image: failed with %s after %d refetches; want digest_mismatch after 3", failed.Error, refetch)
	}
	running0 := fileHash(t, a, "slot1.bin")
	eventually(t, 20*time.Second, func() error {
		// A download begins by taking the inactive slot's otadata entry
		// away (esp_ota_begin, ESP-IDF >= 5.5: the bootloader may no
		// longer fall back to a slot being overwritten), so that entry
		// changes; the running slot, its entry and what boots next do not.
		f1, _ := snapshot(t, a)
		if f1.Boot != f0.Boot || f1.BootState != f0.BootState || f1.Slots != f0.Slots || f1.Guard != f0.Guard ||
			f1.Other == "NEW" || f1.Other == "PENDING_VERIFY" || fileHash(t, a, "slot1.bin") != running0 {
			return fmt.Errorf("flash %s, slots %v after the failure, %s, slots %v before", f1, f1.Slots, f0, f0.Slots)
		}
		return nil
	})
	f1, _ := snapshot(t, a)
	if b := a.boots(1, "1.1.0"); b != boots0 {
		t.Errorf("swapped image: booted 1.1.0 %d times, before %d", b, boots0)
	}
	rec.checked("hostile server, an image swapped for another's: a genuine manifest (trusted key, 1.2.0) with another image of the same size served under its digest: the agent fetched it, found the digest wrong, refetched it %d times (event 3 \"refetching\"), then update.download.failed, error %s; nothing installed: the running slot 1 (1.1.0) byte for byte, its otadata entry (VALID) and the boot choice unchanged, no reboot; the other entry, VALID before, is %s (the download began by invalidating it, as esp_ota_begin does on ESP-IDF >= 5.5)", refetch, failed.Error, f1.Other)
	rec.figure("hostile server, swapped image: bytes the agent asked for before giving up", "%d (%.1f × the image)", fetched, float64(fetched)/size)

	// and a genuine update still goes through
	h.serve(digestOf(newer), newer)
	offer("h-good-2", sign(trusted, "1.2.0", 2000, "esp32-v2", newer))
	waitCommitted("h-good-2", "1.2.0", 0, 2000)
	rec.checked("hostile server, after the attacks: a genuine release (1.2.0, sequence 2000) is installed and committed (slot 0, VALID, guard 2000): the refusals left the agent able to update")
	rec.figure("hostile server: bad offers refused by the agent", "%d of %d (and the swapped image failed its digest)", len(cases), len(cases))
}

// snapshot is the agent's flash and the SHA-256 of its otadata and slot
// files (the simulated flash the bootloader reads).
func snapshot(t *testing.T, a *agent) (flash, string) {
	t.Helper()
	f, err := a.flash()
	if err != nil {
		t.Fatal(err)
	}
	hs := sha256.New()
	for _, name := range []string{"otadata", "slot0.bin", "slot1.bin"} {
		b, err := os.ReadFile(filepath.Join(a.dir, name))
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		hs.Write([]byte(name))
		hs.Write(b)
	}
	return f, fmt.Sprintf("%x", hs.Sum(nil)[:8])
}

// fileHash is the SHA-256 (hex, first 8 bytes) of the agent's file name.
func fileHash(t *testing.T, a *agent, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(a.dir, name))
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(b)
	return fmt.Sprintf("%x", h[:8])
}

func detailNote(d string) string {
	if d == "" {
		return ""
	}
	return fmt.Sprintf(" (detail %q)", d)
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// privateKey reads a private key file of otactl keygen.
func (w *world) privateKey(file string) *ecdsa.PrivateKey {
	w.t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		w.t.Fatal(err)
	}
	k, err := manifest.ParsePrivateKey(b)
	if err != nil {
		w.t.Fatal(err)
	}
	return k
}

// mqttDevice is a paho MQTT v5 client speaking as a device.
type mqttDevice struct {
	t       *testing.T
	cli     *paho.Client
	connack *paho.Connack
	err     error // the connect's

	mu   sync.Mutex
	msgs []*paho.Publish
}

// dialDevice connects to addr with client ID id, user name user and
// password pass; a refused connect leaves err and the CONNACK set.
func dialDevice(t *testing.T, addr, id, user, pass string) *mqttDevice {
	t.Helper()
	d := &mqttDevice{t: t}
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	d.cli = paho.NewClient(paho.ClientConfig{ClientID: id, Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			d.mu.Lock()
			d.msgs = append(d.msgs, pr.Packet)
			d.mu.Unlock()
			return true, nil
		}}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	mp := uint32(64 << 10)
	d.connack, d.err = d.cli.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true,
		Username: user, UsernameFlag: true, Password: []byte(pass), PasswordFlag: true,
		Properties: &paho.ConnectProperties{MaximumPacketSize: &mp}})
	if d.err != nil {
		_ = conn.Close()
		return d
	}
	t.Cleanup(func() { _ = d.cli.Disconnect(&paho.Disconnect{}) })
	return d
}

// publish sends at QoS 1 and returns the PUBACK's reason code.
func (d *mqttDevice) publish(topic string, payload []byte) byte {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pr, err := d.cli.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: payload})
	if pr == nil {
		d.t.Fatalf("publish %s: %v", topic, err)
	}
	return pr.ReasonCode
}

// subscribe subscribes at QoS 1 and returns the SUBACK's reason code.
func (d *mqttDevice) subscribe(filter string) byte {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sa, err := d.cli.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if sa == nil || len(sa.Reasons) != 1 {
		d.t.Fatalf("subscribe %s: %v", filter, err)
	}
	return sa.Reasons[0]
}

// messages is what arrived on topic so far.
func (d *mqttDevice) messages(topic string) []*paho.Publish {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []*paho.Publish
	for _, m := range d.msgs {
		if m.Topic == topic {
			out = append(out, m)
		}
	}
	return out
}
