package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	bolt "go.etcd.io/bbolt"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/cmd/otactl/rpc"
	"github.com/otamq/otamq/ota/admin"
	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/wire"
)

// lineReader collects the lines a process prints.
type lineReader struct {
	mu    sync.Mutex
	lines []string
}

func (l *lineReader) run(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<22)
	for sc.Scan() {
		l.mu.Lock()
		l.lines = append(l.lines, sc.Text())
		l.mu.Unlock()
	}
}

func (l *lineReader) snapshot() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// TestOTADownloadMosquittoV311: an MQTT 3.1.1 device made of Debian's
// mosquitto tools. mosquitto_sub, as the device, receives its offer and its
// blocks; its gateway publishes the block requests with mosquitto_pub (a
// device cannot have two connections, and a gateway may request for its
// children). The CBOR is built here.
func TestOTADownloadMosquittoV311(t *testing.T) {
	b := startBroker(t, func(o *broker.Options) { o.DeviceRate = -1 })
	key, pub := newKey(t)
	b.trustKey(pub)
	fw := makeFirmware(t, key, "2.0.0", []string{"esp32-v2"}, 256*1024+123)
	rel := b.release(fw)
	gwTok := b.register("gw", "gateway", "")
	devTok := b.register("node", "device", "gw", map[string]any{"hardware": "esp32-v2"})
	rollout := b.offer(rel.ID, "node")
	host, port := b.hostPort()

	needCommand(t, "mosquitto_sub")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sub := exec.CommandContext(ctx, "mosquitto_sub", "-h", host, "-p", port, "-V", "mqttv311", "-i", "node", "-u", "node", "-P", devTok,
		"-t", "dm/node/ota/manifest", "-t", "dm/node/ota/blk", "-q", "1", "-F", "%t %x")
	out, err := sub.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = sub.Wait() }()
	lines := &lineReader{}
	go lines.run(out)

	// The offer arrives when it subscribes.
	var offer wire.Offer
	eventually(t, 10*time.Second, func() error {
		for _, l := range lines.snapshot() {
			if topic, hx, ok := strings.Cut(l, " "); ok && topic == "dm/node/ota/manifest" {
				raw, err := hex.DecodeString(hx)
				if err != nil {
					return err
				}
				offer, err = wire.DecodeOffer(raw)
				return err
			}
		}
		return fmt.Errorf("no offer yet")
	})
	keys, _ := manifest.NewKeySet(&key.PublicKey)
	s, err := manifest.Verify(offer.Manifest, keys)
	if err != nil || offer.RolloutID != rollout {
		t.Fatalf("offer %q: %v", offer.RolloutID, err)
	}

	// Fetch the image with 4 KiB blocks, 8 at a time.
	img := make([]byte, 0, s.Manifest.ImageSize)
	seen := 0
	for rid := uint32(1); uint64(len(img)) < s.Manifest.ImageSize; rid++ {
		req := wire.BlockRequest{Digest: s.Manifest.ImageDigest[:], Offset: uint64(len(img)), Size: 4096, Count: 8, RequestID: rid}
		reqFile := filepath.Join(t.TempDir(), "req.cbor")
		if err := os.WriteFile(reqFile, req.Encode(), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := mosq(t, "mosquitto_pub", "-h", host, "-p", port, "-V", "mqttv311", "-i", "gw", "-u", "gw", "-P", gwTok,
			"-t", "dm/node/ota/get", "-q", "1", "-f", reqFile); err != nil {
			t.Fatalf("block request: %v\n%s", err, out)
		}
		want := min(8*4096, int(s.Manifest.ImageSize)-len(img))
		eventually(t, 10*time.Second, func() error {
			got := 0
			for _, l := range lines.snapshot()[seen:] {
				if topic, hx, ok := strings.Cut(l, " "); ok && topic == "dm/node/ota/blk" {
					raw, _ := hex.DecodeString(hx)
					bl, be, err := wire.DecodeBlock(raw, 1<<20)
					if err != nil || be != nil {
						return fmt.Errorf("block message %v %+v", err, be)
					}
					if bl.RequestID == rid {
						got += len(bl.Data)
					}
				}
			}
			if got < want {
				return fmt.Errorf("request %d: %d of %d bytes", rid, got, want)
			}
			return nil
		})
		ls := lines.snapshot()
		for _, l := range ls[seen:] {
			if topic, hx, ok := strings.Cut(l, " "); ok && topic == "dm/node/ota/blk" {
				raw, _ := hex.DecodeString(hx)
				bl, _, _ := wire.DecodeBlock(raw, 1<<20)
				if bl != nil && bl.RequestID == rid && bl.Offset == uint64(len(img)) {
					img = append(img, bl.Data...)
				}
			}
		}
		seen = len(ls)
	}
	if !bytes.Equal(img, fw.image) {
		t.Fatal("image fetched with mosquitto differs")
	}
}

