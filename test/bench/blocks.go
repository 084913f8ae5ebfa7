package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/cmd/otactl/rpc"
	"github.com/otamq/otamq/ota/admin"
	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/release"
	"github.com/otamq/otamq/ota/wire"
)

// benchBlocks: block serving throughput (MB/s of block messages the devices
// receive) of otamq against plain mochi relaying the same payloads from a
// publisher to the subscribing devices, for 1, 100 and 1,000 devices, 4 and
// 32 KiB blocks, window 1 and 8; then the memory of each server, run as a
// child process, while 1,000 devices download.
//
// otamq: the real broker (per-device rate limit off) serves a released 1 MiB
// image offered to every device; each device publishes a block request for
// `window` blocks at its next offset (wrapping around the image) and reads
// the `window` block messages before asking again.
//
// plain mochi: the same device clients publish the same requests on the same
// topic; K = min(devices, 16) responder clients, each subscribed to the
// request topics of its share of the devices, answer each request with
// `window` QoS 0 messages on the device's block topic carrying exactly the
// bytes otamq would send (block header and image data).
func benchBlocks() error {
	maxDev := 0
	for _, n := range blkDeviceCounts {
		maxDev = max(maxDev, n)
	}
	fmt.Printf("== block serving: 1 MiB image, %d MiB per configuration and round (at least one window per device), %d rounds, MQTT 3.1.1 devices\n",
		*blkMiB, *blkRounds)
	dir, err := os.MkdirTemp("", "otamq-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := seedDevices(dir, maxDev); err != nil {
		return err
	}
	b, err := blocksBroker(dir, false)
	if err != nil {
		return err
	}
	img, err := releaseAndOffer(b, maxDev)
	if err != nil {
		_ = b.Shutdown(context.Background())
		return err
	}
	err = blocksThroughput(b, img, maxDev)
	if serr := b.Shutdown(context.Background()); err == nil {
		err = serr
	}
	if err != nil || *blkMemSecs <= 0 {
		return err
	}
	fmt.Println()
	// The data directory now holds the devices, the release and the offers:
	// the memory part's otamq child starts on it.
	return blocksMemory(dir, img, maxDev)
}

var blkDeviceCounts = []int{1, 100, 1000}

// blkResponders is the number of mochi responder clients (at most; one per
// device below that): one reader would otherwise carry every request of the
// baseline on a single read goroutine of the broker.
const blkResponders = 16

// blocksBroker starts otamq on dataDir with the per-device rate limit off.
func blocksBroker(dataDir string, pprof bool) (*broker.Broker, error) {
	b, err := broker.New(broker.Options{
		DataDir: dataDir, TCPAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Pprof: pprof,
		FirstOperator: "bench", FirstOperatorPassword: benchOperatorPassword, Logger: quiet,
		DeviceRate: -1,
	})
	if err != nil {
		return nil, err
	}
	return b, b.Start()
}

// blkImage is the released image as the devices know it.
type blkImage struct {
	data   []byte
	digest manifest.Digest
}

func (im *blkImage) size() uint64 { return uint64(len(im.data)) }

// releaseAndOffer signs a 1 MiB image, trusts the key, uploads the release
// and offers it to devices 0..n-1, all through the admin API.
func releaseAndOffer(b *broker.Broker, n int) (*blkImage, error) {
	ctx := context.Background()
	c, err := rpc.Dial(ctx, rpc.Config{URL: "mqtt://" + b.Addr(), Username: "bench", Password: benchOperatorPassword, Timeout: time.Minute})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	img, rel, err := uploadRelease(c, 1<<20)
	if err != nil {
		return nil, err
	}
	ids := make([]string, n)
	for i := range ids {
		ids[i] = deviceID(i)
	}
	var res struct {
		Results []struct {
			Device string
			OK     bool
			Error  string
		}
	}
	for len(ids) > 0 {
		batch := ids[:min(len(ids), 1000)] // the most one offer/create takes
		ids = ids[len(batch):]
		if err := c.Call(ctx, "offer/create", map[string]any{"release": rel.ID, "devices": batch}, &res); err != nil {
			return nil, fmt.Errorf("offer/create: %w", err)
		}
		for _, o := range res.Results {
			if !o.OK {
				return nil, fmt.Errorf("offer to %s: %s", o.Device, o.Error)
			}
		}
	}
	return img, nil
}

