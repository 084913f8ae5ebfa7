package test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/cmd/otactl/rpc"
	"github.com/otamq/otamq/ota/admin"
	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/release"
	"github.com/otamq/otamq/ota/wire"
)

// firmware is a signed release made for a test.
type firmware struct {
	image  []byte
	signed []byte
	m      manifest.Manifest
}

func newKey(t testing.TB) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	k, err := manifest.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := manifest.MarshalPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return k, pub
}

// makeFirmware signs an image of size random bytes as version for hw.
func makeFirmware(t testing.TB, key *ecdsa.PrivateKey, version string, hw []string, size int) firmware {
	t.Helper()
	img := make([]byte, size)
	_, _ = rand.Read(img)
	img[0] = 0xe9
	n, d, _ := manifest.HashImage(bytes.NewReader(img))
	m := manifest.Manifest{Sequence: uint64(time.Now().UnixNano()), Version: version, BuildID: "test", Hardware: hw,
		ImageSize: n, ImageDigest: d, Kind: manifest.KindFirmware}
	signed, err := manifest.Sign(&m, key)
	if err != nil {
		t.Fatal(err)
	}
	return firmware{image: img, signed: signed, m: m}
}

func (b *tb) trustKey(pub []byte) string {
	b.t.Helper()
	var res struct{ Key release.Key }
	if err := b.admin().Call(context.Background(), "key/add", map[string]any{"name": "test", "pem": string(pub)}, &res); err != nil {
		b.t.Fatal(err)
	}
	return res.Key.ID.String()
}

// uploadPart sends one release/upload request.
func uploadPart(c *rpc.Client, p admin.UploadPart) (uploadReply, error) {
	body, err := admin.EncodeUpload(p)
	if err != nil {
		return uploadReply{}, err
	}
	raw, err := c.CallBody(context.Background(), "release/upload", body, "application/cbor")
	if err != nil {
		return uploadReply{}, err
	}
	var r uploadReply
	return r, json.Unmarshal(raw, &r)
}

type uploadReply struct {
	Upload  *release.Upload
	Release *release.Release
	Done    bool
}

// uploadWith uploads image under signed in parts; stopAfter > 0 stops after
// that many parts (an interrupted upload).
func uploadWith(c *rpc.Client, signed, image []byte, part, stopAfter int) (uploadReply, error) {
	r, err := uploadPart(c, admin.UploadPart{Manifest: signed})
	if err != nil || r.Done {
		return r, err
	}
	off := r.Upload.Offset
	for sent := 0; ; sent++ {
		if stopAfter > 0 && sent == stopAfter {
			return r, nil
		}
		end := min(off+uint64(part), uint64(len(image)))
		r, err = uploadPart(c, admin.UploadPart{Upload: r.Upload.ID, Offset: off, HasOffset: true, Data: image[off:end]})
		if err != nil || r.Done {
			return r, err
		}
		off = r.Upload.Offset
	}
}

func (b *tb) release(f firmware) release.Release {
	b.t.Helper()
	r, err := uploadWith(b.admin(), f.signed, f.image, 64*1024, 0)
	if err != nil {
		b.t.Fatal(err)
	}
	if !r.Done || r.Release == nil {
		b.t.Fatalf("upload not done: %+v", r)
	}
	return *r.Release
}

func (b *tb) offer(releaseID string, devices ...string) string {
	b.t.Helper()
	var res struct {
		RolloutID string `json:"rollout_id"`
		Results   []struct {
			Device string
			OK     bool
			Error  string
		}
	}
	if err := b.admin().Call(context.Background(), "offer/create", map[string]any{"release": releaseID, "devices": devices}, &res); err != nil {
		b.t.Fatal(err)
	}
	for _, r := range res.Results {
		if !r.OK {
			b.t.Fatalf("offer to %s: %s", r.Device, r.Error)
		}
	}
	return res.RolloutID
}

// nextOffer waits for an offer message on id's manifest topic after the
// first skip ones.
func (c *client) offerAt(id string, skip int) wire.Offer {
	c.t.Helper()
	topic := "dm/" + id + "/ota/manifest"
	var out wire.Offer
	eventually(c.t, 10*time.Second, func() error {
		c.mu.Lock()
		defer c.mu.Unlock()
		seen := 0
		for _, m := range c.msgs {
			if m.Topic != topic {
				continue
			}
			if seen == skip {
				o, err := wire.DecodeOffer(m.Payload)
				if err != nil {
					return err
				}
				out = o
				return nil
			}
			seen++
		}
		return fmt.Errorf("%s: %d offers so far, waiting for offer %d", c.id, seen, skip+1)
	})
	return out
}

// blocksFor returns the block messages (or errors) for request rid.
func (c *client) blocksFor(topic string, rid uint32) (blocks []*wire.Block, errs []*wire.BlockError) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.msgs {
		if m.Topic != topic {
			continue
		}
		b, e, err := wire.DecodeBlock(m.Payload, 1<<20)
		if err != nil {
			c.t.Errorf("undecodable block message: %v", err)
			continue
		}
		if b != nil && b.RequestID == rid {
			blocks = append(blocks, b)
		}
		if e != nil && e.RequestID == rid {
			errs = append(errs, e)
		}
	}
	return
}