// dbSnapshot lists every key and value of the release buckets, to show a
// refused upload left nothing behind.
func dbSnapshot(t *testing.T, path string) string {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var sb strings.Builder
	_ = db.View(func(tx *bolt.Tx) error {
		for _, name := range []string{"keys", "releases", "uploads", "blobs", "offers"} {
			if bk := tx.Bucket([]byte(name)); bk != nil {
				_ = bk.ForEach(func(k, v []byte) error {
					fmt.Fprintf(&sb, "%s/%x=%x\n", name, k, v)
					return nil
				})
			}
		}
		return nil
	})
	return sb.String()
}

func TestUploadRefusals(t *testing.T) {
	dir := t.TempDir()
	b := startBroker(t, func(o *broker.Options) { o.DataDir = dir })
	key, pub := newKey(t)
	kid := b.trustKey(pub)
	stranger, _ := newKey(t)
	good := b.release(makeFirmware(t, key, "1.0.0", []string{"esp32-v2"}, 100_000))

	tampered := makeFirmware(t, key, "1.0.1", []string{"esp32-v2"}, 50_000)
	tampered.signed = append([]byte(nil), tampered.signed...)
	i := bytes.Index(tampered.signed, []byte("1.0.1"))
	tampered.signed[i+4] = '9' // the payload now says 1.0.9: the signature no longer matches

	wrongDigest := makeFirmware(t, key, "1.0.2", []string{"esp32-v2"}, 50_000)
	wrongDigest.image[100] ^= 0xff // the image no longer matches its manifest

	sameVersion := makeFirmware(t, key, "1.0.0", []string{"esp32-v2", "esp32-v3"}, 100_000) // other bytes
	unknownKey := makeFirmware(t, stranger, "1.0.3", []string{"esp32-v2"}, 50_000)

	revokedKey, revokedPub := newKey(t)
	revokedKID := b.trustKey(revokedPub)
	byRevoked := makeFirmware(t, revokedKey, "1.0.4", []string{"esp32-v2"}, 50_000)
	var rv struct {
		Affected []string `json:"affected_releases"`
	}
	if err := b.admin().Call(context.Background(), "key/revoke", map[string]any{"kid": revokedKID}, &rv); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name string
		fw   firmware
		code string
	}{
		{"tampered manifest", tampered, admin.CodeBadSignature},
		{"unknown key", unknownKey, admin.CodeUnknownKey},
		{"revoked key", byRevoked, admin.CodeKeyRevoked},
		{"wrong digest", wrongDigest, admin.CodeDigestMismatch},
		{"same version, other bytes", sameVersion, admin.CodeConflict},
		{"garbage manifest", firmware{signed: []byte{0xd2, 0x84, 0x01}, image: []byte{1}}, admin.CodeBadManifest},
	}
	for _, c := range cases {
		_, err := uploadWith(b.admin(), c.fw.signed, c.fw.image, 16*1024, 0)
		var re *rpc.RemoteError
		if !errors.As(err, &re) || re.Code != c.code {
			t.Errorf("%s: %v, want error %s", c.name, err, c.code)
		}
	}
	var list struct {
		Releases []struct{ ID string }
	}
	if err := b.admin().Call(context.Background(), "release/list", nil, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Releases) != 1 || list.Releases[0].ID != good.ID {
		t.Fatalf("releases after the refusals: %+v", list.Releases)
	}
	var ups struct{ Uploads []any }
	if err := b.admin().Call(context.Background(), "release/uploads", nil, &ups); err != nil || len(ups.Uploads) != 0 {
		t.Fatalf("uploads left: %v %v", ups.Uploads, err)
	}
	b.waitMetric(`otamq_uploads_rejected_total{reason="digest_mismatch"}`, 1)
	b.waitMetric(`otamq_uploads_rejected_total{reason="key_revoked"}`, 1)

	// Nothing else is stored: the release buckets hold the good release,
	// its image and the two keys, and nothing of the refused uploads.
	_ = b.adm.Close()
	b.adm = nil
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := b.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	snap := dbSnapshot(t, filepath.Join(dir, "otamq.db"))
	for _, c := range cases {
		if c.fw.m.ImageSize == 0 {
			continue
		}
		d := c.fw.m.ImageDigest
		if strings.Contains(snap, hex.EncodeToString(d[:])) {
			t.Errorf("%s left data in the store", c.name)
		}
	}
	if n := strings.Count(snap, "releases/"); n != 1 {
		t.Errorf("%d releases stored", n)
	}
	if n := strings.Count(snap, "uploads/"); n != 0 {
		t.Errorf("%d uploads stored", n)
	}
	if !strings.Contains(snap, "keys/"+kid) {
		t.Errorf("trusted key missing")
	}
	if n := strings.Count(snap, "blobs/"); n != 2 { // 100,000 bytes: two 64 KiB chunks
		t.Errorf("%d image chunks stored, want the good release's 2", n)
	}
}

