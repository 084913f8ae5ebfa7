package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/otamq/otamq/ota/delivery"
	"github.com/otamq/otamq/ota/event"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/release"
	"github.com/otamq/otamq/ota/rollout"
	"github.com/otamq/otamq/ota/store"
	"github.com/otamq/otamq/ota/wire"
)

// The engine benchmarks (planning, passes, transitions, memory) run the
// rollout engine in this process, wired as broker/broker.go wires it: a
// bbolt store with fsync on, the fleet registry, the release catalog,
// delivery and the engine on one event feed. Only MQTT is missing: offers
// and commands go to a sender that counts them, and the devices' messages
// are the calls the hooks make (delivery.Event, the registry's Connected,
// Birth, Disconnected).

// roEnv is the engine and what it runs on.
type roEnv struct {
	dir  string
	db   *store.DB
	feed *event.Feed
	reg  *fleet.Registry
	cat  *release.Catalog
	dlv  *delivery.Service
	eng  *rollout.Engine
	snd  *countSender
	rel  release.Release
	n    int
	gens []uint64 // connection generation of each device
}

// countSender counts what delivery sends.
type countSender struct{ offers, commands atomic.Int64 }

func (s *countSender) SendOffer(string, []byte) { s.offers.Add(1) }
func (s *countSender) SendCommand(string, []byte) error {
	s.commands.Add(1)
	return nil
}

// roDevice is device i of the benchmark fleet: a mix of what a real
// fleet holds, the same for every run.
//
//   - hardware: 70 % esp32-v2, 29 % esp32-v3, 1 % esp32-c3 (which the
//     release does not target: skipped, wrong hardware);
//   - regions eu, us, apac in turn;
//   - groups: canary (1 in 500), internal (1 in 200), pilot (1 in 50);
//   - firmware 1.0.0, 2 % still on 0.9.0 (a major step to 1.2.0, which the
//     version rules refuse: skipped);
//   - a quarter with a tz tag (Europe/Berlin, America/New_York,
//     Asia/Kolkata, Asia/Tokyo), the others a UTC offset in their birth.
func roDevice(i int) (fleet.Registration, wire.Birth) {
	hw := "esp32-v2"
	switch {
	case i%100 == 99:
		hw = "esp32-c3"
	case i%10 >= 7:
		hw = "esp32-v3"
	}
	reg := fleet.Registration{ID: deviceID(i), Attributes: fleet.Attributes{Hardware: hw,
		Region: []string{"eu", "us", "apac"}[i%3], Connectivity: "wifi"}}
	switch {
	case i%500 == 0:
		reg.Groups = []string{"canary"}
	case i%200 == 1:
		reg.Groups = []string{"internal"}
	case i%50 == 2:
		reg.Groups = []string{"pilot"}
	}
	if i%4 == 0 {
		reg.Tags = map[string]string{"tz": []string{"Europe/Berlin", "America/New_York", "Asia/Kolkata", "Asia/Tokyo"}[i/4%4]}
	}
	fw := "1.0.0"
	if i%50 == 7 {
		fw = "0.9.0"
	}
	b := wire.Birth{FirmwareVersion: fw, Hardware: hw, BootReason: wire.BootPowerOn, OTAState: wire.StateIdle,
		UTCOffsetMinutes: []int16{60, -300, 330, 0, 540}[i%5], AgentVersion: "0.4.0", Bootloader: "1.0.0"}
	return reg, b
}