// download fetches the image of digest on behalf of id (the client may be
// id itself or its gateway) with windowed block requests, re-requesting
// from the first missing offset when a window does not complete.
func (c *client) download(id string, digest []byte, size uint64, blockSize, window uint32) []byte {
	c.t.Helper()
	img := make([]byte, 0, size)
	rid := uint32(0)
	for uint64(len(img)) < size {
		rid++
		off := uint64(len(img))
		req := wire.BlockRequest{Digest: digest, Offset: off, Size: blockSize, Count: window, RequestID: rid}
		if rc := c.publish("dm/"+id+"/ota/get", req.Encode()); rc >= 0x80 {
			c.t.Fatalf("block request refused: 0x%02x", rc)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			blocks, errs := c.blocksFor("dm/"+id+"/ota/blk", rid)
			if len(errs) > 0 {
				e := errs[0]
				if e.Code != wire.BlockRateLimited || e.RetryAfterMS == 0 {
					c.t.Fatalf("block error at %d: %+v", off, *e)
				}
				// Like the agent: wait as told, then ask again.
				time.Sleep(time.Duration(e.RetryAfterMS) * time.Millisecond)
				break
			}
			// Take the blocks in order from off; the broker may send smaller
			// blocks than asked for (capped to what the client accepts).
			next, n := off, uint32(0)
			for _, bl := range blocks {
				if bl.Offset == next {
					next += uint64(len(bl.Data))
					n++
				}
			}
			if n == window || next == size || time.Now().After(deadline) {
				for _, bl := range blocks {
					if bl.Offset == uint64(len(img)) {
						img = append(img, bl.Data...)
					}
				}
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	return img
}

func TestOTADownloadPahoV5(t *testing.T) {
	b := startBroker(t, func(o *broker.Options) { o.DeviceRate = -1 }) // rate limits: TestBlockRateLimit
	key, pub := newKey(t)
	b.trustKey(pub)
	fw := makeFirmware(t, key, "1.1.0", []string{"esp32-v2", "esp32-v3"}, 1<<20)
	rel := b.release(fw)
	tok := b.register("d1", "device", "", map[string]any{"hardware": "esp32-v2"})

	// A device with a 6 KiB Maximum Packet Size.
	d, err := dialClient(t, b.Addr(), "d1", clientOpts{username: "d1", password: tok, maxPacket: 6 * 1024})
	if err != nil {
		t.Fatal(err)
	}
	d.subscribe("dm/d1/ota/blk")
	d.subscribe("dm/d1/ota/manifest") // no offer yet: nothing arrives
	rollout := b.offer(rel.ID, "d1")

	o := d.offerAt("d1", 0)
	if o.RolloutID != rollout || o.InstallMode != wire.InstallImmediately || o.BlockSize == 0 {
		t.Fatalf("offer %+v", o)
	}
	// The device checks the signature over the bytes it received.
	keys, _ := manifest.NewKeySet(&key.PublicKey)
	s, err := manifest.Verify(o.Manifest, keys)
	if err != nil {
		t.Fatalf("offered manifest does not verify: %v", err)
	}
	if s.Manifest.Version != "1.1.0" || s.Manifest.ImageDigest != fw.m.ImageDigest {
		t.Fatalf("offered manifest %+v", s.Manifest)
	}

	// Download with 4 KiB blocks, window 8.
	got := d.download("d1", s.Manifest.ImageDigest[:], s.Manifest.ImageSize, 4096, 8)
	if !bytes.Equal(got, fw.image) {
		t.Fatal("downloaded image differs")
	}
	// Asking for 32 KiB blocks: capped by the client's 6 KiB packets.
	req := wire.BlockRequest{Digest: s.Manifest.ImageDigest[:], Offset: 0, Size: 32768, Count: 2, RequestID: 999}
	d.publish("dm/d1/ota/get", req.Encode())
	eventually(t, 10*time.Second, func() error {
		blocks, _ := d.blocksFor("dm/d1/ota/blk", 999)
		if len(blocks) < 2 {
			return fmt.Errorf("%d blocks", len(blocks))
		}
		for _, bl := range blocks {
			if len(bl.Data) > 6*1024-64 {
				return fmt.Errorf("block of %d bytes for a 6 KiB client", len(bl.Data))
			}
		}
		return nil
	})

	// Events: progress reaches the timeline, and the completion the
	// download-time histogram.
	for _, ev := range []wire.Event{
		{Code: wire.EvDownloadStarted, RolloutID: rollout, TargetVersion: "1.1.0"},
		{Code: wire.EvDownloadCompleted, RolloutID: rollout, TargetVersion: "1.1.0", Progress: 100},
		{Code: wire.EvDownloadStarted, RolloutID: "never-offered"},
	} {
		if rc := d.publish("dm/d1/ev", ev.Encode()); rc != 0 {
			t.Fatalf("event: 0x%02x", rc)
		}
	}
	if rc := d.publish("dm/d1/ev", []byte{0xa1, 0x01}); rc != 0x99 {
		t.Fatalf("malformed event: 0x%02x", rc)
	}
	var tl struct {
		Entries []struct{ Type, RolloutID, Source string }
	}
	if err := b.admin().Call(context.Background(), "device/timeline", map[string]any{"id": "d1"}, &tl); err != nil {
		t.Fatal(err)
	}
	types := []string{}
	for _, e := range tl.Entries {
		types = append(types, e.Source+":"+e.Type)
	}
	if strings.Join(types, ",") != "device:update.download.completed,device:update.download.started,broker:offer" {
		t.Fatalf("timeline %v", types)
	}
	b.waitMetric("otamq_download_seconds_count", 1)
	b.waitMetric(`otamq_device_events_dropped_total{reason="unknown_rollout"}`, 1)
	b.waitMetricAtLeast("otamq_block_bytes_total", 1<<20)
	b.waitMetricAtLeast(`otamq_block_requests_total{result="served"}`, 1<<20/(8*4096))
}
