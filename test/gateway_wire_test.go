package test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/wire"
)

// Gateways on the broker's side (issue 11, point 4). A paho client acts as
// the gateway on the wire exactly as docs/PROTOCOL.md says: it connects as
// itself, subscribes to its children's manifest and command topics (and its
// own block topic), relays its children's births, heartbeats and events on
// the children's topics, and fetches an image offered to a child once, on
// its own ota/get, into a cache by digest from which its children are
// served (on the local link, which the broker never sees).

// testGateway is such a gateway, driven step by step by the test.
type testGateway struct {
	b         *tb
	id, token string
	children  []string
	keys      manifest.Keys
	c         *client
	conn      net.Conn
	// cache holds the images fetched, by digest; fetches counts the
	// fetches on the gateway's own topics.
	cache   map[manifest.Digest][]byte
	fetches int
	// seen counts, per child, the offer messages already handled.
	seen map[string]int
}

func newTestGateway(b *tb, id, token string, keys manifest.Keys, children ...string) *testGateway {
	return &testGateway{b: b, id: id, token: token, children: children, keys: keys,
		cache: map[manifest.Digest][]byte{}, seen: map[string]int{}}
}

// connect opens a session of the gateway, subscribes to its own block
// topic and each child's manifest and command topics, and relays a birth
// of each child (running version fw, in OTA state st).
func (g *testGateway) connect(fw string, st wire.OTAState) {
	t := g.b.t
	t.Helper()
	conn, err := net.DialTimeout("tcp", g.b.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c, err := dialClient(t, g.b.Addr(), g.id, clientOpts{username: g.id, password: g.token, conn: conn})
	if err != nil {
		t.Fatalf("gateway %s: %v", g.id, err)
	}
	g.c, g.conn = c, conn
	g.seen = map[string]int{}
	for _, f := range []string{"dm/" + g.id + "/ota/blk", "dm/" + g.id + "/ota/manifest", "dm/" + g.id + "/cmd"} {
		if rc := c.subscribe(f); rc >= 0x80 {
			t.Fatalf("gateway subscribing to %s: 0x%02x", f, rc)
		}
	}
	for _, ch := range g.children {
		for _, f := range []string{"dm/" + ch + "/ota/manifest", "dm/" + ch + "/cmd"} {
			if rc := c.subscribe(f); rc >= 0x80 {
				t.Fatalf("gateway subscribing to its child's %s: 0x%02x", f, rc)
			}
		}
	}
	g.relay(g.id, "birth", wire.Birth{FirmwareVersion: "1.0.0", Hardware: "gw-linux", Bootloader: "1.0.0",
		AgentVersion: "test", Connectivity: wire.ConnEthernet}.Encode())
	for _, ch := range g.children {
		g.birth(ch, fw, st, wire.BootPowerOn)
	}
}

// cut ends the gateway's connection without a DISCONNECT (the link lost).
func (g *testGateway) cut() { _ = g.conn.Close() }

// relay publishes payload on kind of device id (a child's topics, or its
// own) at QoS 1 and fails unless the broker took it.
func (g *testGateway) relay(id, kind string, payload []byte) {
	g.b.t.Helper()
	if rc := g.c.publish("dm/"+id+"/"+kind, payload); rc >= 0x80 {
		g.b.t.Fatalf("gateway %s publishing dm/%s/%s: 0x%02x", g.id, id, kind, rc)
	}
}

func (g *testGateway) birth(child, fw string, st wire.OTAState, reason wire.BootReason) {
	g.relay(child, "birth", wire.Birth{FirmwareVersion: fw, Hardware: "esp32-v2", Bootloader: "2.1.0", BootReason: reason,
		OTAState: st, AgentVersion: "test", Connectivity: wire.ConnViaGateway}.Encode())
}

func (g *testGateway) heartbeat(child string, st wire.OTAState) {
	g.relay(child, "hb", wire.Heartbeat{UptimeSeconds: 5, HealthFlags: wire.HealthAllOK, FreeHeap: 100_000, RSSI: -50, OTAState: st}.Encode())
}

func (g *testGateway) event(child string, code wire.EventCode, rollout, version string) {
	g.relay(child, "ev", wire.Event{Code: code, RolloutID: rollout, TargetVersion: version}.Encode())
}

// offers returns the offers (with a rollout) that arrived for the children
// since the last call, by child.
func (g *testGateway) offers() map[string]wire.Offer {
	out := map[string]wire.Offer{}
	g.c.mu.Lock()
	defer g.c.mu.Unlock()
	count := map[string]int{}
	for _, m := range g.c.msgs {
		id, kind, ok := strings.Cut(strings.TrimPrefix(m.Topic, "dm/"), "/")
		if !ok || kind != "ota/manifest" || !slices.Contains(g.children, id) {
			continue
		}
		count[id]++
		if count[id] <= g.seen[id] {
			continue
		}
		if o, err := wire.DecodeOffer(m.Payload); err == nil && o.RolloutID != "" {
			out[id] = o
		}
	}
	for id, n := range count {
		g.seen[id] = n
	}
	return out
}

// image returns the image of an offer: from the cache, or fetched on the
// gateway's own topics (and checked against the signed digest).
func (g *testGateway) image(o wire.Offer) *manifest.Signed {
	t := g.b.t
	t.Helper()
	s, err := manifest.Verify(o.Manifest, g.keys)
	if err != nil {
		t.Fatalf("offer %s: %v", o.RolloutID, err)
	}
	d := s.Manifest.ImageDigest
	if _, ok := g.cache[d]; !ok {
		img := g.c.download(g.id, d[:], s.Manifest.ImageSize, 4096, 8)
		if sha256.Sum256(img) != [32]byte(d) {
			t.Fatalf("image fetched by gateway %s does not match its digest", g.id)
		}
		g.cache[d] = img
		g.fetches++
	}
	return s
}

// install takes child through an update to the offer's release, as the
// agent reports it: download (from the gateway's cache), install, reboot,
// the birth of the new image in trial, health ok, committed.
func (g *testGateway) install(child string, o wire.Offer) {
	s := g.image(o)
	v := s.Manifest.Version
	for _, code := range []wire.EventCode{wire.EvDownloadStarted, wire.EvDownloadCompleted, wire.EvInstallStarted, wire.EvRebootStarted} {
		g.event(child, code, o.RolloutID, v)
	}
	g.birth(child, v, wire.StateTrial, wire.BootOTAReboot)
	g.event(child, wire.EvRebootCompleted, o.RolloutID, v)
	g.event(child, wire.EvHealthOK, o.RolloutID, v)
	g.heartbeat(child, wire.StateCommitted)
}

// deviceView is device/get's result, as docs/OPERATORS.md shows it.
type deviceView struct {
	ID     string `json:"id"`
	Parent string `json:"parent"`
	Status struct {
		Online           bool   `json:"online"`
		Gateway          string `json:"gateway"`
		Unreachable      bool   `json:"unreachable"`
		DisconnectReason string `json:"disconnect_reason"`
		Connects         int    `json:"connects"`
		Firmware         string `json:"firmware"`
	} `json:"status"`
}

func (b *tb) deviceGet(id string) deviceView {
	b.t.Helper()
	var v deviceView
	if err := b.admin().Call(context.Background(), "device/get", map[string]any{"id": id}, &v); err != nil {
		b.t.Fatal(err)
	}
	return v
}

// roGatewayView is a rollout view with the gateway parts of
// docs/ROLLOUTS.md.
type roGatewayView struct {
	roView
	Unreachable int `json:"unreachable"`
	Gateways    []struct {
		Gateway     string         `json:"gateway"`
		Online      bool           `json:"online"`
		Devices     int            `json:"devices"`
		Counts      map[string]int `json:"counts"`
		Unreachable int            `json:"unreachable"`
	} `json:"gateways"`
}

type roGatewayDevice struct {
	roDevice
	Gateway     string `json:"gateway"`
	Unreachable bool   `json:"unreachable"`
}

func (b *tb) rolloutGW(id string) roGatewayView {
	b.t.Helper()
	var v roGatewayView
	mustCall(b.t, b.admin(), "rollout/get", map[string]any{"id": id}, &v)
	return v
}

func (b *tb) rolloutDevicesGW(id string) map[string]roGatewayDevice {
	b.t.Helper()
	var res struct {
		Devices []roGatewayDevice `json:"devices"`
	}
	mustCall(b.t, b.admin(), "rollout/devices", map[string]any{"id": id, "limit": 1000}, &res)
	out := map[string]roGatewayDevice{}
	for _, d := range res.Devices {
		out[d.Device] = d
	}
	return out
}

func metricValue(b *tb, series string) int {
	b.t.Helper()
	v, err := b.metric(series)
	if err != nil {
		b.t.Fatal(err)
	}
	return atoi(v)
}

// TestGatewayWireRollout: a gateway with five children through a real
// rollout. The children are the rollout's devices (membership, waves,
// counts); the gateway fetches the image once on its own topics, and the
// broker's block bytes are one image, attributed to the gateway; the
// gateway's link is cut while its children are in their probation: they
// are unreachable with the gateway named, not failed, though their silence
// lasts longer than the rollout's `silence`; the gateway comes back, the
// children with its next relay of them, and the rollout completes.
func TestGatewayWireRollout(t *testing.T) {
	t.Parallel()
	b := startBroker(t, func(o *broker.Options) { o.DeviceRate = -1; o.RolloutTick = 100 * time.Millisecond; o.AdminRate = -1 })
	key, pub := newKey(t)
	b.trustKey(pub)
	keys, err := manifest.NewKeySet(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	fw := makeFirmware(t, key, "1.1.0", []string{"esp32-v2"}, 100_000)
	rel := b.release(fw)
	gwTok := b.register("gw-a", "gateway", "", map[string]any{"hardware": "gw-linux"})
	children := []string{"gc-1", "gc-2", "gc-3", "gc-4", "gc-5"}
	for _, c := range children {
		b.register(c, "device", "gw-a", map[string]any{"hardware": "esp32-v2", "connectivity": "via_gateway"})
	}
	gw := newTestGateway(b, "gw-a", gwTok, keys, children...)
	gw.connect("1.0.0", wire.StateIdle)

	// The children are online through their gateway, and listed under it.
	eventually(t, 10*time.Second, func() error {
		for _, c := range children {
			if v := b.deviceGet(c); !v.Status.Online || v.Status.Gateway != "gw-a" || v.Status.Firmware != "1.0.0" {
				return fmt.Errorf("%s: %+v", c, v.Status)
			}
		}
		return nil
	})
	var list struct {
		Devices []deviceView `json:"devices"`
	}
	mustCall(t, b.admin(), "device/list", map[string]any{"parent": "gw-a"}, &list)
	var ids []string
	for _, d := range list.Devices {
		ids = append(ids, d.ID)
	}
	if !slices.Equal(ids, children) {
		t.Fatalf("device/list parent gw-a: %v", ids)
	}
	out, errOut, code := b.otactl("", "device", "list", "--parent", "gw-a")
	if code != 0 {
		t.Fatalf("otactl device list --parent: %d %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != len(children)+2 || !strings.Contains(lines[0], "GATEWAY") || !strings.Contains(lines[len(lines)-1], "5 shown") {
		t.Fatalf("otactl device list --parent gw-a:\n%s", out)
	}
	for i, c := range children {
		if f := strings.Fields(lines[i+1]); f[0] != c || f[2] != "gw-a" || !slices.Contains(f, "online") {
			t.Fatalf("line %q: want %s under gw-a, online", lines[i+1], c)
		}
	}
	if m := metricValue(b, `otamq_gateway_children{state="reachable"}`); m != 5 {
		t.Fatalf("otamq_gateway_children reachable = %d", m)
	}
	if m := metricValue(b, "otamq_gateways_connected"); m != 1 {
		t.Fatalf("otamq_gateways_connected = %d", m)
	}
	if m := metricValue(b, `otamq_gateway_children_per_gateway_bucket{le="5"}`); m != 1 {
		t.Fatalf("gateways with at most 5 children = %d", m)
	}
	if m := metricValue(b, `otamq_gateway_children_per_gateway_bucket{le="1"}`); m != 0 {
		t.Fatalf("gateways with at most 1 child = %d", m)
	}

	// A rollout of the children: a canary child, then the rest.
	var created struct {
		Rollout roView `json:"rollout"`
		Plan    roPlan `json:"plan"`
	}
	mustCall(t, b.admin(), "rollout/create", map[string]any{"yaml": `
id: gw-1
release: ` + rel.ID + `
selector: {hardware: [esp32-v2]}
waves:
  - {name: canary, devices: [gc-1]}
  - {percent: [100]}
bake: 1s
probation: 2s
silence: 1s
reconnects: 1
thresholds: {min_sample: 1}
`}, &created)
	if created.Plan.Devices != 5 || len(created.Plan.Waves) != 2 || created.Plan.Waves[0].Devices != 1 || created.Plan.Waves[1].Devices != 4 {
		t.Fatalf("plan: %d devices, waves %+v", created.Plan.Devices, created.Plan.Waves)
	}
	mustCall(t, b.admin(), "rollout/start", map[string]any{"id": "gw-1"}, nil)

	// The canary: only gc-1 is offered; the gateway fetches the image.
	var offers map[string]wire.Offer
	eventually(t, 20*time.Second, func() error {
		offers = gw.offers()
		if len(offers) == 0 {
			return fmt.Errorf("no offer yet")
		}
		return nil
	})
	if _, ok := offers["gc-1"]; !ok || len(offers) != 1 {
		t.Fatalf("canary offers: %v", offers)
	}
	gw.install("gc-1", offers["gc-1"])
	b.waitRolloutGW(t, 30*time.Second, "gw-1", func(v roGatewayView) error {
		if v.Waves[0].State != "passed" {
			return fmt.Errorf("canary %s", v.Waves[0].State)
		}
		return nil
	})

	// The rest: four offers, served from the gateway's cache.
	got := map[string]wire.Offer{}
	eventually(t, 20*time.Second, func() error {
		for c, o := range gw.offers() {
			got[c] = o
		}
		if len(got) < 4 {
			return fmt.Errorf("%d of 4 offers", len(got))
		}
		return nil
	})
	for _, c := range children[1:] {
		o, ok := got[c]
		if !ok {
			t.Fatalf("no offer for %s: %v", c, got)
		}
		gw.install(c, o)
	}
	if gw.fetches != 1 {
		t.Fatalf("gateway fetched %d times", gw.fetches)
	}
	size := int(fw.m.ImageSize)
	for series, want := range map[string]int{
		"otamq_block_bytes_total":         size,
		"otamq_gateway_block_bytes_total": size,
		// gc-1 was the only child offered the image when it was fetched.
		"otamq_gateway_child_block_bytes_total": size,
	} {
		if m := metricValue(b, series); m != want {
			t.Errorf("%s = %d, want %d", series, m, want)
		}
	}

	// The gateway's link is cut while the four are in their probation.
	eventually(t, 20*time.Second, func() error {
		ds := b.rolloutDevicesGW("gw-1")
		for _, c := range children[1:] {
			if ds[c].State != "trial" {
				return fmt.Errorf("%s %s", c, ds[c].State)
			}
		}
		return nil
	})
	cutAt := time.Now()
	gw.cut()
	eventually(t, 20*time.Second, func() error {
		for _, c := range children[1:] {
			v := b.deviceGet(c)
			if v.Status.Online || !v.Status.Unreachable || v.Status.Gateway != "gw-a" || v.Status.DisconnectReason != fleet.ReasonGatewayOffline {
				return fmt.Errorf("%s: %+v", c, v.Status)
			}
		}
		return nil
	})
	// The rollout waits for them: longer than silence and probation, and
	// it shows them unreachable, under their gateway.
	var v roGatewayView
	eventually(t, 30*time.Second, func() error {
		v = b.rolloutGW("gw-1")
		ds := b.rolloutDevicesGW("gw-1")
		for _, c := range children[1:] {
			d := ds[c]
			if d.State != "trial" {
				t.Fatalf("%s is %s (%s) while its gateway is offline", c, d.State, d.Reason)
			}
			if !d.Unreachable || d.Gateway != "gw-a" || !strings.Contains(d.Reason, "gw-a") {
				return fmt.Errorf("%s: %+v", c, d)
			}
		}
		if ds["gc-1"].Gateway != "gw-a" || ds["gc-1"].Unreachable || ds["gc-1"].State != "succeeded" {
			return fmt.Errorf("gc-1: %+v", ds["gc-1"])
		}
		if since := time.Since(cutAt); since < 4*time.Second {
			return fmt.Errorf("offline for %v, waiting past silence and probation", since)
		}
		return nil
	})
	if v.Unreachable != 4 || len(v.Gateways) != 1 || v.Gateways[0].Gateway != "gw-a" || v.Gateways[0].Online ||
		v.Gateways[0].Devices != 5 || v.Gateways[0].Unreachable != 4 || v.Gateways[0].Counts["trial"] != 4 {
		t.Fatalf("rollout view while the gateway is offline: unreachable %d, gateways %+v", v.Unreachable, v.Gateways)
	}
	// All five were online through it (the rollout counts only the four
	// still in flight).
	if m := metricValue(b, `otamq_gateway_children{state="unreachable"}`); m != 5 {
		t.Errorf("otamq_gateway_children unreachable = %d", m)
	}
	if m := metricValue(b, "otamq_gateways_connected"); m != 0 {
		t.Errorf("otamq_gateways_connected = %d with the gateway cut off", m)
	}
	out, errOut, code = b.otactl("", "rollout", "devices", "gw-1")
	if code != 0 || !strings.Contains(out, "GATEWAY") || strings.Count(out, "(unreachable)") != 4 {
		t.Fatalf("otactl rollout devices: %d %s\n%s", code, errOut, out)
	}
	out, _, _ = b.otactl("", "rollout", "status", "gw-1")
	if !strings.Contains(out, "4 unreachable") || !strings.Contains(out, "gw-a") {
		t.Fatalf("otactl rollout status:\n%s", out)
	}
	out, _, _ = b.otactl("", "device", "get", "gc-2")
	if !strings.Contains(out, "unreachable via gateway gw-a") {
		t.Fatalf("otactl device get gc-2:\n%s", out)
	}

	// The gateway comes back and relays its children's heartbeats: they
	// are reachable again (not a reconnect of theirs), and succeed.
	gw.connect("1.1.0", wire.StateCommitted)
	for _, c := range children {
		gw.heartbeat(c, wire.StateCommitted)
	}
	done := b.waitRolloutGW(t, 30*time.Second, "gw-1", func(v roGatewayView) error {
		if v.State != "completed" {
			return fmt.Errorf("state %s", v.State)
		}
		return nil
	})
	if done.Counts["succeeded"] != 5 || done.Devices != 5 || done.Unreachable != 0 || done.Gateways[0].Counts["succeeded"] != 5 {
		t.Fatalf("completed with %v, gateways %+v", nonzero(done.Counts), done.Gateways)
	}
	for _, c := range children {
		v := b.deviceGet(c)
		if !v.Status.Online || v.Status.Unreachable || v.Status.Connects != 1 || v.Status.Firmware != "1.1.0" {
			t.Errorf("%s after the gateway's return: %+v", c, v.Status)
		}
	}
	if gw.fetches != 1 || metricValue(b, "otamq_gateway_block_bytes_total") != size {
		t.Errorf("more than one fetch: %d", gw.fetches)
	}
}

func (b *tb) waitRolloutGW(t *testing.T, within time.Duration, id string, cond func(roGatewayView) error) roGatewayView {
	t.Helper()
	var v roGatewayView
	eventually(t, within, func() error {
		v = b.rolloutGW(id)
		if err := cond(v); err != nil {
			return fmt.Errorf("rollout %s is %s (%s), counts %v: %w", id, v.State, v.Reason, nonzero(v.Counts), err)
		}
		return nil
	})
	return v
}

// TestGatewayWireChildMovedOrRevoked: once a child is moved to another gateway
// or revoked, its old gateway can no longer act for it: its existing
// subscriptions on the child's topics stop receiving, its publishes on
// them are refused, and it can no longer fetch the child's image on its
// own topics. The new gateway can.
func TestGatewayWireChildMovedOrRevoked(t *testing.T) {
	t.Parallel()
	b := startBroker(t, func(o *broker.Options) { o.DeviceRate = -1 })
	key, pub := newKey(t)
	b.trustKey(pub)
	keys, err := manifest.NewKeySet(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	fw := makeFirmware(t, key, "2.0.0", []string{"esp32-v2"}, 30_000)
	rel := b.release(fw)
	tok1 := b.register("gw-1", "gateway", "")
	tok2 := b.register("gw-2", "gateway", "")
	b.register("kid-m", "device", "gw-1", map[string]any{"hardware": "esp32-v2"})
	b.register("kid-r", "device", "gw-1", map[string]any{"hardware": "esp32-v2"})
	b.offer(rel.ID, "kid-m", "kid-r")

	g1 := newTestGateway(b, "gw-1", tok1, keys, "kid-m", "kid-r")
	g1.connect("1.0.0", wire.StateIdle)
	eventually(t, 10*time.Second, func() error {
		for _, c := range []string{"kid-m", "kid-r"} {
			if v := b.deviceGet(c); !v.Status.Online || v.Status.Gateway != "gw-1" {
				return fmt.Errorf("%s %+v", c, v.Status)
			}
		}
		return nil
	})
	// Before: gw-1 gets kid-m's commands and fetches its image.
	b.serverPublish("dm/kid-m/cmd", wire.Command{Verb: wire.VerbCheck}.Encode())
	g1.c.waitFor("dm/kid-m/cmd", 10*time.Second)
	img := g1.c.download("gw-1", fw.m.ImageDigest[:], fw.m.ImageSize, 4096, 8)
	if !bytes.Equal(img, fw.image) {
		t.Fatal("gw-1's fetch differs")
	}

	// kid-m moves to gw-2, which connects and relays for it.
	mustCall(t, b.admin(), "device/update", map[string]any{"id": "kid-m", "parent": "gw-2"}, nil)
	eventually(t, 10*time.Second, func() error {
		if v := b.deviceGet("kid-m"); v.Status.Online || v.Status.DisconnectReason != fleet.ReasonGatewayChanged {
			return fmt.Errorf("kid-m after its move: %+v", v.Status)
		}
		return nil
	})
	g2 := newTestGateway(b, "gw-2", tok2, keys, "kid-m")
	g2.connect("1.0.0", wire.StateIdle)
	if v := b.deviceGet("kid-m"); !v.Status.Online || v.Status.Gateway != "gw-2" {
		t.Fatalf("kid-m through gw-2: %+v", v.Status)
	}
	before := len(g1.c.received())
	b.serverPublish("dm/kid-m/cmd", wire.Command{Verb: wire.VerbReboot}.Encode())
	b.serverPublish("dm/kid-m/ota/manifest", wire.Offer{}.Encode())
	eventually(t, 10*time.Second, func() error {
		n := 0
		for _, m := range g2.c.msgs2() {
			if m.Topic == "dm/kid-m/cmd" {
				if c, err := wire.DecodeCommand(m.Payload); err == nil && c.Verb == wire.VerbReboot {
					n++
				}
			}
		}
		if n != 1 {
			return fmt.Errorf("gw-2 got %d reboot commands", n)
		}
		return nil
	})
	// gw-2 got them; gw-1, still subscribed, got neither. (A marker sent
	// after them on gw-1's own topic shows that gw-1's queue was drained.)
	b.serverPublish("dm/gw-1/cmd", wire.Command{Verb: wire.VerbCheck}.Encode())
	g1.c.waitFor("dm/gw-1/cmd", 10*time.Second)
	for _, topic := range g1.c.received()[before:] {
		if strings.HasPrefix(topic, "dm/kid-m/") {
			t.Fatalf("gw-1 still received %s after kid-m moved", topic)
		}
	}
	if rc := g1.c.publish("dm/kid-m/hb", wire.Heartbeat{HealthFlags: 7}.Encode()); rc != 0x87 {
		t.Fatalf("gw-1 relaying kid-m's heartbeat after the move: 0x%02x", rc)
	}
	if rc := g1.c.subscribe("dm/kid-m/cmd"); rc != 0x87 {
		t.Fatalf("gw-1 subscribing to kid-m's commands after the move: 0x%02x", rc)
	}
	if v := b.deviceGet("kid-m"); v.Status.Gateway != "gw-2" {
		t.Fatalf("gw-1's refused relay changed kid-m: %+v", v.Status)
	}
	// gw-1 can still fetch the image: it is offered to kid-r, its child.
	// gw-2 can, for kid-m.
	if got := g2.c.download("gw-2", fw.m.ImageDigest[:], fw.m.ImageSize, 4096, 8); !bytes.Equal(got, fw.image) {
		t.Fatal("gw-2's fetch differs")
	}

	// kid-r is revoked: gw-1 can act for none of its former children now.
	mustCall(t, b.admin(), "device/revoke", map[string]any{"id": "kid-r", "reason": "stolen"}, nil)
	eventually(t, 10*time.Second, func() error {
		if v := b.deviceGet("kid-r"); v.Status.Online || v.Status.DisconnectReason != fleet.ReasonKicked {
			return fmt.Errorf("kid-r after its revocation: %+v", v.Status)
		}
		return nil
	})
	if rc := g1.c.publish("dm/kid-r/ev", wire.Event{Code: wire.EvDownloadStarted}.Encode()); rc != 0x87 {
		t.Fatalf("gw-1 relaying a revoked child's event: 0x%02x", rc)
	}
	req := wire.BlockRequest{Digest: fw.m.ImageDigest[:], Size: 4096, Count: 1, RequestID: 900}
	g1.relay("gw-1", "ota/get", req.Encode())
	eventually(t, 10*time.Second, func() error {
		_, errs := g1.c.blocksFor("dm/gw-1/ota/blk", 900)
		if len(errs) != 1 || errs[0].Code != wire.BlockNotAssigned {
			return fmt.Errorf("gw-1's fetch with no child left offered the image: %+v", errs)
		}
		return nil
	})
	before = len(g1.c.received())
	b.serverPublish("dm/kid-r/cmd", wire.Command{Verb: wire.VerbReboot}.Encode())
	b.serverPublish("dm/gw-1/cmd", wire.Command{Verb: wire.VerbReboot}.Encode())
	eventually(t, 10*time.Second, func() error {
		for _, topic := range g1.c.received()[before:] {
			if topic == "dm/gw-1/cmd" {
				return nil
			}
		}
		return fmt.Errorf("marker not received")
	})
	for _, topic := range g1.c.received()[before:] {
		if strings.HasPrefix(topic, "dm/kid-r/") {
			t.Fatalf("gw-1 still received %s after kid-r was revoked", topic)
		}
	}
	if m := metricValue(b, `otamq_gateway_children{state="reachable"}`); m != 1 {
		t.Errorf("reachable children = %d, want kid-m through gw-2", m)
	}
	raw, _ := json.Marshal(b.deviceGet("kid-m"))
	if !strings.Contains(string(raw), `"gateway":"gw-2"`) {
		t.Errorf("kid-m: %s", raw)
	}
}

// msgs2 returns the messages received so far.
func (c *client) msgs2() []struct {
	Topic   string
	Payload []byte
} {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]struct {
		Topic   string
		Payload []byte
	}, len(c.msgs))
	for i, m := range c.msgs {
		out[i].Topic, out[i].Payload = m.Topic, m.Payload
	}
	return out
}