// newRolloutEnv registers n devices of the roDevice mix (each connected
// and born) and uploads a signed release 1.2.0 for esp32-v2 and esp32-v3.
// The seeding runs without fsync; then everything is opened again on the
// same file with fsync on, as a broker starting on an existing fleet, and
// the devices connect again. It prints how long both took.
func newRolloutEnv(n int) (*roEnv, error) {
	dir, err := os.MkdirTemp("", "otamq-bench-ro-")
	if err != nil {
		return nil, err
	}
	e := &roEnv{dir: dir, n: n, gens: make([]uint64, n)}
	t0 := time.Now()
	if err := e.seed(); err != nil {
		e.close()
		return nil, err
	}
	seeded := time.Since(t0)
	t1 := time.Now()
	if err := e.open(); err != nil {
		e.close()
		return nil, err
	}
	loaded := time.Since(t1)
	e.connectAll()
	fmt.Printf("fleet of %d devices seeded in %.1f s; store, registry, catalog, delivery and engine opened in %.2f s (fsync on from here)\n",
		n, seeded.Seconds(), loaded.Seconds())
	return e, nil
}

func (e *roEnv) seed() error {
	ctx := context.Background()
	db, err := store.Open(filepath.Join(e.dir, "otamq.db"), &store.Options{NoSync: true, Logger: quiet})
	if err != nil {
		return err
	}
	defer db.Close()
	reg, err := fleet.Open(db, &fleet.Options{Logger: quiet})
	if err != nil {
		return err
	}
	births := make([]wire.Birth, e.n)
	const batch = 1000
	for start := 0; start < e.n; start += batch {
		err := db.Update(ctx, func(tx store.Tx) error {
			for i := start; i < min(start+batch, e.n); i++ {
				r, b := roDevice(i)
				births[i] = b
				if _, err := reg.Register(tx, r, fleet.TokenSecret(token(r.ID)), "bench"); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	for i := range e.n {
		id := deviceID(i)
		reg.Connected(id, fleet.Conn{Remote: "127.0.0.1:1", Protocol: 5})
		if err := reg.Birth(id, births[i]); err != nil {
			return err
		}
	}
	if err := reg.Flush(ctx); err != nil {
		return err
	}
	cat, err := release.Open(db, &release.Options{})
	if err != nil {
		return err
	}
	key, err := manifest.GenerateKey()
	if err != nil {
		return err
	}
	pub, err := manifest.MarshalPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	img := make([]byte, 64*1024)
	_, _ = rand.Read(img)
	size, digest, err := manifest.HashImage(bytes.NewReader(img))
	if err != nil {
		return err
	}
	signed, err := manifest.Sign(&manifest.Manifest{Sequence: 2, Version: "1.2.0", BuildID: "bench",
		Hardware: []string{"esp32-v2", "esp32-v3"}, ImageSize: size, ImageDigest: digest, Kind: manifest.KindFirmware}, key)
	if err != nil {
		return err
	}
	return db.Update(ctx, func(tx store.Tx) error {
		if _, err := cat.AddKey(tx, "bench", pub, "bench"); err != nil {
			return err
		}
		if _, _, err := cat.BeginUpload(tx, signed, "bench"); err != nil {
			return err
		}
		_, rel, err := cat.AppendUpload(tx, digest.String(), 0, img, "bench")
		if err == nil && rel == nil {
			err = fmt.Errorf("upload of %d bytes did not complete the release", len(img))
		}
		return err
	})
}

// open opens everything on the seeded file, fsync on.
func (e *roEnv) open() error {
	db, err := store.Open(filepath.Join(e.dir, "otamq.db"), &store.Options{Logger: quiet})
	if err != nil {
		return err
	}
	e.db = db
	e.feed = &event.Feed{}
	if e.reg, err = fleet.Open(db, &fleet.Options{Logger: quiet, Feed: e.feed}); err != nil {
		return err
	}
	if e.cat, err = release.Open(db, &release.Options{}); err != nil {
		return err
	}
	rels := e.cat.Releases(release.Filter{})
	if len(rels) != 1 {
		return fmt.Errorf("%d releases in the catalog, want 1", len(rels))
	}
	e.rel = rels[0]
	e.snd = &countSender{}
	if e.dlv, err = delivery.New(db, e.cat, e.reg, &delivery.Options{Logger: quiet, Sender: e.snd, Feed: e.feed}); err != nil {
		return err
	}
	e.eng, err = rollout.New(db, e.reg, e.cat, e.dlv, &rollout.Options{Logger: quiet, Feed: e.feed})
	return err
}

// connectAll connects every device again (the registry marks them offline
// at a start).
func (e *roEnv) connectAll() {
	for i := range e.n {
		e.gens[i] = e.reg.Connected(deviceID(i), fleet.Conn{Remote: "127.0.0.1:1", Protocol: 5})
	}
}

func (e *roEnv) close() {
	if e.db != nil {
		_ = e.db.Close()
	}
	_ = os.RemoveAll(e.dir)
}

// commit is the Committer an operator's request uses (the admin API adds
// its audit record to the same transaction).
func (e *roEnv) commit(fn func(tx store.Tx) error) error {
	return e.db.Update(context.Background(), fn)
}

// create creates and starts the rollout of spec.
func (e *roEnv) createStart(spec string) (*rollout.View, *rollout.PlanView, error) {
	v, p, err := e.eng.Create("bench", []byte(spec), e.commit)
	if err != nil {
		return nil, nil, fmt.Errorf("create: %w", err)
	}
	if _, err := e.eng.Start("bench", v.ID, e.commit); err != nil {
		return nil, nil, fmt.Errorf("start: %w", err)
	}
	return v, p, nil
}

// pass runs one evaluation pass and returns how long it took.
func (e *roEnv) pass() (time.Duration, error) {
	t := time.Now()
	err := e.eng.Pass(context.Background())
	return time.Since(t), err
}

// inFlight returns rollout id's devices between offer and result, and its
// counts.
func (e *roEnv) inFlight(id string) (int, map[string]int, error) {
	v, err := e.eng.Get(id)
	if err != nil {
		return 0, nil, err
	}
	return v.Rate.InFlight, v.Counts, nil
}

// event sends device i's update event for rollout id, as the device hook
// does.
func (e *roEnv) event(i int, id string, code wire.EventCode) error {
	return e.dlv.Event(context.Background(), deviceID(i), wire.Event{Code: code, RolloutID: id})
}

// each runs f for every k in 0..n-1 on workers goroutines and returns the
// first error.
func each(n, workers int, f func(k int) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := int(next.Add(1)) - 1
				if k >= n {
					return
				}
				if err := f(k); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// realisticSpec is a rollout as the issue describes one: named waves,
// then percentages of the rest, thresholds, rate with a ramp, a window in
// each device's local time, version rules.
func realisticSpec(id string, rel release.Release) string {
	return fmt.Sprintf(`id: %s
name: bench %s
release: %s
selector:
  hardware: [esp32-v2, esp32-v3, esp32-c3]
  region: [eu, us, apac]
  connectivity: [wifi]
  version: ">=0.9.0 <1.2.0"
waves:
  - {name: canary,   groups: [canary]}
  - {name: internal, groups: [internal]}
  - {name: pilot,    groups: [pilot]}
  - {percent: [1, 5, 10, 25, 50, 100]}
bake: 1h
success: 95%%
thresholds:
  min_sample: 10
  rollback: {warn: 1%%, pause: 5%%}
  health:   {warn: 10%%, pause: 20%%}
rate: {per_minute: 1000, in_flight: 500, ramp: {factor: 2, every_succeeded: 50}}
window: {start: "02:00", end: "05:00", days: [mon, tue, wed, thu, fri]}
versions: {minor: true, major: false, downgrade: false}
install: in_window
probation: 10m
deadline: 24h
retries: 2
`, id, rel.Version, rel.ID)
}

// wideSpec offers half of the fleet at once: the large in-flight set.
func wideSpec(id string, rel release.Release, percent string) string {
	return fmt.Sprintf(`id: %s
release: %s
selector:
  hardware: [esp32-v2, esp32-v3]
  version: ">=1.0.0 <1.2.0"
waves:
  - {percent: [%s]}
install: immediately
`, id, rel.ID, percent)
}
