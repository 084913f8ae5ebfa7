package sim

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"reflect"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/wire"
)

func TestParseMix(t *testing.T) {
	m, err := ParseMix("healthy=90, bad-health=5,boot-loop", ParseProfile)
	if err != nil {
		t.Fatal(err)
	}
	want := Mix[Profile]{{Healthy, 90}, {BadHealth, 5}, {BootLoop, 1}}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("%v, want %v", m, want)
	}
	for _, c := range []struct{ in, want string }{
		{"", "want NAME=WEIGHT"},
		{"healthy=-1", "not a non-negative integer"},
		{"healthy=x", "not a non-negative integer"},
		{"healthy=0", "add up to 0"},
		{"healthy=1,healthy=2", "appears twice"},
		{"sick=1", `profile "sick": want one of healthy`},
	} {
		if _, err := ParseMix(c.in, ParseProfile); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseMix(%q): %v, want %q", c.in, err, c.want)
		}
	}
}

func TestMixCounts(t *testing.T) {
	for _, c := range []struct {
		weights []int
		n       int
		want    []int
	}{
		{[]int{90, 5, 5}, 200, []int{180, 10, 10}},
		{[]int{1, 1, 1}, 10, []int{4, 3, 3}},
		{[]int{2, 1}, 1, []int{1, 0}},
		{[]int{0, 1}, 3, []int{0, 3}},
		{[]int{50, 50}, 0, []int{0, 0}},
	} {
		var m Mix[int]
		for i, w := range c.weights {
			m = append(m, Weighted[int]{i, w})
		}
		if got := m.Counts(c.n); !slices.Equal(got, c.want) {
			t.Errorf("%v of %d: %v, want %v", c.weights, c.n, got, c.want)
		}
	}
}

func TestMixAssign(t *testing.T) {
	m := Mix[string]{{"a", 1}, {"b", 3}}
	x, y, z := m.Assign(100, 7, "profile"), m.Assign(100, 7, "profile"), m.Assign(100, 8, "profile")
	if !slices.Equal(x, y) {
		t.Fatal("the same seed gave another assignment")
	}
	if slices.Equal(x, z) || slices.Equal(x, m.Assign(100, 7, "region")) {
		t.Fatal("another seed or salt gave the same assignment")
	}
	counts := map[string]int{}
	for _, v := range z {
		counts[v]++
	}
	if counts["a"] != 25 || counts["b"] != 75 {
		t.Fatalf("counts %v", counts)
	}
}

func TestProfileText(t *testing.T) {
	for _, p := range Profiles() {
		b, _ := p.MarshalText()
		var q Profile
		if err := q.UnmarshalText(b); err != nil || q != p {
			t.Errorf("%s: %v, %v", p, q, err)
		}
	}
}

func TestWindow(t *testing.T) {
	w, err := ParseWindow("02:00-04:30")
	if err != nil || w != (Window{2 * time.Hour, 4*time.Hour + 30*time.Minute}) || w.String() != "02:00-04:30" {
		t.Fatalf("%v, %v", w, err)
	}
	if w, err := ParseWindow("23:59:30-00:00:10"); err != nil || w.String() != "23:59:30-00:00:10" {
		t.Fatalf("%v, %v", w, err)
	}
	for _, bad := range []string{"", "02:00", "2:00-03:00", "24:00-01:00", "01:60-02:00", "01:00-01:00", "a-b", "01:00:00:00-02:00"} {
		if _, err := ParseWindow(bad); err == nil {
			t.Errorf("ParseWindow(%q) accepted", bad)
		}
	}
	day0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		w      Window
		offset int16
		at     time.Duration // UTC time of day
		in     bool
		next   time.Duration // from at
	}{
		{Window{2 * time.Hour, 4 * time.Hour}, 0, time.Hour, false, time.Hour},
		{Window{2 * time.Hour, 4 * time.Hour}, 0, 2 * time.Hour, true, 2 * time.Hour},
		{Window{2 * time.Hour, 4 * time.Hour}, 0, 4 * time.Hour, false, 22 * time.Hour},
		{Window{2 * time.Hour, 4 * time.Hour}, 60, time.Hour, true, 2 * time.Hour},   // 02:00 local
		{Window{2 * time.Hour, 4 * time.Hour}, -300, 8 * time.Hour, true, time.Hour}, // 03:00 local
		{Window{23 * time.Hour, time.Hour}, 0, 30 * time.Minute, true, 30 * time.Minute},
		{Window{23 * time.Hour, time.Hour}, 0, 12 * time.Hour, false, 11 * time.Hour},
	} {
		now := day0.Add(c.at)
		if got := c.w.contains(now, c.offset); got != c.in {
			t.Errorf("%s at %v UTC%+d: in %v, want %v", c.w, c.at, c.offset, got, c.in)
		}
		if got := c.w.next(now, c.offset).Sub(now); got != c.next {
			t.Errorf("%s at %v UTC%+d: next boundary in %v, want %v", c.w, c.at, c.offset, got, c.next)
		}
	}
}