// TestBlockAccess: a device may fetch only the image offered to it; a
// gateway may fetch its child's.
func TestBlockAccess(t *testing.T) {
	b := startBroker(t, func(o *broker.Options) { o.DeviceRate = -1 })
	key, pub := newKey(t)
	b.trustKey(pub)
	fwA := makeFirmware(t, key, "3.0.0", []string{"esp32-v2"}, 20_000)
	relA := b.release(fwA)
	tokA := b.register("dev-a", "device", "", map[string]any{"hardware": "esp32-v2"})
	tokB := b.register("dev-b", "device", "", map[string]any{"hardware": "esp32-v2"})
	gwTok := b.register("gw", "gateway", "")
	b.register("child", "device", "gw", map[string]any{"hardware": "esp32-v2"})
	b.offer(relA.ID, "dev-a", "child")

	a := b.device("dev-a", tokA)
	a.subscribe("dm/dev-a/ota/blk")
	devB := b.device("dev-b", tokB)
	devB.subscribe("dm/dev-b/ota/blk")
	req := wire.BlockRequest{Digest: fwA.m.ImageDigest[:], Size: 4096, Count: 1, RequestID: 7}

	// B asks on its own topic for A's image: "not assigned to you".
	devB.publish("dm/dev-b/ota/get", req.Encode())
	eventually(t, 10*time.Second, func() error {
		_, errs := devB.blocksFor("dm/dev-b/ota/blk", 7)
		if len(errs) == 0 {
			return fmt.Errorf("no answer")
		}
		if errs[0].Code != wire.BlockNotAssigned {
			return fmt.Errorf("answer %+v", *errs[0])
		}
		return nil
	})
	// B cannot use A's topic at all.
	if rc := devB.publish("dm/dev-a/ota/get", req.Encode()); rc != 0x87 {
		t.Fatalf("dev-b publishing on dev-a's topic: 0x%02x", rc)
	}
	if rc := devB.subscribe("dm/dev-a/ota/blk"); rc != 0x87 {
		t.Fatalf("dev-b subscribing to dev-a's blocks: 0x%02x", rc)
	}
	// An unknown image.
	unknown := req
	unknown.Digest, unknown.RequestID = make([]byte, 32), 8
	a.publish("dm/dev-a/ota/get", unknown.Encode())
	// A gets its own image.
	got := a.download("dev-a", fwA.m.ImageDigest[:], fwA.m.ImageSize, 4096, 4)
	if !bytes.Equal(got, fwA.image) {
		t.Fatal("dev-a's image differs")
	}
	_, errs := a.blocksFor("dm/dev-a/ota/blk", 8)
	if len(errs) != 1 || errs[0].Code != wire.BlockUnknownImage {
		t.Fatalf("unknown image answered %+v", errs)
	}
	// Out of range.
	oob := wire.BlockRequest{Digest: fwA.m.ImageDigest[:], Offset: fwA.m.ImageSize, Size: 4096, Count: 1, RequestID: 9}
	a.publish("dm/dev-a/ota/get", oob.Encode())
	eventually(t, 10*time.Second, func() error {
		_, errs := a.blocksFor("dm/dev-a/ota/blk", 9)
		if len(errs) != 1 || errs[0].Code != wire.BlockOutOfRange {
			return fmt.Errorf("out of range answered %+v", errs)
		}
		return nil
	})

	// The gateway fetches its child's image through the child's topics.
	gw := b.device("gw", gwTok)
	if rc := gw.subscribe("dm/child/ota/blk"); rc >= 0x80 {
		t.Fatalf("gateway subscribing to its child's blocks: 0x%02x", rc)
	}
	gw.subscribe("dm/child/ota/manifest")
	o := gw.offerAt("child", 0)
	if o.RolloutID == "" {
		t.Fatal("gateway got no offer for its child")
	}
	got = gw.download("child", fwA.m.ImageDigest[:], fwA.m.ImageSize, 4096, 4)
	if !bytes.Equal(got, fwA.image) {
		t.Fatal("child's image through the gateway differs")
	}
	// But not an image offered to nobody it serves.
	if rc := gw.publish("dm/dev-a/ota/get", req.Encode()); rc != 0x87 {
		t.Fatalf("gateway requesting for a device not its child: 0x%02x", rc)
	}
}

