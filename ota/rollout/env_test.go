package rollout

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/clock"
	"github.com/otamq/otamq/ota/delivery"
	"github.com/otamq/otamq/ota/event"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/release"
	"github.com/otamq/otamq/ota/store"
	"github.com/otamq/otamq/ota/wire"
)

// The engine's tests run it on a real bbolt store with the real registry,
// catalog and delivery; only the MQTT side is a recorder (sender), and
// devices are driven through the same calls the hooks make (delivery.Event,
// registry Birth/Connected/Heartbeat). The end-to-end tests with simulated
// devices over MQTT are in test/.

// sender records what the engine sends through delivery.
type sender struct {
	mu       sync.Mutex
	offers   map[string][]wire.Offer
	commands map[string][]wire.Command
	offline  map[string]bool // commands to these are not delivered
}

func (s *sender) SendOffer(id string, p []byte) {
	o, err := wire.DecodeOffer(p)
	if err != nil {
		panic(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.offers[id] = append(s.offers[id], o)
}

func (s *sender) SendCommand(id string, p []byte) error {
	c, err := wire.DecodeCommand(p)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.offline[id] {
		return delivery.ErrNoReceiver
	}
	s.commands[id] = append(s.commands[id], c)
	return nil
}

// lastOffer returns the newest offer pushed to id.
func (s *sender) lastOffer(id string) (wire.Offer, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.offers[id]
	if len(o) == 0 {
		return wire.Offer{}, false
	}
	return o[len(o)-1], true
}

// working returns the last offer id was sent that named a rollout: the one
// it works on (an empty offer that withdrew it since does not change what
// its late reports are about).
func (s *sender) working(id string) (wire.Offer, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.offers[id]
	for i := len(o) - 1; i >= 0; i-- {
		if o[i].RolloutID != "" {
			return o[i], true
		}
	}
	return wire.Offer{}, false
}

// everOffered lists the devices that were ever sent an offer of a release.
func (s *sender) everOffered() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []string
	for id, os := range s.offers {
		if slices.ContainsFunc(os, func(o wire.Offer) bool { return o.RolloutID != "" }) {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}

// offered lists the devices whose last offer names a rollout.
func (s *sender) offered() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []string
	for id, o := range s.offers {
		if len(o) > 0 && o[len(o)-1].RolloutID != "" {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}

func (s *sender) commandsTo(id string) []wire.Command {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]wire.Command(nil), s.commands[id]...)
}

type env struct {
	t    testing.TB
	dir  string
	db   *store.DB
	clk  *clock.Fake
	feed *event.Feed
	reg  *fleet.Registry
	cat  *release.Catalog
	dlv  *delivery.Service
	eng  *Engine
	snd  *sender
	key  *ecdsa.PrivateKey
	seq  uint64
	rels map[string]release.Release // by version
	evs  *events
	rec  *results
	gens map[string]uint64 // devices' connection generations
}

// events collects rollout events.
type events struct {
	mu  sync.Mutex
	all []event.Rollout
}

func (e *events) OnEvent(ev event.Event) {
	if r, ok := ev.(event.Rollout); ok {
		e.mu.Lock()
		e.all = append(e.all, r)
		e.mu.Unlock()
	}
}

func (e *events) kinds() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, r := range e.all {
		if r.Kind != "device" {
			s := r.Kind
			if r.Wave != "" {
				s += ":" + r.Wave
			}
			out = append(out, s)
		}
	}
	return out
}

// results is a Recorder.
type results struct {
	mu        sync.Mutex
	results   map[string]int
	rollbacks int
	health    int
}

func (r *results) Result(result, hw, region, version string) {
	r.mu.Lock()
	r.results[result+"/"+hw]++
	r.mu.Unlock()
}

func (r *results) Rollback(string, string, string) {
	r.mu.Lock()
	r.rollbacks++
	r.mu.Unlock()
}

func (r *results) Alarm(kind, level string) {
	r.mu.Lock()
	r.results["alarm/"+kind+"/"+level]++
	r.mu.Unlock()
}

func (r *results) HealthFailure(string, string, string) {
	r.mu.Lock()
	r.health++
	r.mu.Unlock()
}

var t0 = time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC) // a Wednesday

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), clk: clock.NewFake(t0), rels: map[string]release.Release{}, gens: map[string]uint64{}}
	key, err := manifest.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	e.key = key
	e.open()
	pub, _ := manifest.MarshalPublicKey(&key.PublicKey)
	e.update(func(tx store.Tx) error { _, err := e.cat.AddKey(tx, "k", pub, "t"); return err })
	return e
}