func TestReadTokens(t *testing.T) {
	want := []Credential{{"dev-1", "t1"}, {"dev-2", "t2"}}
	for _, in := range []string{"id,token\ndev-1,t1\ndev-2,t2\n", `{"id":"dev-1","token":"t1"}` + "\n\n" + `{"id":"dev-2","token":"t2"}` + "\n"} {
		got, err := ReadTokens(strings.NewReader(in))
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("%q: %v, %v", in, got, err)
		}
	}
	for _, c := range []struct{ in, want string }{
		{"", "header row"},
		{"id,token\n", "no device"},
		{"dev-1,t1\n", "header row"},
		{"id,token\ndev-1,t1\ndev-1,t2\nbad id,x\ndev-3,\n", "already on line 2"},
		{"id,token\ndev-1,t1,x\n", "wrong number of fields"},
		{`{"id":"dev-1","token":"t1","x":1}`, "unknown field"},
	} {
		_, err := ReadTokens(strings.NewReader(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.in, err, c.want)
		}
	}
	// every problem at once
	_, err := ReadTokens(strings.NewReader("id,token\ndev-1,t1\ndev-1,t2\nbad id,x\ndev-3,\n"))
	for _, w := range []string{"line 3", "line 4", "line 5: dev-3 has no token"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("%v lacks %q", err, w)
		}
	}
}

func TestReadSpecs(t *testing.T) {
	in := `# a comment
{"id": "a", "token": "t", "profile": "boot-loop", "utc_offset_minutes": -300, "offline": "01:00-02:00"}
{"id": "b", "fault_versions": ["1.1.0"]}
`
	specs, err := ReadSpecs(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(specs) != 2 || specs[0].Profile != BootLoop || specs[0].UTCOffsetMinutes != -300 || specs[0].Offline == nil ||
		*specs[0].Offline != (Window{time.Hour, 2 * time.Hour}) || specs[1].FaultVersions[0] != "1.1.0" {
		t.Fatalf("%+v", specs)
	}
	_, err = ReadSpecs(strings.NewReader(`{"id": "a", "profile": "sick"}` + "\n" + `{"id": "bad id"}` + "\n" + `{"id": "c", "nope": 1}`))
	for _, w := range []string{"line 1", "line 2", "line 3"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("%v lacks %q", err, w)
		}
	}
}

func TestSimHeader(t *testing.T) {
	h, ok := parseSimHeader(SimHeader("1.2.3", simCrashLater, 7, 4))
	if !ok || h != (simHeader{behaviour: simCrashLater, delay: 7, secure: 4, version: "1.2.3"}) {
		t.Fatalf("%+v %v", h, ok)
	}
	for _, b := range [][]byte{nil, make([]byte, 64), SimHeader("1.2.3", 6, 0, 0), SimHeader("1.2.3", 0, 0, 0)[:63]} {
		if _, ok := parseSimHeader(b); ok {
			t.Errorf("%x parsed", b)
		}
	}
	if h, ok := parseSimHeader(SimHeader("not a version", 0, 0, 0)); !ok || h.version != "" {
		t.Errorf("%+v", h)
	}
}

func TestDecile(t *testing.T) {
	for _, c := range []struct {
		off, size uint64
		want      uint8
	}{{0, 100, 0}, {9, 100, 0}, {10, 100, 10}, {99, 100, 90}, {100, 100, 90}, {5, 9, 0}} {
		if got := decile(c.off, c.size); got != c.want {
			t.Errorf("decile(%d, %d) = %d, want %d", c.off, c.size, got, c.want)
		}
	}
}