// TestSmallClientSessionSurvivesReconnect: a client with a small Maximum
// Packet Size and a persistent session gets blocks capped to what it
// accepts, and its session keeps working across reconnects (mochi wedges a
// session that was sent a QoS 1 message too large for it).
func TestSmallClientSessionSurvivesReconnect(t *testing.T) {
	b := startBroker(t, func(o *broker.Options) { o.DeviceRate = -1 })
	key, pub := newKey(t)
	b.trustKey(pub)
	fw := makeFirmware(t, key, "4.0.0", []string{"esp32-v2"}, 40_000)
	rel := b.release(fw)
	tok := b.register("tiny", "device", "", map[string]any{"hardware": "esp32-v2"})
	b.offer(rel.ID, "tiny")

	connect := func(clean bool) *client { return connectSmall(t, b, "tiny", tok, clean, 1024) }
	_ = connect
	c := connect(true)
	c.subscribe("dm/tiny/ota/blk")
	c.subscribe("dm/tiny/ota/manifest")
	o := c.offerAt("tiny", 0)
	if len(o.Manifest) == 0 {
		t.Fatal("no manifest in the offer")
	}
	got := c.download("tiny", fw.m.ImageDigest[:], fw.m.ImageSize, 32768, 4)
	if !bytes.Equal(got, fw.image) {
		t.Fatal("image differs")
	}
	for _, m := range c.msgs {
		if size := len(m.Payload) + len(m.Topic) + 16; size > 1024 {
			t.Fatalf("a message of about %d bytes reached a 1 KiB client", size)
		}
	}
	// Reconnect twice with the persistent session: the connection stays up
	// and the session still delivers.
	for round := range 2 {
		_ = c.cli.Disconnect(&paho.Disconnect{})
		c = connect(false)
		c.subscribe("dm/tiny/ota/manifest")
		c.offerAt("tiny", 0)
		if rc := c.publish("dm/tiny/hb", hbPayload); rc != 0 {
			t.Fatalf("round %d: heartbeat after reconnect: 0x%02x", round, rc)
		}
		select {
		case <-c.cli.Done():
			t.Fatalf("round %d: connection dropped after reconnect", round)
		default:
		}
	}

	// A client too small for its offer (256 bytes) is not sent it, and its
	// persistent session is not wedged: it reconnects and works.
	tok2 := b.register("mini", "device", "", map[string]any{"hardware": "esp32-v2"})
	b.offer(rel.ID, "mini")
	m := connectSmall(t, b, "mini", tok2, true, 256)
	m.subscribe("dm/mini/ota/manifest")
	for round := range 2 {
		_ = m.cli.Disconnect(&paho.Disconnect{})
		m = connectSmall(t, b, "mini", tok2, false, 256)
		if rc := m.publish("dm/mini/hb", hbPayload); rc != 0 {
			t.Fatalf("round %d: small client after reconnect: 0x%02x", round, rc)
		}
	}
	if len(m.received()) != 0 {
		t.Fatalf("the small client received %v", m.received())
	}
	b.waitMetricAtLeast(`otamq_rejected_total{reason="too_large_for_client"}`, 1)
}