// uploadRelease signs an image of size bytes (version 2.0.0 for esp32-v2,
// under a new key), trusts the key and uploads the release, through the
// admin API of client c.
func uploadRelease(c *rpc.Client, size int) (*blkImage, *release.Release, error) {
	ctx := context.Background()
	key, err := manifest.GenerateKey()
	if err != nil {
		return nil, nil, err
	}
	pub, err := manifest.MarshalPublicKey(&key.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	img := make([]byte, size)
	_, _ = rand.Read(img)
	img[0] = 0xe9
	n, digest, err := manifest.HashImage(bytes.NewReader(img))
	if err != nil {
		return nil, nil, err
	}
	m := manifest.Manifest{Sequence: uint64(time.Now().Unix()), Version: "2.0.0", BuildID: "bench", Hardware: []string{"esp32-v2"},
		ImageSize: n, ImageDigest: digest, Kind: manifest.KindFirmware}
	signed, err := manifest.Sign(&m, key)
	if err != nil {
		return nil, nil, err
	}
	if err := c.Call(ctx, "key/add", map[string]any{"name": "bench", "pem": string(pub)}, nil); err != nil {
		return nil, nil, fmt.Errorf("key/add: %w", err)
	}
	type reply struct {
		Upload  *release.Upload
		Release *release.Release
		Done    bool
	}
	part := func(p admin.UploadPart) (reply, error) {
		body, err := admin.EncodeUpload(p)
		if err != nil {
			return reply{}, err
		}
		raw, err := c.CallBody(ctx, "release/upload", body, "application/cbor")
		if err != nil {
			return reply{}, fmt.Errorf("release/upload: %w", err)
		}
		var r reply
		return r, json.Unmarshal(raw, &r)
	}
	r, err := part(admin.UploadPart{Manifest: signed})
	for err == nil && !r.Done {
		off := r.Upload.Offset
		end := min(off+64*1024, n)
		r, err = part(admin.UploadPart{Upload: r.Upload.ID, Offset: off, HasOffset: true, Data: img[off:end]})
	}
	if err != nil {
		return nil, nil, err
	}
	if r.Release == nil {
		return nil, nil, errors.New("upload done without a release")
	}
	return &blkImage{data: img, digest: digest}, r.Release, nil
}

// blkDevice is one device's connection and download position.
type blkDevice struct {
	*rawConn
	id     string
	get    string // request topic
	rid    uint32
	off    uint64
	hdr    []byte // expected block header
	reqBuf []byte
}

// connectDevices opens n device connections subscribed to their block
// topics; with auth they log in with their tokens (otamq).
func connectDevices(addr string, n int, auth bool) ([]*blkDevice, error) {
	cs, err := connectMany(addr, n, auth, "ota/blk")
	if err != nil {
		return nil, err
	}
	ds := make([]*blkDevice, n)
	for i, c := range cs {
		id := deviceID(i)
		ds[i] = &blkDevice{rawConn: newRawConn(c), id: id, get: "dm/" + id + "/ota/get"}
	}
	return ds, nil
}

func closeDevices(ds []*blkDevice) {
	for _, d := range ds {
		if d != nil {
			_ = d.c.Close()
		}
	}
}

// align moves the device's next offset back to a multiple of a window, so
// that every window fits the image (its size is a multiple of each window).
func (d *blkDevice) align(size, count int) {
	d.off -= d.off % uint64(size*count)
}

// window requests count blocks of size at the device's next offset, reads
// them and returns the payload bytes received. With check it also compares
// the data with the image (the header is always checked).
func (d *blkDevice) window(img *blkImage, size, count int, check bool) (int64, error) {
	d.rid++
	req := wire.BlockRequest{Digest: img.digest[:], Offset: d.off, Size: uint32(size), Count: uint32(count), RequestID: d.rid}.Encode()
	d.reqBuf = append(appendPublishHeader(d.reqBuf[:0], d.get, len(req)), req...)
	if _, err := d.c.Write(d.reqBuf); err != nil {
		return 0, err
	}
	var got int64
	off := d.off
	for range count {
		_, payload, err := d.nextPublish()
		if err != nil {
			return got, fmt.Errorf("%s: waiting for block at %d: %w", d.id, off, err)
		}
		n := int(min(uint64(size), img.size()-off))
		d.hdr = wire.AppendBlockHeader(d.hdr[:0], d.rid, off, img.size(), n)
		if len(payload) != len(d.hdr)+n || !bytes.Equal(payload[:len(d.hdr)], d.hdr) {
			if _, be, err := wire.DecodeBlock(payload, 1<<20); be != nil || err != nil {
				return got, fmt.Errorf("%s: block error %+v / %v instead of block at %d", d.id, be, err, off)
			}
			return got, fmt.Errorf("%s: unexpected block (%d bytes) instead of request %d at %d", d.id, len(payload), d.rid, off)
		}
		if check && !bytes.Equal(payload[len(d.hdr):], img.data[off:off+uint64(n)]) {
			return got, fmt.Errorf("%s: wrong data at %d", d.id, off)
		}
		got += int64(len(payload))
		off += uint64(n)
	}
	d.off = off % img.size()
	return got, nil
}

// download runs every device for windows windows at once and returns MB/s
// of block payload received.
func download(ds []*blkDevice, img *blkImage, size, count, windows int) (float64, error) {
	var wg sync.WaitGroup
	var total atomic.Int64
	errs := make(chan error, len(ds))
	start := make(chan struct{})
	for _, d := range ds {
		d.align(size, count)
		_ = d.c.SetReadDeadline(time.Now().Add(time.Minute))
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			var got int64
			for w := range windows {
				n, err := d.window(img, size, count, w == 0)
				got += n
				if err != nil {
					errs <- err
					return
				}
			}
			total.Add(got)
		}()
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	elapsed := time.Since(t0)
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return float64(total.Load()) / 1e6 / elapsed.Seconds(), nil
}

// responder answers block requests on plain mochi like otamq would: the
// publisher of the baseline.
type responder struct {
	*rawConn
	img    *blkImage
	topics map[string]string // request topic -> block topic
}

// startResponders connects k responders to addr; device i's requests go to
// responder i % k.
func startResponders(addr string, img *blkImage, n, k int) ([]*responder, error) {
	rs := make([]*responder, k)
	for j := range rs {
		c, err := dial(addr, fmt.Sprintf("responder%02d", j), "", "", "")
		if err != nil {
			return rs, err
		}
		rs[j] = &responder{rawConn: newRawConn(c), img: img, topics: map[string]string{}}
		var filters []string
		for i := j; i < n; i += k {
			id := deviceID(i)
			rs[j].topics["dm/"+id+"/ota/get"] = "dm/" + id + "/ota/blk"
			filters = append(filters, "dm/"+id+"/ota/get")
		}
		if err := subscribeMany(rs[j].rawConn, filters); err != nil {
			return rs, err
		}
		go rs[j].serve()
	}
	return rs, nil
}

func closeResponders(rs []*responder) {
	for _, r := range rs {
		if r != nil {
			_ = r.c.Close()
		}
	}
}

// serve answers requests until the connection closes.
func (r *responder) serve() {
	size := r.img.size()
	for {
		topic, payload, err := r.nextPublish()
		if err != nil {
			return
		}
		blk, ok := r.topics[string(topic)]
		if !ok {
			continue
		}
		req, err := wire.DecodeBlockRequest(payload)
		if err != nil || req.Offset >= size {
			fmt.Fprintf(os.Stderr, "responder: bad request on %s: %v\n", topic, err)
			continue
		}
		out := r.out[:0]
		off := req.Offset
		for range req.Count {
			if off >= size {
				break
			}
			n := int(min(uint64(req.Size), size-off))
			var hdr [wire.MaxBlockMessageOverhead]byte
			h := wire.AppendBlockHeader(hdr[:0], req.RequestID, off, size, n)
			out = appendPublishHeader(out, blk, len(h)+n)
			out = append(out, h...)
			out = append(out, r.img.data[off:off+uint64(n)]...)
			off += uint64(n)
		}
		r.out = out
		if _, err := r.c.Write(out); err != nil {
			return
		}
	}
}

// blkResult is one configuration's measurement.
type blkResult struct {
	devices, size, window int
	otamq, mochi          float64
	ratios                []float64
}

// blocksThroughput measures the 12 configurations, otamq and mochi back to
// back in each round (alternating which goes first).
func blocksThroughput(b *broker.Broker, img *blkImage, maxDev int) error {
	srv, maddr, err := plainMochi(true)
	if err != nil {
		return err
	}
	defer closeMochi(srv)
	od, err := connectDevices(b.Addr(), maxDev, true)
	if err != nil {
		return fmt.Errorf("otamq devices: %w", err)
	}
	defer closeDevices(od)
	md, err := connectDevices(maddr, maxDev, false)
	if err != nil {
		return fmt.Errorf("mochi devices: %w", err)
	}
	defer closeDevices(md)
	rs, err := startResponders(maddr, img, maxDev, min(maxDev, blkResponders))
	defer closeResponders(rs)
	if err != nil {
		return fmt.Errorf("mochi responders: %w", err)
	}
	// Starting positions spread over the image.
	for i := range maxDev {
		od[i].off = uint64(i) * 32 * 1024 % img.size()
		md[i].off = od[i].off
	}
	// Warm up both (connections, goroutine stacks, the page cache).
	for _, ds := range [][]*blkDevice{od, md} {
		if _, err := download(ds, img, 32*1024, 8, 1); err != nil {
			return err
		}
	}

	fmt.Printf("%8s %6s %6s %12s %12s %6s   %s\n", "devices", "block", "window", "otamq MB/s", "mochi MB/s", "ratio", "ratio per round")
	var results []blkResult
	for _, n := range blkDeviceCounts {
		for _, size := range []int{4096, 32768} {
			for _, window := range []int{1, 8} {
				per := max(int64(*blkMiB)<<20/int64(n), int64(size*window))
				windows := int((per + int64(size*window) - 1) / int64(size*window))
				res := blkResult{devices: n, size: size, window: window}
				var otamqs, mochis []float64
				for round := range *blkRounds {
					var o, m float64
					if round%2 == 0 {
						if o, err = download(od[:n], img, size, window, windows); err == nil {
							m, err = download(md[:n], img, size, window, windows)
						}
					} else {
						if m, err = download(md[:n], img, size, window, windows); err == nil {
							o, err = download(od[:n], img, size, window, windows)
						}
					}
					if err != nil {
						return fmt.Errorf("%d devices, %d-byte blocks, window %d: %w", n, size, window, err)
					}
					otamqs, mochis, res.ratios = append(otamqs, o), append(mochis, m), append(res.ratios, o/m)
				}
				res.otamq, res.mochi = median(otamqs), median(mochis)
				results = append(results, res)
				rr := ""
				for _, r := range res.ratios {
					rr += fmt.Sprintf(" %.2f", r)
				}
				fmt.Printf("%8d %6d %6d %12.1f %12.1f %6.2f  %s\n", n, size, window, res.otamq, res.mochi, median(res.ratios), rr)
			}
		}
	}
	below := 0
	for _, r := range results {
		if median(r.ratios) < 0.7 {
			below++
		}
	}
	fmt.Printf("MB/s: 10^6 bytes of block messages (CBOR header and data) received by the devices per second, median of %d rounds;\n", *blkRounds)
	fmt.Printf("ratio otamq / plain mochi: median of the per-round ratios (target >= 0.70); %d of %d configurations below the target\n", below, len(results))
	return nil
}