func TestFleetAddRefuses(t *testing.T) {
	if _, err := New(Config{URL: "http://x"}); err == nil {
		t.Error("an http URL accepted")
	}
	if _, err := New(Config{URL: "mqtt://127.0.0.1:1883"}); err == nil {
		t.Error("no keys accepted")
	}
	f, err := New(Config{URL: "mqtt://127.0.0.1:1883", Load: true})
	if err != nil {
		t.Fatal(err)
	}
	err = f.Add(DeviceSpec{ID: "ok"}, DeviceSpec{ID: "ok"}, DeviceSpec{ID: "bad id"},
		DeviceSpec{ID: "v", Version: "1.0"}, DeviceSpec{ID: "z", UTCOffsetMinutes: 900, Offline: &Window{25 * time.Hour, 0}},
		DeviceSpec{ID: "y", Offline: &Window{}})
	for _, w := range []string{"given twice", `"bad id" must match`, "version", "UTC offset", "times must be", "start and end"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("%v lacks %q", err, w)
		}
	}
	if f.Len() != 1 {
		t.Errorf("%d devices added", f.Len())
	}
	if d, ok := f.Device("ok"); !ok || d.Hardware != DefaultHardware || d.Version != DefaultVersion {
		t.Errorf("%+v", d)
	}
	if err := f.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// fakeLink records what a device publishes: for the fuzz test, which has
// no broker.
type fakeLink struct {
	mu   sync.Mutex
	pubs []string
	dc   chan struct{}
}

func (l *fakeLink) publish(topic string, _ []byte, _ byte) (uint16, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pubs = append(l.pubs, topic)
	return uint16(len(l.pubs)), nil
}
func (l *fakeLink) subscribe(context.Context, string, byte) error { return nil }
func (l *fakeLink) abort()                                        {}
func (l *fakeLink) disconnect()                                   {}
func (l *fakeLink) done() <-chan struct{}                         { return l.dc }

var fuzzKey = sync.OnceValues(func() (manifest.KeySet, []byte) {
	k, err := manifest.GenerateKey()
	if err != nil {
		panic(err)
	}
	img := bytes.Repeat([]byte{0xe9}, 10000)
	m := manifest.Manifest{Sequence: 5, Version: "1.1.0", Hardware: []string{DefaultHardware}, ImageSize: uint64(len(img)),
		ImageDigest: sha256.Sum256(img), Kind: manifest.KindFirmware}
	signed, err := manifest.Sign(&m, k)
	if err != nil {
		panic(err)
	}
	keys, _ := manifest.NewKeySet(&k.PublicKey)
	return keys, wire.Offer{RolloutID: "r-1", Manifest: signed, BlockSize: 1024, MaxWindow: 4}.Encode()
})