// connectSmall connects id with MQTT 5, a persistent session (an hour) and
// the given Maximum Packet Size.
func connectSmall(t *testing.T, b *tb, id, tok string, clean bool, maxPacket uint32) *client {
	t.Helper()
	conn := dialTCP(t, b.Addr())
	c := &client{t: t, id: id, got: make(chan struct{}, 1)}
	c.cli = paho.NewClient(paho.ClientConfig{ClientID: id, Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			c.mu.Lock()
			c.msgs = append(c.msgs, pr.Packet)
			c.mu.Unlock()
			return true, nil
		}}})
	exp := uint32(3600)
	ca, err := c.cli.Connect(context.Background(), &paho.Connect{ClientID: id, CleanStart: clean, KeepAlive: 30,
		UsernameFlag: true, Username: id, PasswordFlag: true, Password: []byte(tok),
		Properties: &paho.ConnectProperties{MaximumPacketSize: &maxPacket, SessionExpiryInterval: &exp}})
	if err != nil {
		t.Fatalf("connect %s (clean=%v): %v %+v", id, clean, err, ca)
	}
	return c
}

func TestBlockRateLimit(t *testing.T) {
	b := startBroker(t, func(o *broker.Options) {
		o.MaxBlockSize, o.MaxWindow, o.DeviceRate = 4096, 2, 8192 // burst: one window of 8 KiB, then 8 KiB/s
	})
	key, pub := newKey(t)
	b.trustKey(pub)
	fw := makeFirmware(t, key, "5.0.0", []string{"esp32-v2"}, 64*1024)
	rel := b.release(fw)
	tok := b.register("d", "device", "", map[string]any{"hardware": "esp32-v2"})
	b.offer(rel.ID, "d")
	c := b.device("d", tok)
	c.subscribe("dm/d/ota/blk")
	for rid := uint32(1); rid <= 2; rid++ {
		req := wire.BlockRequest{Digest: fw.m.ImageDigest[:], Offset: uint64(rid-1) * 8192, Size: 4096, Count: 2, RequestID: rid}
		c.publish("dm/d/ota/get", req.Encode())
	}
	eventually(t, 10*time.Second, func() error {
		blocks, _ := c.blocksFor("dm/d/ota/blk", 1)
		_, errs := c.blocksFor("dm/d/ota/blk", 2)
		if len(blocks) != 2 || len(errs) != 1 {
			return fmt.Errorf("first request: %d blocks; second: %d errors", len(blocks), len(errs))
		}
		if e := errs[0]; e.Code != wire.BlockRateLimited || e.RetryAfterMS == 0 || e.RetryAfterMS > 2000 {
			return fmt.Errorf("second request answered %+v", *e)
		}
		return nil
	})
	b.waitMetric(`otamq_block_requests_total{result="rate_limited"}`, 1)
	// Waiting as told is enough.
	_, errs := c.blocksFor("dm/d/ota/blk", 2)
	time.Sleep(time.Duration(errs[0].RetryAfterMS) * time.Millisecond)
	req := wire.BlockRequest{Digest: fw.m.ImageDigest[:], Offset: 8192, Size: 4096, Count: 2, RequestID: 3}
	c.publish("dm/d/ota/get", req.Encode())
	eventually(t, 10*time.Second, func() error {
		blocks, errs := c.blocksFor("dm/d/ota/blk", 3)
		if len(blocks) != 2 {
			return fmt.Errorf("after waiting: %d blocks, %d errors", len(blocks), len(errs))
		}
		return nil
	})
}

// TestUploadResumes: an upload cut off in the middle (client gone, then the
// broker restarted) resumes at the offset the broker reports.
func TestUploadResumes(t *testing.T) {
	dir := t.TempDir()
	b := startBroker(t, func(o *broker.Options) { o.DataDir = dir })
	key, pub := newKey(t)
	b.trustKey(pub)
	fw := makeFirmware(t, key, "6.0.0", []string{"esp32-v2"}, 300_000)
	r, err := uploadWith(b.admin(), fw.signed, fw.image, 32*1024, 4)
	if err != nil || r.Done || r.Upload.Offset != 4*32*1024 {
		t.Fatalf("partial upload: %+v %v", r, err)
	}
	_ = b.adm.Close()
	b.adm = nil
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	if err := b.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()

	b2 := startBroker(t, func(o *broker.Options) { o.DataDir = dir })
	st, err := uploadPart(b2.admin(), admin.UploadPart{Manifest: fw.signed})
	if err != nil || st.Upload == nil || st.Upload.Offset != 4*32*1024 {
		t.Fatalf("resume: broker says %+v %v", st, err)
	}
	// A part at the wrong offset is refused with the right one.
	_, err = uploadPart(b2.admin(), admin.UploadPart{Upload: st.Upload.ID, Offset: 0, HasOffset: true, Data: fw.image[:10]})
	var re *rpc.RemoteError
	if !errors.As(err, &re) || re.Code != admin.CodeWrongOffset || !strings.Contains(re.Message, fmt.Sprint(4*32*1024)) {
		t.Fatalf("wrong offset: %v", err)
	}
	done, err := uploadWith(b2.admin(), fw.signed, fw.image, 32*1024, 0)
	if err != nil || !done.Done {
		t.Fatalf("finishing: %+v %v", done, err)
	}
	// The stored image is exactly the file.
	tok := b2.register("d", "device", "", map[string]any{"hardware": "esp32-v2"})
	b2.offer(done.Release.ID, "d")
	c := b2.device("d", tok)
	c.subscribe("dm/d/ota/blk")
	if got := c.download("d", fw.m.ImageDigest[:], fw.m.ImageSize, 16384, 8); !bytes.Equal(got, fw.image) {
		t.Fatal("resumed upload stored other bytes")
	}
}