// open (re)opens everything on the env's directory, as a broker's start.
func (e *env) open() {
	t := e.t
	db, err := store.Open(filepath.Join(e.dir, "otamq.db"), &store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	e.db = db
	t.Cleanup(func() { _ = db.Close() })
	e.feed = &event.Feed{}
	e.evs = &events{}
	e.feed.Subscribe(e.evs)
	e.reg, err = fleet.Open(db, &fleet.Options{Clock: e.clk, Feed: e.feed})
	if err != nil {
		t.Fatal(err)
	}
	e.cat, err = release.Open(db, &release.Options{Clock: e.clk})
	if err != nil {
		t.Fatal(err)
	}
	e.snd = &sender{offers: map[string][]wire.Offer{}, commands: map[string][]wire.Command{}, offline: map[string]bool{}}
	e.dlv, err = delivery.New(db, e.cat, e.reg, &delivery.Options{Clock: e.clk, Sender: e.snd, Feed: e.feed})
	if err != nil {
		t.Fatal(err)
	}
	e.rec = &results{results: map[string]int{}}
	e.eng, err = New(db, e.reg, e.cat, e.dlv, &Options{Clock: e.clk, Feed: e.feed, Recorder: e.rec})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range e.cat.Releases(release.Filter{}) {
		e.rels[r.Version] = r
	}
}

// restart closes the store and opens everything again: what survives is
// what was committed.
func (e *env) restart() {
	if err := e.db.Close(); err != nil {
		e.t.Fatal(err)
	}
	e.open()
}

func (e *env) update(fn func(tx store.Tx) error) {
	e.t.Helper()
	if err := e.db.Update(context.Background(), fn); err != nil {
		e.t.Fatal(err)
	}
}

// release uploads a firmware release of version for hw.
func (e *env) release(version string, secure uint32, hw ...string) release.Release {
	e.t.Helper()
	img := make([]byte, 4096)
	_, _ = rand.Read(img)
	n, d, _ := manifest.HashImage(bytes.NewReader(img))
	e.seq++
	signed, err := manifest.Sign(&manifest.Manifest{Sequence: e.seq, Version: version, Hardware: hw, ImageSize: n,
		ImageDigest: d, SecureVersion: secure}, e.key)
	if err != nil {
		e.t.Fatal(err)
	}
	e.update(func(tx store.Tx) error { _, _, err := e.cat.BeginUpload(tx, signed, "t"); return err })
	var rel *release.Release
	e.update(func(tx store.Tx) error {
		var err error
		_, rel, err = e.cat.AppendUpload(tx, d.String(), 0, img, "t")
		return err
	})
	e.rels[version] = *rel
	return *rel
}

// dev is a device to register.
type dev struct {
	id, hw, region, firmware string
	groups                   []string
	tags                     map[string]string
	offset                   int16
	secure                   uint32
}

// devices registers ds and, for those with a firmware, connects them and
// sends their birth.
func (e *env) devices(ds ...dev) {
	e.t.Helper()
	e.update(func(tx store.Tx) error {
		for _, d := range ds {
			if _, err := e.reg.Register(tx, fleet.Registration{ID: d.id, Attributes: fleet.Attributes{Hardware: d.hw,
				Region: d.region, Groups: d.groups, Tags: d.tags}}, fleet.TokenSecret("x"), "t"); err != nil {
				return err
			}
		}
		return nil
	})
	for _, d := range ds {
		if d.firmware != "" {
			e.connect(d.id)
			e.birth(d.id, d.firmware, wire.BootPowerOn, wire.StateIdle, d.offset, d.secure)
		}
	}
}

func (e *env) connect(id string) {
	e.gens[id] = e.reg.Connected(id, fleet.Conn{Remote: "127.0.0.1:1", Protocol: 5})
}

func (e *env) birth(id, fw string, reason wire.BootReason, st wire.OTAState, offset int16, secure uint32) {
	e.t.Helper()
	v, _ := e.reg.Get(id)
	if err := e.reg.Birth(id, wire.Birth{FirmwareVersion: fw, Hardware: v.Hardware, BootReason: reason, OTAState: st,
		UTCOffsetMinutes: offset, SecureVersion: secure}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) heartbeat(id string, flags uint8, st wire.OTAState) {
	e.t.Helper()
	if err := e.reg.Heartbeat(id, wire.Heartbeat{HealthFlags: flags, OTAState: st}); err != nil {
		e.t.Fatal(err)
	}
}

// event sends device id's update event for its current offer.
func (e *env) event(id string, code wire.EventCode, errc wire.ErrorCode) {
	e.t.Helper()
	o, ok := e.snd.working(id)
	if !ok {
		e.t.Fatalf("%s has no offer", id)
	}
	if err := e.dlv.Event(context.Background(), id, wire.Event{Code: code, RolloutID: o.RolloutID, Error: errc}); err != nil {
		e.t.Fatal(err)
	}
}

// behaviour is how a simulated device goes through its update.
type behaviour int

const (
	healthy behaviour = iota
	failsHealth
	rollsBack
	staysAway // reboots and is never heard of again
	bootLoop  // comes back on the new version and reconnects again and again
)

// target is the version of the release in id's current offer, "" when
// it has none.
func (e *env) target(id string) string {
	o, ok := e.snd.lastOffer(id)
	if !ok {
		return ""
	}
	m, err := manifest.Parse(o.Manifest)
	if err != nil {
		e.t.Fatal(err)
	}
	return m.Manifest.Version
}

// walk takes device id through its offer as the agent does, up to its
// trial (verified and waiting for an install command when the offer asks
// for one and install is false).
func (e *env) walk(id string, b behaviour, install bool) {
	e.t.Helper()
	o, _ := e.snd.lastOffer(id)
	e.event(id, wire.EvDownloadStarted, 0)
	e.event(id, wire.EvDownloadCompleted, 0)
	if o.InstallMode == wire.InstallOnCommand && !install {
		return
	}
	e.install(id, b)
}

func (e *env) install(id string, b behaviour) {
	e.t.Helper()
	target := e.target(id)
	v, _ := e.reg.Get(id)
	old := v.Status.Firmware
	e.event(id, wire.EvInstallStarted, 0)
	e.event(id, wire.EvInstallCompleted, 0)
	e.event(id, wire.EvRebootStarted, 0)
	e.disconnect(id)
	switch b {
	case staysAway:
		return
	case rollsBack:
		e.connect(id)
		e.birth(id, old, wire.BootRollback, wire.StateRolledBack, 0, 0)
		e.event(id, wire.EvRollbackTriggered, wire.ErrCodeBootFailure)
		e.event(id, wire.EvRollbackCompleted, wire.ErrCodeBootFailure)
		return
	}
	e.connect(id)
	e.birth(id, target, wire.BootOTAReboot, wire.StateTrial, 0, 0)
	e.event(id, wire.EvRebootCompleted, 0)
	switch b {
	case failsHealth:
		e.heartbeat(id, wire.HealthAppOK, wire.StateTrial)
		e.event(id, wire.EvHealthFailed, wire.ErrCodeHealthCheck)
		e.event(id, wire.EvRollbackTriggered, wire.ErrCodeHealthCheck)
		e.event(id, wire.EvRollbackCompleted, wire.ErrCodeHealthCheck)
	case bootLoop:
		for i := 0; i < 8; i++ {
			e.disconnect(id)
			e.connect(id)
			e.birth(id, target, wire.BootPanic, wire.StateTrial, 0, 0)
		}
	default:
		e.heartbeat(id, wire.HealthAllOK, wire.StateCommitted)
		e.event(id, wire.EvHealthOK, 0)
	}
}

func (e *env) disconnect(id string) {
	e.reg.Disconnected(id, e.gens[id], fleet.ReasonLost)
}

// pass runs one evaluation pass.
func (e *env) pass() {
	e.t.Helper()
	if err := e.eng.Pass(context.Background()); err != nil {
		e.t.Fatal(err)
	}
}

// advance moves the clock by d in steps of step, with a pass after each.
func (e *env) advance(d, step time.Duration) {
	for ; d > 0; d -= step {
		e.clk.Advance(min(step, d))
		e.pass()
	}
}

// operator commits like the admin API does (the test has no audit log).
func (e *env) commit(fn func(tx store.Tx) error) error {
	return e.db.Update(context.Background(), fn)
}

func (e *env) create(yaml string) *View {
	e.t.Helper()
	v, _, err := e.eng.Create("alice", []byte(yaml), e.commit)
	if err != nil {
		e.t.Fatalf("create: %v", err)
	}
	return v
}

func (e *env) start(id string) *View {
	e.t.Helper()
	v, err := e.eng.Start("alice", id, e.commit)
	if err != nil {
		e.t.Fatalf("start: %v", err)
	}
	return v
}

func (e *env) get(id string) *View {
	e.t.Helper()
	v, err := e.eng.Get(id)
	if err != nil {
		e.t.Fatal(err)
	}
	return v
}

// states returns each device's state in rollout id.
func (e *env) states(id string) map[string]string {
	e.t.Helper()
	out := map[string]string{}
	after := ""
	for {
		ds, next, err := e.eng.Devices(id, DeviceFilter{After: after, Limit: 1000})
		if err != nil {
			e.t.Fatal(err)
		}
		for _, d := range ds {
			out[d.Device] = d.State
		}
		if next == "" {
			return out
		}
		after = next
	}
}

func (e *env) device(id, dev string) DeviceView {
	e.t.Helper()
	after := ""
	for {
		ds, next, err := e.eng.Devices(id, DeviceFilter{After: after, Limit: 1000})
		if err != nil {
			e.t.Fatal(err)
		}
		for _, d := range ds {
			if d.Device == dev {
				return d
			}
		}
		if next == "" {
			e.t.Fatalf("%s is not in rollout %s", dev, id)
		}
		after = next
	}
}

// fleetOf registers n devices per group on 1.0.0, hardware esp32-v2.
func (e *env) fleetOf(groups map[string]int) []string {
	var ds []dev
	var ids []string
	for g, n := range groups {
		for i := 0; i < n; i++ {
			d := dev{id: fmt.Sprintf("%s-%03d", g, i), hw: "esp32-v2", region: "eu", firmware: "1.0.0"}
			if g != "rest" {
				d.groups = []string{g}
			}
			ds = append(ds, d)
			ids = append(ids, d.id)
		}
	}
	e.devices(ds...)
	sort.Strings(ids)
	return ids
}

func specErr(t *testing.T, err error) *SpecError {
	t.Helper()
	var se *SpecError
	if !errors.As(err, &se) {
		t.Fatalf("want a *SpecError, got %v", err)
	}
	return se
}

func hasProblem(se *SpecError, field, substr string) bool {
	for _, p := range se.Problems {
		if p.Field == field && strings.Contains(p.Message, substr) {
			return true
		}
	}
	return false
}