// connectedDevice is a device that has booted and connected over a fake
// link, driven by hand (no timer fires within a test's time).
func connectedDevice(t testing.TB) (*device, *fakeLink) {
	keys, _ := fuzzKey()
	f, err := New(Config{URL: "mqtt://127.0.0.1:1", Keys: keys, Timing: Timing{Heartbeat: time.Hour, RequestTimeout: time.Hour,
		TrialTimeout: time.Hour, Probation: time.Hour, Boot: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Add(DeviceSpec{ID: "fz", Token: "t"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := f.Stop(ctx); err != nil {
			var buf bytes.Buffer
			_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
			t.Errorf("%v\n%s", err, buf.String())
		}
	})
	d := f.byID["fz"]
	l := &fakeLink{dc: make(chan struct{})}
	close(l.dc)
	d.mu.Lock()
	defer d.mu.Unlock()
	now := f.now()
	d.boot(now)
	d.link, d.connected, d.brokerSeen = l, true, true
	d.sendBirth()
	return d, l
}

// FuzzDeviceMessage: whatever the broker sends, on any of the device's
// topics and in any state, the simulated device neither panics nor
// publishes anything a decoder of the broker refuses.
func FuzzDeviceMessage(f *testing.F) {
	_, offer := fuzzKey()
	f.Add(byte(0), false, byte(0), offer)
	f.Add(byte(0), false, byte(0), wire.Offer{}.Encode())
	f.Add(byte(1), true, byte(0), wire.AppendBlock(nil, 1, 0, 10000, bytes.Repeat([]byte{0xe9}, 1024)))
	f.Add(byte(1), true, byte(0), wire.BlockError{RequestID: 1, Code: wire.BlockRateLimited, RetryAfterMS: 10}.Encode())
	f.Add(byte(1), true, byte(0), wire.BlockError{RequestID: 1, Code: wire.BlockNotAssigned}.Encode())
	f.Add(byte(1), true, byte(0), wire.AppendBlock(nil, 1, 0, 99, []byte{1}))
	f.Add(byte(2), true, byte(0), wire.Command{Verb: wire.VerbInstall, RolloutID: "r-1"}.Encode())
	f.Add(byte(2), false, byte(0), wire.Command{Verb: wire.VerbCheck}.Encode())
	f.Add(byte(2), true, byte(0), wire.Command{Verb: wire.VerbReboot}.Encode())
	f.Add(byte(2), true, byte(0), wire.Command{Verb: wire.VerbCancel}.Encode())
	f.Add(byte(0), true, byte(0), []byte{0xa1, 0x01, 0x60})
	f.Add(byte(1), true, byte(0x80), wire.AppendBlock(nil, 1, 0, 10000, bytes.Repeat([]byte{0xe9}, 1024)))
	f.Add(byte(2), false, byte(0x99), wire.Command{Verb: wire.VerbCheck}.Encode())
	f.Fuzz(fuzzBody)
}

func fuzzBody(t *testing.T, topic byte, downloading bool, ack byte, payload []byte) {
	_, offer := fuzzKey()
	d, l := connectedDevice(t)
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.f.now()
	if downloading {
		d.handle(now, d.base+"ota/manifest", offer)
		if d.ps.state != wire.StateDownloading {
			t.Fatalf("the seed offer did not start a download: state %s", d.ps.state)
		}
	}
	suffix := [...]string{"ota/manifest", "ota/blk", "cmd", "other"}[topic%4]
	d.handle(now, d.base+suffix, payload)
	d.onPuback(now, d.evID, ack) // whatever the broker says of the event in flight
	d.tick(now.Add(2 * time.Hour))
	if d.evqBytes < 0 || d.evqBytes > eventQueueBytes {
		t.Fatalf("event queue of %d bytes", d.evqBytes)
	}
	if !d.ps.state.Valid() {
		t.Fatalf("state %d", d.ps.state)
	}
	for _, q := range d.history {
		if !q.Code.Valid() {
			t.Fatalf("event code %d", q.Code)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range l.pubs {
		if !strings.HasPrefix(p, d.base) {
			t.Fatalf("published on %s", p)
		}
	}
}

// FuzzReadPacket: the MQTT 3.1.1 reader takes any bytes from the network
// without panicking and never reads a packet larger than its bound.
func FuzzReadPacket(f *testing.F) {
	f.Add([]byte{0x20, 0x02, 0x00, 0x00})                       // CONNACK
	f.Add([]byte{0x30, 0x05, 0x00, 0x01, 'a', 'x', 'y'})        // PUBLISH
	f.Add([]byte{0x32, 0x06, 0x00, 0x01, 'a', 0x00, 0x07, 'z'}) // PUBLISH QoS 1
	f.Add([]byte{0x90, 0x03, 0x00, 0x01, 0x80})                 // SUBACK refused
	f.Add([]byte{0x30, 0xff, 0xff, 0xff, 0x7f})                 // 256 MiB
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bufio.NewReader(bytes.NewReader(b))
		for range 8 {
			pk, err := readPacket(r)
			if err != nil {
				return
			}
			if len(pk.Payload) > maxPacket311 {
				t.Fatalf("payload of %d bytes", len(pk.Payload))
			}
		}
	})
}

func TestReadPacketBound(t *testing.T) {
	_, err := readPacket(bufio.NewReader(bytes.NewReader([]byte{0x30, 0xff, 0xff, 0xff, 0x7f})))
	if err == nil || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("%v", err)
	}
}

// TestConnectRate: attempts beyond the connect rate wait their turn, one
// second's worth at once (the burst).
func TestConnectRate(t *testing.T) {
	f, err := New(Config{URL: "mqtt://127.0.0.1:1", Load: true, ConnectRate: 10})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	var waits []time.Duration
	for range 13 {
		waits = append(waits, f.reserve(now))
	}
	want := []time.Duration{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 100 * time.Millisecond, 200 * time.Millisecond, 300 * time.Millisecond}
	if !slices.Equal(waits, want) {
		t.Fatalf("waits %v, want %v", waits, want)
	}
	// after a quiet while the burst is back, not more
	later := now.Add(time.Minute)
	n := 0
	for f.reserve(later) == 0 {
		n++
	}
	if n != 10 {
		t.Fatalf("%d attempts at once after a minute, want 10", n)
	}
	if f0, _ := New(Config{URL: "mqtt://127.0.0.1:1", Load: true}); f0.reserve(now) != 0 {
		t.Fatal("no rate: an attempt waits")
	}
}