// TestOfferCancelAndCommands: cancelling sends the empty offer; commands
// reach connected devices; an offer for other hardware is refused.
func TestOfferCancelAndCommands(t *testing.T) {
	b := startBroker(t)
	key, pub := newKey(t)
	b.trustKey(pub)
	rel := b.release(makeFirmware(t, key, "7.0.0", []string{"esp32-v2"}, 10_000))
	tok := b.register("d", "device", "", map[string]any{"hardware": "esp32-v2"})
	b.register("other", "device", "", map[string]any{"hardware": "rp2040"})
	c := b.device("d", tok)
	c.subscribe("dm/d/ota/manifest")
	c.subscribe("dm/d/cmd")

	var res struct {
		Results []struct {
			Device string
			OK     bool
			Error  string
		}
	}
	if err := b.admin().Call(context.Background(), "offer/create", map[string]any{"release": rel.ID, "devices": []string{"d", "other", "ghost"},
		"install_mode": "on_command", "rollout_id": "r-1"}, &res); err != nil {
		t.Fatal(err)
	}
	if !res.Results[0].OK || res.Results[1].OK || !strings.Contains(res.Results[1].Error, "rp2040") || res.Results[2].OK {
		t.Fatalf("offer results %+v", res.Results)
	}
	o := c.offerAt("d", 0)
	if o.RolloutID != "r-1" || o.InstallMode != wire.InstallOnCommand {
		t.Fatalf("offer %+v", o)
	}
	if err := b.admin().Call(context.Background(), "command/send", map[string]any{"verb": "install", "devices": []string{"d", "other"}, "rollout_id": "r-1"}, &res); err != nil {
		t.Fatal(err)
	}
	if !res.Results[0].OK || res.Results[1].OK {
		t.Fatalf("command results %+v", res.Results)
	}
	cmd := c.waitFor("dm/d/cmd", 10*time.Second)
	if got, err := wire.DecodeCommand(cmd.Payload); err != nil || got.Verb != wire.VerbInstall || got.RolloutID != "r-1" {
		t.Fatalf("command %+v %v", got, err)
	}
	if err := b.admin().Call(context.Background(), "offer/cancel", map[string]any{"devices": []string{"d"}}, nil); err != nil {
		t.Fatal(err)
	}
	if empty := c.offerAt("d", 1); empty.RolloutID != "" || len(empty.Manifest) != 0 {
		t.Fatalf("cancel sent %+v", empty)
	}
	// After the cancel, no blocks.
	req := wire.BlockRequest{Digest: rel.Digest[:], Size: 1024, Count: 1, RequestID: 1}
	c.subscribe("dm/d/ota/blk")
	c.publish("dm/d/ota/get", req.Encode())
	eventually(t, 10*time.Second, func() error {
		_, errs := c.blocksFor("dm/d/ota/blk", 1)
		if len(errs) != 1 || errs[0].Code != wire.BlockNotAssigned {
			return fmt.Errorf("after cancel: %+v", errs)
		}
		return nil
	})
	// A revoked signing key stops offers of its releases.
	if err := b.admin().Call(context.Background(), "key/revoke", map[string]any{"kid": rel.KeyID.String()}, nil); err != nil {
		t.Fatal(err)
	}
	err := b.admin().Call(context.Background(), "offer/create", map[string]any{"release": rel.ID, "devices": []string{"d"}}, nil)
	var re *rpc.RemoteError
	if !errors.As(err, &re) || !strings.Contains(re.Message, "revoked") {
		t.Fatalf("offer of a revoked key's release: %v", err)
	}
}
