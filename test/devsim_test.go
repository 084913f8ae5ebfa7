package test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/cmd/devsim/sim"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/wire"
)

// Simulated devices (cmd/devsim/sim) against a real broker: registered
// through the admin API, releases uploaded and offered as operators do,
// and every result read back from the broker (device/list, device/get,
// device/timeline, /metrics), with the simulator's own view as a second
// witness.

// simTiming shortens the agent's timers so that an update takes about a
// second; the trial timeout stays long enough for a loaded machine.
var simTiming = sim.Timing{
	Heartbeat: 300 * time.Millisecond, RequestTimeout: time.Second, BackoffMin: 100 * time.Millisecond,
	BackoffMax: time.Second, TrialTimeout: 3 * time.Second, Probation: time.Second, Boot: 100 * time.Millisecond,
	CrashAfter: 300 * time.Millisecond, ConnectBackoffMin: 50 * time.Millisecond, ConnectBackoffMax: time.Second,
}

// simWorld is a broker with a trusted release key (agentWorld's) and
// simulated fleets against it.
type simWorld struct {
	*agentWorld
	keys manifest.KeySet
}

func newSimWorld(t *testing.T, mods ...func(*broker.Options)) *simWorld {
	t.Helper()
	mods = append([]func(*broker.Options){func(o *broker.Options) { o.AdminRate = -1 }}, mods...)
	w := newAgentWorld(t, mods...)
	keys, err := manifest.NewKeySet(&w.key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return &simWorld{agentWorld: w, keys: keys}
}

// registerSims registers devices with attributes (hardware esp32-v2 unless
// given) and returns their specs with tokens.
func (w *simWorld) registerSims(t *testing.T, ids []string, reg func(*sim.Registration)) []sim.DeviceSpec {
	t.Helper()
	regs := make([]sim.Registration, len(ids))
	for i, id := range ids {
		regs[i] = sim.Registration{ID: id, Hardware: "esp32-v2"}
		if reg != nil {
			reg(&regs[i])
		}
	}
	creds, err := sim.Register(context.Background(), w.admin(), regs)
	if err != nil {
		t.Fatal(err)
	}
	specs := make([]sim.DeviceSpec, len(creds))
	for i, c := range creds {
		if c.ID != ids[i] {
			t.Fatalf("registered %s as device %d, want %s", c.ID, i, ids[i])
		}
		specs[i] = sim.DeviceSpec{ID: c.ID, Token: c.Token}
	}
	return specs
}

// simFleet starts a simulated fleet of specs against the world's broker.
func (w *simWorld) simFleet(t *testing.T, specs []sim.DeviceSpec, mods ...func(*sim.Config)) *sim.Fleet {
	t.Helper()
	cfg := sim.Config{URL: w.url(), Keys: w.keys, Seed: 1, Timing: simTiming, Logger: testLogger()}
	for _, m := range mods {
		m(&cfg)
	}
	f, err := sim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Add(specs...); err != nil {
		t.Fatal(err)
	}
	f.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := f.Stop(ctx); err != nil {
			t.Errorf("stop the simulated fleet: %v", err)
		}
	})
	return f
}

// statuses returns the broker's view of every registered device
// (device/list, all pages).
func (w *simWorld) statuses(t testing.TB) map[string]fleet.Status {
	t.Helper()
	out := map[string]fleet.Status{}
	after := ""
	for {
		var res struct {
			Devices []fleet.View `json:"devices"`
			Next    string       `json:"next"`
		}
		if err := w.admin().Call(context.Background(), "device/list", map[string]any{"after": after, "limit": 500}, &res); err != nil {
			t.Fatal(err)
		}
		for _, v := range res.Devices {
			out[v.ID] = v.Status
		}
		if res.Next == "" {
			return out
		}
		after = res.Next
	}
}

// waitDevices polls the broker until cond holds for every device of ids.
func (w *simWorld) waitDevices(t *testing.T, within time.Duration, ids []string, cond func(id string, st fleet.Status) error) {
	t.Helper()
	eventually(t, within, func() error {
		all := w.statuses(t)
		var bad []string
		for _, id := range ids {
			if err := cond(id, all[id]); err != nil {
				bad = append(bad, id+": "+err.Error())
			}
		}
		if len(bad) > 0 {
			if len(bad) > 5 {
				bad = append(bad[:5], fmt.Sprintf("and %d more", len(bad)-5))
			}
			return fmt.Errorf("%d of %d devices: %s", len(bad), len(ids), strings.Join(bad, "; "))
		}
		return nil
	})
}

// onVersion: the device runs version, in OTA state state, after booting
// for reason.
func onVersion(version, state, bootReason string, slot uint8) func(string, fleet.Status) error {
	return func(_ string, st fleet.Status) error {
		if !st.Online || st.Firmware != version || st.OTAState != state || st.BootReason != bootReason || st.Slot != slot {
			return fmt.Errorf("online %v, firmware %q, state %q, boot reason %q, slot %d", st.Online, st.Firmware, st.OTAState, st.BootReason, st.Slot)
		}
		return nil
	}
}

// deviceEvents returns device id's events in its timeline for rollout (""
// for all), oldest first, each "type" or "type:error" without the
// "update." prefix. Progress (4) is left out and an event repeated at once
// is counted once: the agent sends one event at a time, so its events
// arrive in order, but at least once (one in flight at a reset or a cut
// comes again), and progress is not queued behind a waiting event. A
// download started again after a digest mismatch is "download.refetch".
func (w *simWorld) deviceEvents(id, rollout string) []string {
	var out []string
	for _, e := range w.timeline(id) {
		if e.Source != "device" || rollout != "" && e.RolloutID != rollout || e.Type == "update.download.progress" {
			continue
		}
		s := strings.TrimPrefix(e.Type, "update.")
		if s == "download.started" && e.Detail == "refetching" {
			s = "download.refetch"
		}
		if e.Error != "" {
			s += ":" + e.Error
		}
		if len(out) == 0 || out[len(out)-1] != s {
			out = append(out, s)
		}
	}
	return out
}

// progressEvents counts device id's progress events for rollout.
func (w *simWorld) progressEvents(id, rollout string) int {
	n := 0
	for _, e := range w.timeline(id) {
		if e.Source == "device" && e.RolloutID == rollout && e.Type == "update.download.progress" {
			n++
		}
	}
	return n
}

// healthyEvents is what a device reports for an update that succeeds
// (deviceEvents' way): download started, completed, install, reboot,
// health ok.
var healthyEvents = []string{"download.started", "download.completed", "install.started", "install.completed",
	"reboot.started", "reboot.completed", "health.ok"}

// Parts of healthyEvents.
var (
	downloadedEvents = healthyEvents[:2] // up to download.completed
	rebootEvents     = healthyEvents[:5] // up to reboot.started
)

func ids(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%03d", prefix, i+1)
	}
	return out
}

// TestDevsimHealthyFleet: 50 simulated devices take a release offered to
// all of them and end committed on it, as the broker's registry and each
// device's timeline show; each reported every step in the agent's order.
func TestDevsimHealthyFleet(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t)
	devs := ids("fleet-", 50)
	specs := w.registerSims(t, devs, nil)
	w.simFleet(t, specs)
	w.waitDevices(t, 30*time.Second, devs, onVersion("1.0.0", "idle", "power_on", 0))

	fw := makeFirmware(t, w.key, "1.1.0", []string{"esp32-v2"}, 40*1024)
	rollout := w.offer(w.release(fw).ID, devs...)
	w.waitDevices(t, 60*time.Second, devs, onVersion("1.1.0", "committed", "ota_reboot", 1))
	for _, id := range devs {
		if got := w.deviceEvents(id, rollout); !slices.Equal(got, healthyEvents) {
			t.Errorf("%s reported %v\nwant %v", id, got, healthyEvents)
		}
		if n := w.progressEvents(id, rollout); n < 1 || n > 9 {
			t.Errorf("%s reported progress %d times", id, n)
		}
		// after the commit the agent checks for the next update, and the
		// offer it gets again (the broker still has it) completes the check
		eventually(t, 10*time.Second, func() error {
			if got := w.deviceEvents(id, ""); !slices.Equal(got[len(got)-2:], []string{"check.started", "check.completed"}) {
				return fmt.Errorf("%s: no check after the commit: %v", id, got)
			}
			return nil
		})
	}
	w.noRefusals()
}

// offerWith offers a release with more request fields (install_mode...)
// and returns the rollout ID.
func (w *simWorld) offerWith(t *testing.T, release string, devices []string, extra map[string]any) string {
	t.Helper()
	req := map[string]any{"release": release, "devices": devices}
	for k, v := range extra {
		req[k] = v
	}
	var res struct {
		RolloutID string `json:"rollout_id"`
		Results   []struct {
			Device string
			OK     bool
			Error  string
		}
	}
	if err := w.admin().Call(context.Background(), "offer/create", req, &res); err != nil {
		t.Fatal(err)
	}
	for _, r := range res.Results {
		if !r.OK {
			t.Fatalf("offer to %s: %s", r.Device, r.Error)
		}
	}
	return res.RolloutID
}

// command sends verb to devices and fails unless each was reached.
func (w *simWorld) command(t *testing.T, verb, rollout string, devices ...string) {
	t.Helper()
	var res struct {
		Results []struct {
			Device string
			OK     bool
			Error  string
		}
	}
	if err := w.admin().Call(context.Background(), "command/send", map[string]any{"verb": verb, "rollout_id": rollout, "devices": devices}, &res); err != nil {
		t.Fatal(err)
	}
	for _, r := range res.Results {
		if !r.OK {
			t.Fatalf("%s to %s: %s", verb, r.Device, r.Error)
		}
	}
}

// waitEvents polls id's timeline until its events for rollout are want.
func (w *simWorld) waitEvents(t *testing.T, within time.Duration, id, rollout string, want ...string) {
	t.Helper()
	eventually(t, within, func() error {
		if got := w.deviceEvents(id, rollout); !slices.Equal(got, want) {
			return fmt.Errorf("%s reported %v\nwant %v", id, got, want)
		}
		return nil
	})
}

// TestDevsimProfiles: one device of each update profile takes the same
// release; each behaves as its profile says, as the broker sees it.
func TestDevsimProfiles(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t)
	profiles := []sim.Profile{sim.Healthy, sim.BadHealth, sim.BootLoop, sim.Rollback, sim.Silent, sim.Mute,
		sim.Slow, sim.WrongHardware, sim.TooOld}
	var devs []string
	for _, p := range profiles {
		devs = append(devs, "p-"+p.String())
	}
	specs := w.registerSims(t, devs, nil) // all registered as esp32-v2
	for i := range specs {
		specs[i].Profile = profiles[i]
	}
	const size = 40 * 1024
	f := w.simFleet(t, specs, func(c *sim.Config) { c.SlowRate = 10 * 1024 })
	w.waitDevices(t, 30*time.Second, devs, func(id string, st fleet.Status) error {
		want := "1.0.0"
		if id == "p-too-old" {
			want = sim.DefaultOldVersion // a version that needs a stepping stone
		}
		if !st.Online || st.Firmware != want || st.BirthAt.IsZero() {
			return fmt.Errorf("online %v, firmware %q", st.Online, st.Firmware)
		}
		return nil
	})
	if st := w.status("p-wrong-hardware"); st.ReportedHardware != sim.DefaultWrongHardware {
		t.Fatalf("wrong-hardware reports %q", st.ReportedHardware)
	}

	fw := makeFirmware(t, w.key, "1.1.0", []string{"esp32-v2"}, size)
	rollout := w.offer(w.release(fw).ID, devs...)

	// The slow link is seen in the middle of its download: its heartbeats
	// carry an offset between 0 and the image's size.
	eventually(t, 30*time.Second, func() error {
		st := w.status("p-slow")
		if st.OTAState != "downloading" || st.DownloadOffset == nil || *st.DownloadOffset == 0 || *st.DownloadOffset >= size {
			return fmt.Errorf("state %q, offset %v", st.OTAState, st.DownloadOffset)
		}
		return nil
	})

	committed := onVersion("1.1.0", "committed", "ota_reboot", 1)
	rolledBack := onVersion("1.0.0", "rolled_back", "rollback", 0)
	w.waitDevices(t, 60*time.Second, []string{"p-healthy", "p-slow", "p-too-old"}, committed)
	w.waitDevices(t, 60*time.Second, []string{"p-bad-health", "p-boot-loop", "p-rollback"}, rolledBack)
	for _, id := range []string{"p-healthy", "p-slow", "p-too-old"} {
		w.waitEvents(t, 10*time.Second, id, rollout, healthyEvents...)
	}
	reboot := rebootEvents
	// The new image fails its application check: the trial times out.
	w.waitEvents(t, 10*time.Second, "p-bad-health", rollout, append(slices.Clone(reboot), "reboot.completed",
		"health.failed:health_check", "rollback.triggered:health_check", "rollback.completed:health_check")...)
	// The new image crashes before the agent runs: the bootloader reverts.
	w.waitEvents(t, 10*time.Second, "p-rollback", rollout, append(slices.Clone(reboot),
		"rollback.triggered:boot_failure", "rollback.completed:boot_failure")...)
	// The new image crash-loops: it comes up in trial again and again
	// (a birth each time), until the agent's reboot trigger rolls it back
	// at boot; the 12 and 13 it queued then are kept in its kv store and
	// sent after the rolled-back image connects, with 14.
	w.waitEvents(t, 10*time.Second, "p-boot-loop", rollout, append(slices.Clone(reboot), "reboot.completed",
		"health.failed:boot_failure", "rollback.triggered:boot_failure", "rollback.completed:boot_failure")...)
	st := w.status("p-boot-loop")
	t.Logf("boot-loop: %d connects", st.Connects)
	if st.Connects < 4 {
		t.Errorf("boot-loop connected %d times: the first, at least two trial boots and the rolled-back one", st.Connects)
	}
	if d, _ := f.Device("p-boot-loop"); d.Births != d.Connects || d.Births < 4 {
		t.Errorf("boot-loop: %d births for %d connects", d.Births, d.Connects)
	}
	// The wrong hardware refuses the offer, after the signature check.
	w.waitEvents(t, 10*time.Second, "p-wrong-hardware", rollout, "rejected:hardware_mismatch")
	if st := w.status("p-wrong-hardware"); st.Firmware != "1.0.0" || st.OTAState != "idle" {
		t.Errorf("wrong-hardware: firmware %q, state %q", st.Firmware, st.OTAState)
	}

	// Silent never comes back after its reboot; mute comes back on a
	// new connection and sends nothing, not even a birth. Both were last
	// heard of in state rebooting (the heartbeat of that state change);
	// the events still queued at the reboot never come.
	for _, id := range []string{"p-silent", "p-mute"} {
		eventually(t, 20*time.Second, func() error {
			if st := w.status(id); st.OTAState != "rebooting" {
				return fmt.Errorf("%s: state %q", id, st.OTAState)
			}
			return nil
		})
		if got := w.deviceEvents(id, rollout); len(got) == 0 || len(got) > len(reboot) || !slices.Equal(got, reboot[:len(got)]) {
			t.Errorf("%s reported %v, want a beginning of %v", id, got, reboot)
		}
	}
	var muteBeats uint64
	eventually(t, 20*time.Second, func() error {
		st := w.status("p-mute")
		if !st.Online || st.Connects != 2 {
			return fmt.Errorf("mute: online %v, %d connects", st.Online, st.Connects)
		}
		muteBeats = st.Heartbeats
		return nil
	})
	// by now every other device has finished; wait for a few more
	// heartbeats of the healthy one, then look again
	before := w.status("p-healthy").Heartbeats
	eventually(t, 20*time.Second, func() error {
		if n := w.status("p-healthy").Heartbeats; n < before+3 {
			return fmt.Errorf("healthy: %d heartbeats since", n-before)
		}
		return nil
	})
	if st := w.status("p-mute"); st.Heartbeats != muteBeats || st.Firmware != "1.0.0" || !st.Online {
		t.Errorf("mute: %d heartbeats (was %d), firmware %q, online %v", st.Heartbeats, muteBeats, st.Firmware, st.Online)
	}
	if st := w.status("p-silent"); st.Online || st.Connects != 1 {
		t.Errorf("silent: online %v after %d connects", st.Online, st.Connects)
	}
	if d, _ := f.Device("p-silent"); !d.Dead || d.Connected {
		t.Errorf("silent, as the simulator sees it: %+v", d)
	}
	w.noRefusals()
}

// TestDevsimOfflineWindow: a device whose offline window (in its local
// time, UTC+05:30) starts four seconds from now loses its connection then
// and comes back when the window ends; another device stays connected.
func TestDevsimOfflineWindow(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t)
	devs := []string{"win-offline", "win-control"}
	specs := w.registerSims(t, devs, nil)
	const offset = 330
	local := time.Now().UTC().Add(offset * time.Minute)
	tod := local.Sub(time.Date(local.Year(), local.Month(), local.Day(), 0, 0, 0, 0, time.UTC))
	win := sim.Window{Start: (tod + 4*time.Second) % (24 * time.Hour), End: (tod + 6*time.Second) % (24 * time.Hour)}
	specs[0].Profile, specs[0].UTCOffsetMinutes, specs[0].Offline = sim.OfflineWindow, offset, &win
	specs[1].UTCOffsetMinutes = offset
	f := w.simFleet(t, specs)
	eventually(t, 30*time.Second, func() error {
		st := w.status("win-offline")
		if st.Connects < 1 || st.Online || st.DisconnectReason != fleet.ReasonLost {
			return fmt.Errorf("online %v after %d connects (%q)", st.Online, st.Connects, st.DisconnectReason)
		}
		if st.UTCOffsetMinutes != offset {
			return fmt.Errorf("birth says UTC offset %d", st.UTCOffsetMinutes)
		}
		return nil
	})
	eventually(t, 30*time.Second, func() error {
		if st := w.status("win-offline"); !st.Online || st.Connects != 2 {
			return fmt.Errorf("online %v after %d connects", st.Online, st.Connects)
		}
		return nil
	})
	if st := w.status("win-control"); !st.Online || st.Connects != 1 {
		t.Errorf("control: online %v after %d connects", st.Online, st.Connects)
	}
	// the same boot: a link that went away, not a reboot
	if d, _ := f.Device("win-offline"); d.BootReason != wire.BootPowerOn || d.BootsSinceCommit != 1 || d.Births != 2 {
		t.Errorf("offline window device: %+v", d)
	}
}

// signedFirmware signs an image with the manifest fields m gives (size and
// digest measured).
func signedFirmware(t testing.TB, key *ecdsa.PrivateKey, m manifest.Manifest, size int) firmware {
	t.Helper()
	img := make([]byte, size)
	_, _ = rand.Read(img)
	img[0] = 0xe9
	m.ImageSize, m.ImageDigest, _ = manifest.HashImage(bytes.NewReader(img))
	if m.Hardware == nil {
		m.Hardware = []string{"esp32-v2"}
	}
	if m.Sequence == 0 {
		m.Sequence = uint64(time.Now().UnixNano())
	}
	signed, err := manifest.Sign(&m, key)
	if err != nil {
		t.Fatal(err)
	}
	return firmware{image: img, signed: signed, m: m}
}

// TestDevsimOfferChecks: devices check an offer as the agent does, in its
// order, and refuse it with event 15, the error code and the agent's
// detail text: a key they do not trust, the version policy, the secure
// version, the sequence, the bootloader, the deadline.
func TestDevsimOfferChecks(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t)
	devs := []string{"chk-key", "chk-same", "chk-down", "chk-downok", "chk-secure", "chk-seq", "chk-boot", "chk-late"}
	specs := w.registerSims(t, devs, nil)
	for i := range specs {
		switch specs[i].ID {
		case "chk-downok":
			specs[i].AllowDowngrade = true
		case "chk-secure":
			specs[i].SecureVersion = 3
		}
	}
	// chk-key trusts only another key
	other, _ := newKey(t)
	otherKeys, _ := manifest.NewKeySet(&other.PublicKey)
	w.simFleet(t, specs[:1], func(c *sim.Config) { c.Keys = otherKeys })
	w.simFleet(t, specs[1:])
	w.waitDevices(t, 30*time.Second, devs, onVersion("1.0.0", "idle", "power_on", 0))

	rel := func(m manifest.Manifest) string { return w.release(signedFirmware(t, w.key, m, 8*1024)).ID }
	newer := rel(manifest.Manifest{Version: "1.1.0", SecureVersion: 2})
	same := rel(manifest.Manifest{Version: "1.0.0"})
	older := rel(manifest.Manifest{Version: "0.5.0"})
	seqHigh := rel(manifest.Manifest{Version: "1.2.0", Sequence: 2_000_000_000})
	seqLow := rel(manifest.Manifest{Version: "1.3.0", Sequence: 1_000_000_000})
	bootNew := rel(manifest.Manifest{Version: "1.1.1", MinBootloader: "3.0.0"})

	type check struct {
		id, release string
		extra       map[string]any
		want        []string // event types
		detail      string   // of the last event
	}
	for _, c := range []check{
		{"chk-key", newer, nil, []string{"rejected:signature"}, "unknown key"},
		{"chk-same", same, nil, []string{"rejected:version_policy"}, "same version"},
		{"chk-down", older, nil, []string{"rejected:version_policy"}, "downgrade"},
		{"chk-secure", newer, nil, []string{"rejected:secure_version"}, ""},
		{"chk-boot", bootNew, nil, []string{"rejected:hardware_mismatch"}, "bootloader too old"},
		{"chk-late", newer, map[string]any{"deadline": uint64(time.Now().Add(-time.Minute).Unix())}, []string{"rejected"}, "deadline"},
	} {
		rollout := w.offerWith(t, c.release, []string{c.id}, c.extra)
		w.waitEvents(t, 20*time.Second, c.id, rollout, c.want...)
		tl := w.timeline(c.id)
		if last := tl[len(tl)-1]; last.Detail != c.detail || last.Version == "" {
			t.Errorf("%s: detail %q, version %q; want detail %q", c.id, last.Detail, last.Version, c.detail)
		}
	}
	// a downgrade the device allows is taken
	rollout := w.offer(older, "chk-downok")
	w.waitDevices(t, 30*time.Second, []string{"chk-downok"}, onVersion("0.5.0", "committed", "ota_reboot", 1))
	if err := hasEvents(w.timeline("chk-downok"), rollout, "update.download.started", "update.health.ok"); err != nil {
		t.Error(err)
	}

	// a sequence lower than the last accepted is refused, even for a newer
	// version
	w.offer(seqHigh, "chk-seq")
	w.waitDevices(t, 30*time.Second, []string{"chk-seq"}, onVersion("1.2.0", "committed", "ota_reboot", 1))
	rollout = w.offer(seqLow, "chk-seq")
	w.waitEvents(t, 20*time.Second, "chk-seq", rollout, "rejected:version_policy")
	if tl := w.timeline("chk-seq"); tl[len(tl)-1].Detail != "sequence" {
		t.Errorf("chk-seq: %+v", tl[len(tl)-1])
	}
	w.noRefusals()
}

// TestDevsimInstallOnCommand: with install mode 1 a device downloads and
// verifies the image, then waits (heartbeats in state verified, no install
// event) until the install command comes; one told to install while still
// downloading installs as soon as it has verified.
func TestDevsimInstallOnCommand(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t)
	devs := []string{"cmd-wait", "cmd-early"}
	specs := w.registerSims(t, devs, nil)
	specs[1].Profile, specs[1].SlowRate = sim.Slow, 8*1024
	w.simFleet(t, specs)
	w.waitDevices(t, 30*time.Second, devs, onVersion("1.0.0", "idle", "power_on", 0))
	const size = 40 * 1024
	rel := w.release(makeFirmware(t, w.key, "1.1.0", []string{"esp32-v2"}, size)).ID
	rollout := w.offerWith(t, rel, devs, map[string]any{"install_mode": "on_command"})

	downloaded := downloadedEvents
	w.waitDevices(t, 30*time.Second, devs[:1], func(_ string, st fleet.Status) error {
		if st.OTAState != "verified" {
			return fmt.Errorf("state %q", st.OTAState)
		}
		return nil
	})
	w.waitEvents(t, 10*time.Second, "cmd-wait", rollout, downloaded...)
	// it waits: more heartbeats, still verified, still no install
	before := w.status("cmd-wait").Heartbeats
	eventually(t, 20*time.Second, func() error {
		if st := w.status("cmd-wait"); st.Heartbeats < before+3 || st.OTAState != "verified" {
			return fmt.Errorf("%d heartbeats since, state %q", st.Heartbeats-before, st.OTAState)
		}
		return nil
	})
	if got := w.deviceEvents("cmd-wait", rollout); !slices.Equal(got, downloaded) {
		t.Fatalf("before the install command: %v", got)
	}
	w.command(t, "install", rollout, "cmd-wait")
	w.waitDevices(t, 30*time.Second, devs[:1], onVersion("1.1.0", "committed", "ota_reboot", 1))
	w.waitEvents(t, 10*time.Second, "cmd-wait", rollout, healthyEvents...)

	// the slow one gets the command in the middle of its download
	eventually(t, 30*time.Second, func() error {
		if st := w.status("cmd-early"); st.DownloadOffset == nil || *st.DownloadOffset == 0 {
			return fmt.Errorf("state %q, offset %v", st.OTAState, st.DownloadOffset)
		}
		return nil
	})
	w.command(t, "install", rollout, "cmd-early")
	w.waitDevices(t, 30*time.Second, devs[1:], onVersion("1.1.0", "committed", "ota_reboot", 1))
	w.waitEvents(t, 10*time.Second, "cmd-early", rollout, healthyEvents...)
	w.noRefusals()
}

// TestDevsimCancel: the empty offer (offer/cancel) ends a download or a
// verified image not yet installed, the cancel command too; each is
// reported as a cancelled download and the device is idle on its old
// version. A cancel for another rollout is ignored.
func TestDevsimCancel(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t)
	devs := []string{"can-dl", "can-cmd", "can-verified"}
	specs := w.registerSims(t, devs, nil)
	specs[0].Profile, specs[0].SlowRate = sim.Slow, 4*1024
	f := w.simFleet(t, specs)
	w.waitDevices(t, 30*time.Second, devs, onVersion("1.0.0", "idle", "power_on", 0))
	const size = 40 * 1024
	rel := w.release(makeFirmware(t, w.key, "1.1.0", []string{"esp32-v2"}, size)).ID
	rollout := w.offerWith(t, rel, devs, map[string]any{"install_mode": "on_command"})

	// withdrawn in the middle of a download
	eventually(t, 30*time.Second, func() error {
		if st := w.status("can-dl"); st.DownloadOffset == nil || *st.DownloadOffset == 0 {
			return fmt.Errorf("state %q, offset %v", st.OTAState, st.DownloadOffset)
		}
		return nil
	})
	if err := w.admin().Call(context.Background(), "offer/cancel", map[string]any{"devices": []string{"can-dl"}}, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, func() error {
		got := w.deviceEvents("can-dl", rollout)
		if len(got) < 2 || got[0] != "download.started" || got[len(got)-1] != "download.failed:cancelled" || slices.Contains(got, "download.completed") {
			return fmt.Errorf("can-dl reported %v", got)
		}
		return nil
	})

	// verified, then the cancel command; a cancel about another rollout
	// first, which changes nothing
	w.waitDevices(t, 30*time.Second, devs[1:], func(_ string, st fleet.Status) error {
		if st.OTAState != "verified" {
			return fmt.Errorf("state %q", st.OTAState)
		}
		return nil
	})
	w.command(t, "cancel", "another-rollout", "can-cmd")
	w.command(t, "cancel", rollout, "can-cmd")
	// and the empty offer for a verified image
	if err := w.admin().Call(context.Background(), "offer/cancel", map[string]any{"devices": []string{"can-verified"}}, nil); err != nil {
		t.Fatal(err)
	}
	for id, detail := range map[string]string{"can-dl": "withdrawn", "can-cmd": "command", "can-verified": "withdrawn"} {
		eventually(t, 20*time.Second, func() error {
			tl := w.timeline(id)
			last := tl[len(tl)-1]
			if last.Type != "update.download.failed" || last.Error != "cancelled" || last.Detail != detail {
				return fmt.Errorf("%s: last event %+v", id, last)
			}
			return nil
		})
	}
	w.waitEvents(t, 10*time.Second, "can-cmd", rollout, append(slices.Clone(downloadedEvents), "download.failed:cancelled")...)
	w.waitDevices(t, 20*time.Second, devs, onVersion("1.0.0", "idle", "power_on", 0))
	for _, id := range devs {
		if d, _ := f.Device(id); d.OTAState != wire.StateIdle || d.Version != "1.0.0" || d.Slot != 0 {
			t.Errorf("%s, as the simulator sees it: %+v", id, d)
		}
	}
	w.noRefusals()
}

// TestDevsimCommands: the reboot command reboots (boot reason software, a
// new birth); the check command reports check started and, as the offer
// comes again, check completed.
func TestDevsimCommands(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t)
	devs := []string{"cmdx-1"}
	specs := w.registerSims(t, devs, nil)
	w.simFleet(t, specs)
	w.waitDevices(t, 30*time.Second, devs, onVersion("1.0.0", "idle", "power_on", 0))
	w.command(t, "reboot", "", "cmdx-1")
	eventually(t, 20*time.Second, func() error {
		st := w.status("cmdx-1")
		if !st.Online || st.Connects != 2 || st.BootReason != "software" || st.BootsSinceCommit != 2 {
			return fmt.Errorf("online %v, %d connects, boot reason %q, boots since commit %d", st.Online, st.Connects, st.BootReason, st.BootsSinceCommit)
		}
		return nil
	})
	w.command(t, "check", "", "cmdx-1")
	w.waitEvents(t, 10*time.Second, "cmdx-1", "", "check.started")
	// with an offer waiting: the check completes when it arrives
	rel := w.release(makeFirmware(t, w.key, "1.0.0", []string{"esp32-v2"}, 4096)).ID
	w.offer(rel, "cmdx-1") // the same version: refused
	w.waitEvents(t, 10*time.Second, "cmdx-1", "", "check.started", "check.completed", "rejected:version_policy")
	w.command(t, "check", "", "cmdx-1")
	w.waitEvents(t, 10*time.Second, "cmdx-1", "", "check.started", "check.completed", "rejected:version_policy",
		"check.started", "check.completed", "rejected:version_policy")
}

// blockTamper rewrites block messages the broker writes to one client: the
// n-th it drops (another topic, which the device ignores) or flips (the
// last byte of its data), or with every set, each block at offset every
// it flips.
type blockTamper struct {
	mqtt.HookBase
	client string
	n      int
	flip   bool
	every  int64 // -1: none

	mu   sync.Mutex
	seen int
	done int
}

func (h *blockTamper) ID() string           { return "test-block-tamper" }
func (h *blockTamper) Provides(b byte) bool { return b == mqtt.OnPacketEncode }

// OnPacketEncode implements mqtt.Hook.
func (h *blockTamper) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if cl.ID != h.client || pk.FixedHeader.Type != packets.Publish || pk.TopicName != "dm/"+h.client+"/ota/blk" {
		return pk
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seen++
	if h.every >= 0 {
		if b, _, err := wire.DecodeBlock(pk.Payload, 1<<20); err != nil || b == nil || int64(b.Offset) != h.every {
			return pk
		}
	} else if h.seen != h.n {
		return pk
	}
	h.done++
	if h.flip {
		p := slices.Clone(pk.Payload)
		p[len(p)-1] ^= 0xff
		pk.Payload = p
	} else {
		pk.TopicName = "dm/" + h.client + "/dropped"
	}
	return pk
}

func (h *blockTamper) tampered() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.done
}

// refetches counts device id's downloads started again for rollout.
func (w *simWorld) refetches(id, rollout string) int {
	n := 0
	for _, e := range w.timeline(id) {
		if e.Source == "device" && e.RolloutID == rollout && e.Type == "update.download.started" && e.Detail == "refetching" {
			n++
		}
	}
	return n
}

// TestDevsimBlocks: the windowed block fetch against what the broker does
// and what the network may do: rate-limited requests are retried after the
// time the broker names, the broker's window (offer key 6) is honoured
// from the first request on, a lost block is asked for again from the
// first missing offset (and fewer per request from then on), a corrupted
// block fails the digest check before anything is installed.
func TestDevsimBlocks(t *testing.T) {
	t.Parallel()
	const size = 64 * 1024
	start := func(t *testing.T, timing *sim.Timing, mods ...func(*broker.Options)) (*simWorld, string, string) {
		w := newSimWorld(t, mods...)
		specs := w.registerSims(t, []string{"blk-1"}, nil)
		w.simFleet(t, specs, func(c *sim.Config) {
			if timing != nil {
				c.Timing = *timing
			}
		})
		w.waitDevices(t, 30*time.Second, []string{"blk-1"}, onVersion("1.0.0", "idle", "power_on", 0))
		return w, w.release(makeFirmware(t, w.key, "1.1.0", []string{"esp32-v2"}, size)).ID, "blk-1"
	}

	t.Run("rate-limited", func(t *testing.T) {
		t.Parallel()
		// 16 KiB/s with a burst of one window of 4 blocks of 4 KiB: the
		// device's requests are refused until the bucket refills.
		w, rel, id := start(t, nil, func(o *broker.Options) { o.DeviceRate, o.MaxBlockSize, o.MaxWindow = 16*1024, 4096, 4 })
		rollout := w.offer(rel, id)
		w.waitDevices(t, 60*time.Second, []string{id}, onVersion("1.1.0", "committed", "ota_reboot", 1))
		w.waitEvents(t, 10*time.Second, id, rollout, healthyEvents...)
		if n, err := w.metric(`otamq_block_requests_total{result="rate_limited"}`); err != nil || atoi(n) == 0 {
			t.Fatalf("no request was rate limited (%s, %v)", n, err)
		}
		w.noRefusals()
	})

	t.Run("broker-window", func(t *testing.T) {
		t.Parallel()
		timing := simTiming
		timing.Window = 8
		w, rel, id := start(t, &timing, func(o *broker.Options) { o.MaxWindow = 2 })
		w.offer(rel, id)
		w.waitDevices(t, 60*time.Second, []string{id}, onVersion("1.1.0", "committed", "ota_reboot", 1))
		reqs := w.gets.requests(id)
		if len(reqs) != size/4096/2 {
			t.Errorf("%d block requests for %d blocks, 2 at a time", len(reqs), size/4096)
		}
		for i, r := range reqs {
			if r.count != 2 || r.offset != uint64(i*2*4096) {
				t.Fatalf("request %d: offset %d, count %d: %+v", i, r.offset, r.count, reqs)
			}
		}
	})

	t.Run("lost-block", func(t *testing.T) {
		t.Parallel()
		drop := &blockTamper{client: "blk-1", n: 3, every: -1}
		w, rel, id := start(t, nil)
		if err := w.Server().AddHook(drop, nil); err != nil {
			t.Fatal(err)
		}
		w.offer(rel, id)
		w.waitDevices(t, 60*time.Second, []string{id}, onVersion("1.1.0", "committed", "ota_reboot", 1))
		if drop.tampered() != 1 {
			t.Fatal("no block was dropped")
		}
		// 4 blocks asked for, the third lost: after the timeout the device
		// asks again from the third, for 2; each full answer grows the
		// window back by one, up to its 4
		reqs := w.gets.requests(id)
		if len(reqs) < 3 || reqs[0].offset != 0 || reqs[0].count != 4 || reqs[1].offset != 2*4096 || reqs[1].count != 2 || reqs[2].count != 3 {
			t.Fatalf("requests %+v", reqs)
		}
		grown := false
		for _, r := range reqs[1:] {
			if r.count > 4 {
				t.Fatalf("asked for %d blocks, more than its window: %+v", r.count, reqs)
			}
			grown = grown || r.count == 4
		}
		if !grown {
			t.Fatalf("the window did not grow back: %+v", reqs)
		}
	})

	// A corrupted block goes into the hash: the digest is wrong at the
	// end, nothing is installed, and the image is fetched again (event 3,
	// "refetching").
	t.Run("corrupt-block", func(t *testing.T) {
		t.Parallel()
		flip := &blockTamper{client: "blk-1", n: 5, flip: true, every: -1}
		w, rel, id := start(t, nil)
		if err := w.Server().AddHook(flip, nil); err != nil {
			t.Fatal(err)
		}
		rollout := w.offer(rel, id)
		w.waitDevices(t, 60*time.Second, []string{id}, onVersion("1.1.0", "committed", "ota_reboot", 1))
		w.waitEvents(t, 10*time.Second, id, rollout, append([]string{"download.started", "download.refetch"}, healthyEvents[1:]...)...)
		if n := w.refetches(id, rollout); n != 1 || flip.tampered() != 1 {
			t.Fatalf("%d refetches for %d corrupted blocks", n, flip.tampered())
		}
	})

	// Corrupted every time: three refetches, then the download fails.
	t.Run("corrupt-always", func(t *testing.T) {
		t.Parallel()
		flip := &blockTamper{client: "blk-1", flip: true, every: 4 * 4096}
		w, rel, id := start(t, nil)
		if err := w.Server().AddHook(flip, nil); err != nil {
			t.Fatal(err)
		}
		rollout := w.offer(rel, id)
		w.waitEvents(t, 30*time.Second, id, rollout, "download.started", "download.refetch", "download.failed:digest_mismatch")
		w.waitDevices(t, 20*time.Second, []string{id}, onVersion("1.0.0", "failed", "power_on", 0))
		if n := w.refetches(id, rollout); n != sim.DefaultDigestRetries || flip.tampered() != sim.DefaultDigestRetries+1 {
			t.Fatalf("%d refetches for %d corrupted blocks", n, flip.tampered())
		}
	})
}

// TestDevsimBadImage: a healthy fleet takes a release whose image is
// agent-c's simulated image of a bad build (its header says how it
// behaves): each device behaves as the header says, as the C agent does
// with the same image (TestAgentEndToEnd).
func TestDevsimBadImage(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name      string
		behaviour byte
		events    []string
	}{
		{"health-fail", simHealthFail, []string{"reboot.completed", "health.failed:health_check",
			"rollback.triggered:health_check", "rollback.completed:health_check"}},
		{"crash", simCrash, []string{"rollback.triggered:boot_failure", "rollback.completed:boot_failure"}},
		{"hang", simHang, []string{"rollback.triggered:boot_failure", "rollback.completed:boot_failure"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			w := newSimWorld(t)
			devs := ids("img-", 3)
			w.simFleet(t, w.registerSims(t, devs, nil))
			w.waitDevices(t, 30*time.Second, devs, onVersion("1.0.0", "idle", "power_on", 0))
			rollout := w.offer(w.release(simFirmware(t, w.key, "1.1.0", c.behaviour, 40*1024)).ID, devs...)
			w.waitDevices(t, 60*time.Second, devs, onVersion("1.0.0", "rolled_back", "rollback", 0))
			for _, id := range devs {
				w.waitEvents(t, 10*time.Second, id, rollout, append(slices.Clone(rebootEvents), c.events...)...)
			}
		})
	}
}

// outcome is what the broker knows of a device after an update.
type outcome struct {
	Firmware, State, BootReason string
	Slot                        uint8
	UTCOffset                   int16
	RSSI                        int16
	FreeHeap                    uint32
	Events                      string
}

// seededRun runs 40 devices whose profiles and time zones come from seed
// through one update and returns each device's profile and outcome.
func seededRun(t *testing.T, seed uint64) (map[string]sim.Profile, map[string]outcome) {
	w := newSimWorld(t)
	devs := ids("seed-", 40)
	specs := w.registerSims(t, devs, nil)
	mix, err := sim.ParseMix("healthy=50,bad-health=10,boot-loop=10,rollback=10,wrong-hardware=10,too-old=10", sim.ParseProfile)
	if err != nil {
		t.Fatal(err)
	}
	zones, err := sim.ParseMix("0,60,-300,330", func(s string) (int16, error) {
		n, err := strconv.Atoi(s)
		return int16(n), err
	})
	if err != nil {
		t.Fatal(err)
	}
	profiles := map[string]sim.Profile{}
	prof, zone := mix.Assign(len(specs), seed, "profile"), zones.Assign(len(specs), seed, "utc-offset")
	for i := range specs {
		specs[i].Profile, specs[i].UTCOffsetMinutes = prof[i], zone[i]
		profiles[specs[i].ID] = prof[i]
	}
	w.simFleet(t, specs, func(c *sim.Config) { c.Seed = seed })
	w.waitDevices(t, 30*time.Second, devs, func(_ string, st fleet.Status) error {
		if !st.Online || st.Heartbeats == 0 {
			return fmt.Errorf("online %v, %d heartbeats", st.Online, st.Heartbeats)
		}
		return nil
	})
	rollout := w.offer(w.release(makeFirmware(t, w.key, "1.1.0", []string{"esp32-v2"}, 24*1024)).ID, devs...)
	w.waitDevices(t, 90*time.Second, devs, func(id string, st fleet.Status) error {
		want := map[sim.Profile]string{sim.Healthy: "committed", sim.TooOld: "committed", sim.BadHealth: "rolled_back",
			sim.BootLoop: "rolled_back", sim.Rollback: "rolled_back", sim.WrongHardware: "idle"}[profiles[id]]
		if !st.Online || st.OTAState != want {
			return fmt.Errorf("online %v, state %q, want %q", st.Online, st.OTAState, want)
		}
		return nil
	})
	out := map[string]outcome{}
	for id, st := range w.statuses(t) {
		var evs []string
		eventually(t, 10*time.Second, func() error {
			evs = w.deviceEvents(id, rollout)
			if len(evs) == 0 || !strings.HasPrefix(evs[len(evs)-1], "rollback.completed") && evs[len(evs)-1] != "health.ok" && !strings.HasPrefix(evs[len(evs)-1], "rejected") {
				return fmt.Errorf("%s: events so far %v", id, evs)
			}
			return nil
		})
		out[id] = outcome{st.Firmware, st.OTAState, st.BootReason, st.Slot, st.UTCOffsetMinutes, st.RSSI, st.FreeHeap, strings.Join(evs, " ")}
	}
	return profiles, out
}

// TestDevsimReproducible: two runs with the same seed give every device
// the same profile, time zone, RSSI and free heap, and end the same way
// with the same events; another seed gives another fleet.
func TestDevsimReproducible(t *testing.T) {
	t.Parallel()
	type run struct {
		profiles map[string]sim.Profile
		out      map[string]outcome
	}
	runs := make([]run, 3)
	t.Run("runs", func(t *testing.T) {
		for i, seed := range []uint64{7, 7, 8} {
			t.Run(fmt.Sprintf("seed-%d-%d", seed, i), func(t *testing.T) {
				t.Parallel()
				runs[i].profiles, runs[i].out = seededRun(t, seed)
			})
		}
	})
	if t.Failed() {
		return
	}
	a, b, c := runs[0], runs[1], runs[2]
	if len(a.out) != 40 || len(b.out) != 40 || len(c.out) != 40 {
		t.Fatalf("outcomes of %d, %d, %d devices", len(a.out), len(b.out), len(c.out))
	}
	if !maps.Equal(a.profiles, b.profiles) {
		t.Errorf("the same seed assigned other profiles:\n%v\n%v", a.profiles, b.profiles)
	}
	for id, o := range a.out {
		if b.out[id] != o {
			t.Errorf("%s: same seed, another outcome:\n%+v\n%+v", id, o, b.out[id])
		}
	}
	if maps.Equal(a.profiles, c.profiles) {
		t.Errorf("seeds 7 and 8 assigned the same profiles")
	}
	same := 0
	for id, o := range a.out {
		if c.out[id].RSSI == o.RSSI && c.out[id].FreeHeap == o.FreeHeap {
			same++
		}
	}
	if same == len(a.out) {
		t.Errorf("seeds 7 and 8 gave every device the same RSSI and free heap")
	}
}

// TestDevsimBrokerRestart: the broker stops in the middle of a rollout to
// a fleet and starts again on the same address with the same data; the
// devices reconnect with backoff, their downloads go on from where they
// were (not from the start) and every one commits.
func TestDevsimBrokerRestart(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t)
	devs := ids("rs-", 20)
	specs := w.registerSims(t, devs, nil)
	for i := range specs[:10] {
		specs[i].Profile, specs[i].SlowRate = sim.Slow, 8*1024 // 64 KiB take 8 s
	}
	f := w.simFleet(t, specs)
	w.waitDevices(t, 30*time.Second, devs, onVersion("1.0.0", "idle", "power_on", 0))
	const size = 64 * 1024
	rollout := w.offer(w.release(makeFirmware(t, w.key, "1.1.0", []string{"esp32-v2"}, size)).ID, devs...)
	w.waitDevices(t, 30*time.Second, devs[:10], func(_ string, st fleet.Status) error {
		if st.DownloadOffset == nil || *st.DownloadOffset == 0 {
			return fmt.Errorf("state %q, offset %v", st.OTAState, st.DownloadOffset)
		}
		return nil
	})

	addr, dir := w.Addr(), w.opts.DataDir
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, func() error {
		if st := f.Stats(); st.Connected != 0 || st.ConnectFailures == 0 {
			return fmt.Errorf("%d connected, %d failed attempts", st.Connected, st.ConnectFailures)
		}
		return nil
	})
	b2 := startBroker(t, func(o *broker.Options) { o.TCPAddr, o.DataDir, o.AdminRate = addr, dir, -1 })
	w2 := &simWorld{agentWorld: &agentWorld{tb: b2, key: w.key, keyFile: w.keyFile}, keys: w.keys}
	w2.waitDevices(t, 60*time.Second, devs, onVersion("1.1.0", "committed", "ota_reboot", 1))
	// One download each, never started again, the interrupted ones
	// resumed; and every event there: an event in flight when the broker
	// went away stays queued until a PUBACK comes.
	for _, id := range devs {
		if got := w2.deviceEvents(id, rollout); !slices.Equal(got, healthyEvents) {
			t.Errorf("%s reported %v\nwant %v", id, got, healthyEvents)
		}
	}
	for i, d := range f.Devices() {
		// the slow ones: before the restart, after it, after the update's
		// reboot; the others rebooted into the update before the restart
		// or during it
		if want := map[bool]int{true: 3, false: 2}[i < 10]; d.Connects < want {
			t.Errorf("%s connected %d times, want at least %d", d.ID, d.Connects, want)
		}
	}
	w2.noRefusals()
}

// TestDevsimV311: devices on MQTT 3.1.1 take an update like the others,
// and keep their connections over many keepalive periods (1 s here) with
// heartbeats sent more often than that.
func TestDevsimV311(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t)
	devs := ids("v3-", 5)
	w.simFleet(t, w.registerSims(t, devs, nil), func(c *sim.Config) { c.V311, c.Timing.KeepAlive = true, time.Second })
	w.waitDevices(t, 30*time.Second, devs, func(_ string, st fleet.Status) error {
		if !st.Online || st.Firmware != "1.0.0" || st.Heartbeats < 15 {
			return fmt.Errorf("online %v, firmware %q, %d heartbeats", st.Online, st.Firmware, st.Heartbeats)
		}
		return nil
	})
	for _, id := range devs {
		if st := w.status(id); st.Protocol != 4 || st.Connects != 1 {
			t.Errorf("%s: protocol %d, %d connects", id, st.Protocol, st.Connects)
		}
	}
	rollout := w.offer(w.release(makeFirmware(t, w.key, "1.1.0", []string{"esp32-v2"}, 40*1024)).ID, devs...)
	w.waitDevices(t, 60*time.Second, devs, onVersion("1.1.0", "committed", "ota_reboot", 1))
	for _, id := range devs {
		w.waitEvents(t, 10*time.Second, id, rollout, healthyEvents...)
	}
	w.noRefusals()
}

// TestDevsimLoad: in load mode devices connect, send their birth and
// heartbeats, and nothing else: no subscription, so an offer reaches none.
func TestDevsimLoad(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t)
	devs := ids("load-", 100)
	f := w.simFleet(t, w.registerSims(t, devs, nil), func(c *sim.Config) { c.Load, c.Keys = true, nil; c.ConnectRate = 200 })
	w.waitDevices(t, 30*time.Second, devs, func(_ string, st fleet.Status) error {
		if !st.Online || st.Firmware != "1.0.0" || st.Heartbeats < 3 {
			return fmt.Errorf("online %v, firmware %q, %d heartbeats", st.Online, st.Firmware, st.Heartbeats)
		}
		return nil
	})
	w.offer(w.release(makeFirmware(t, w.key, "1.1.0", []string{"esp32-v2"}, 4096)).ID, devs[0])
	before := w.status(devs[0]).Heartbeats
	eventually(t, 20*time.Second, func() error {
		if n := w.status(devs[0]).Heartbeats; n < before+3 {
			return fmt.Errorf("%d heartbeats since the offer", n-before)
		}
		return nil
	})
	if got := w.deviceEvents(devs[0], ""); len(got) != 0 {
		t.Errorf("a load device reported %v", got)
	}
	if st := f.Stats(); st.Offers != 0 || st.Events != 0 || st.Births != 100 {
		t.Errorf("stats %+v", st)
	}
}

// devsimProc is cmd/devsim running as a process.
type devsimProc struct {
	cmd            *exec.Cmd
	stdout, stderr *syncBuffer
}

func startDevsim(t *testing.T, args ...string) *devsimProc {
	t.Helper()
	p := &devsimProc{cmd: exec.Command(binary(t, "devsim"), args...), stdout: &syncBuffer{}, stderr: &syncBuffer{}}
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("devsim stderr:\n%s", p.stderr.String())
		}
	})
	return p
}

// stop ends the process with SIGTERM and returns its exit status.
func (p *devsimProc) stop(t *testing.T) int {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(40 * time.Second):
		_ = p.cmd.Process.Kill()
		t.Fatalf("devsim did not stop after SIGTERM\n%s", p.stderr.String())
		return -1
	}
}

func readReport(t *testing.T, path string) map[string]sim.Snapshot {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]sim.Snapshot{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var s sim.Snapshot
		if err := json.Unmarshal([]byte(line), &s); err != nil {
			t.Fatalf("report line %q: %v", line, err)
		}
		out[s.ID] = s
	}
	return out
}

// TestDevsimCommand: the devsim command registers a fleet through the
// admin API (attributes from seeded mixes, tokens to a file), runs it
// through an update offered by an operator, stops cleanly at SIGTERM with
// a JSON summary that agrees with the broker, and runs the same fleet again
// from the tokens file with the same profiles.
func TestDevsimCommand(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t)
	dir := t.TempDir()
	tokens, report := filepath.Join(dir, "fleet.tokens"), filepath.Join(dir, "report.jsonl")
	common := []string{"--url", w.url(), "--key", w.keyFile, "--seed", "3", "--profile", "healthy=15,bad-health=5",
		"--utc-offsets", "60=10,-300=10", "--heartbeat", "300ms", "--probation", "1s", "--trial-timeout", "3s",
		"--boot-time", "100ms", "--request-timeout", "1s", "--progress", "0", "--json"}
	p := startDevsim(t, append([]string{"--register", "20", "--prefix", "cli-", "--tokens-out", tokens,
		"--user", opID, "--password", opPassword, "--groups", "canary=5,none=15", "--regions", "eu=10,us=10",
		"--report", report}, common...)...)
	devs := make([]string, 20)
	for i := range devs {
		devs[i] = fmt.Sprintf("cli-%02d", i+1)
	}
	w.waitDevices(t, 30*time.Second, devs, onVersion("1.0.0", "idle", "power_on", 0))
	var list struct{ Devices []fleet.View }
	if err := w.admin().Call(context.Background(), "device/list", map[string]any{"limit": 100}, &list); err != nil {
		t.Fatal(err)
	}
	groups, regions, zones := map[string]int{}, map[string]int{}, map[int16]int{}
	for _, v := range list.Devices {
		groups[strings.Join(v.Groups, ",")]++
		regions[v.Region]++
		zones[v.Status.UTCOffsetMinutes]++
	}
	if groups["canary"] != 5 || groups[""] != 15 || regions["eu"] != 10 || regions["us"] != 10 || zones[60] != 10 || zones[-300] != 10 {
		t.Fatalf("registered groups %v, regions %v; births say UTC offsets %v", groups, regions, zones)
	}

	w.offer(w.release(makeFirmware(t, w.key, "1.1.0", []string{"esp32-v2"}, 24*1024)).ID, devs...)
	states := func() map[string]int {
		n := map[string]int{}
		for _, id := range devs {
			n[w.statuses(t)[id].OTAState]++
		}
		return n
	}
	eventually(t, 60*time.Second, func() error {
		if n := states(); n["committed"] != 15 || n["rolled_back"] != 5 {
			return fmt.Errorf("states %v", n)
		}
		return nil
	})
	if code := p.stop(t); code != 0 {
		t.Fatalf("devsim exited %d\n%s", code, p.stderr.String())
	}
	var sum struct {
		sim.Stats
		ConnectSeconds float64 `json:"connect_s"`
		Memory         *struct {
			Heap uint64 `json:"heap_bytes"`
		} `json:"memory_per_device"`
	}
	if err := json.Unmarshal([]byte(p.stdout.String()), &sum); err != nil {
		t.Fatalf("summary %q: %v", p.stdout.String(), err)
	}
	if sum.Devices != 20 || sum.Seen != 20 || sum.States["committed"] != 15 || sum.States["rolled_back"] != 5 ||
		sum.Commits != 15 || sum.Rollbacks != 5 || sum.Profiles["bad-health"] != 5 || sum.ConnectSeconds <= 0 ||
		sum.Memory == nil || sum.Memory.Heap == 0 {
		t.Fatalf("summary %s", p.stdout.String())
	}
	first := readReport(t, report)
	for _, id := range devs {
		st := w.status(id)
		d := first[id]
		if (d.Profile == sim.BadHealth) != (st.OTAState == "rolled_back") || d.OTAState.String() != st.OTAState || d.Version != st.Firmware {
			t.Errorf("%s: the report says %s on %s (%s), the broker %s on %s", id, d.Profile, d.Version, d.OTAState, st.OTAState, st.Firmware)
		}
	}
	// They went offline with a DISCONNECT.
	w.waitDevices(t, 20*time.Second, devs, func(_ string, st fleet.Status) error {
		if st.Online || st.DisconnectReason != fleet.ReasonNormal {
			return fmt.Errorf("online %v, reason %q", st.Online, st.DisconnectReason)
		}
		return nil
	})

	// The same fleet again, from the tokens file.
	if creds, err := sim.ReadTokens(mustOpen(t, tokens)); err != nil || len(creds) != 20 {
		t.Fatalf("tokens file: %d devices, %v", len(creds), err)
	}
	report2 := filepath.Join(dir, "report2.jsonl")
	p = startDevsim(t, append([]string{"--tokens", tokens, "--report", report2}, common...)...)
	w.waitDevices(t, 30*time.Second, devs, func(_ string, st fleet.Status) error {
		if !st.Online || st.Connects < 3 {
			return fmt.Errorf("online %v after %d connects", st.Online, st.Connects)
		}
		return nil
	})
	if code := p.stop(t); code != 0 {
		t.Fatalf("devsim exited %d\n%s", code, p.stderr.String())
	}
	second := readReport(t, report2)
	for _, id := range devs {
		if first[id].Profile != second[id].Profile {
			t.Errorf("%s: profile %s, then %s with the same seed", id, first[id].Profile, second[id].Profile)
		}
	}
}

func mustOpen(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestDevsimUsage: devsim refuses a command line it cannot run with exit
// status 2 and says every problem at once.
func TestDevsimUsage(t *testing.T) {
	devsim := binary(t, "devsim")
	for _, c := range []struct {
		args []string
		want []string
	}{
		{nil, []string{"--key", "no devices"}},
		{[]string{"--load", "--register", "3", "--profile", "healthy=1,nope=2", "--offline-window", "25:00-01:00"},
			[]string{"profile \"nope\"", "--offline-window", "an operator"}},
		{[]string{"--tokens", "x", "--register", "2", "--load"}, []string{"not with --tokens"}},
		{[]string{"--load", "--tokens", "x", "--groups", "a=1"}, []string{"are for --register"}},
		{[]string{"stray"}, []string{"unexpected argument"}},
	} {
		_, errOut, code := runBinary(t, devsim, nil, c.args...)
		if code != 2 {
			t.Errorf("devsim %v: exit %d\n%s", c.args, code, errOut)
		}
		for _, w := range c.want {
			if !strings.Contains(errOut, w) {
				t.Errorf("devsim %v: no %q in\n%s", c.args, w, errOut)
			}
		}
	}
	_, errOut, code := runBinary(t, devsim, nil, "--help")
	if code != 0 || !strings.Contains(errOut, "Usage: devsim") || !strings.Contains(errOut, "-profile") {
		t.Errorf("--help: exit %d\n%s", code, errOut)
	}
}

// TestDevsimConfiguration: configurations and feature flags take the
// firmware's path into a configuration slot and are swapped in without a
// reboot (unless the blob asks for one, "#restart"); one the application's
// health check fails on ("#fail-health") is rolled back to the previous
// one at once; the firmware stays as it was. As the C agent does
// (TestAgentConfigurationUpdates).
func TestDevsimConfiguration(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t)
	devs := []string{"cfg-1"}
	f := w.simFleet(t, w.registerSims(t, devs, nil))
	w.waitDevices(t, 30*time.Second, devs, onVersion("1.0.0", "idle", "power_on", 0))
	update := func(kind manifest.Kind, version, blob string) string {
		return w.offer(w.release(simRelease(t, w.key, simSpec{kind: kind, version: version, blob: blob})).ID, "cfg-1")
	}
	noReboot := []string{"download.started", "download.completed", "install.started", "install.completed",
		"reboot.completed", "health.ok"}

	r := update(manifest.KindConfig, "5.0.0", "wifi.ssid=lab-2\n")
	w.waitEvents(t, 30*time.Second, "cfg-1", r, noReboot...)
	w.waitDevices(t, 20*time.Second, devs, onVersion("1.0.0", "committed", "power_on", 0))
	r = update(manifest.KindFeatureFlags, "7.0.0", "feature.fast-scan=on\n")
	w.waitEvents(t, 30*time.Second, "cfg-1", r, noReboot...)
	eventually(t, 20*time.Second, func() error {
		if d, _ := f.Device("cfg-1"); d.ConfigVersion != "5.0.0" || d.FlagsVersion != "7.0.0" || d.OTAState != wire.StateCommitted {
			return fmt.Errorf("%+v", d)
		}
		return nil
	})
	if st := w.status("cfg-1"); st.Connects != 1 {
		t.Errorf("%d connects: a configuration rebooted the device", st.Connects)
	}

	// the application's health check fails with this one: back to 5.0.0
	r = update(manifest.KindConfig, "5.1.0", "#fail-health\nwifi.ssid=nowhere\n")
	w.waitEvents(t, 30*time.Second, "cfg-1", r, "download.started", "download.completed", "install.started", "install.completed",
		"reboot.completed", "health.failed:health_check", "rollback.triggered:health_check", "rollback.completed:health_check")
	w.waitDevices(t, 20*time.Second, devs, onVersion("1.0.0", "rolled_back", "power_on", 0))
	if d, _ := f.Device("cfg-1"); d.ConfigVersion != "5.0.0" {
		t.Errorf("configuration %q after the rollback", d.ConfigVersion)
	}

	// one that needs a restart
	r = update(manifest.KindConfig, "5.2.0", "#restart\nwifi.ssid=lab-3\n")
	w.waitEvents(t, 30*time.Second, "cfg-1", r, healthyEvents...)
	w.waitDevices(t, 20*time.Second, devs, onVersion("1.0.0", "committed", "software", 0))
	if d, _ := f.Device("cfg-1"); d.ConfigVersion != "5.2.0" || d.FlagsVersion != "7.0.0" || d.Version != "1.0.0" {
		t.Errorf("%+v", d)
	}
	w.noRefusals()
}

// TestDevsimReplayGuard: the replay guard is the sequence number of what
// runs committed, reported in the birth (key 12): a release that rolled
// back does not raise it, so one signed before it is still taken; one
// below what runs committed is refused.
func TestDevsimReplayGuard(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t)
	devs := []string{"guard-1"}
	specs := w.registerSims(t, devs, nil)
	specs[0].Profile, specs[0].FaultVersions = sim.BadHealth, []string{"1.5.0"}
	w.simFleet(t, specs)
	w.waitDevices(t, 30*time.Second, devs, onVersion("1.0.0", "idle", "power_on", 0))
	rel := func(version string, seq uint64) string {
		return w.release(signedFirmware(t, w.key, manifest.Manifest{Version: version, Sequence: seq}, 8*1024)).ID
	}
	bad, before, older := rel("1.5.0", 3_000_000_000), rel("1.4.0", 2_500_000_000), rel("1.6.0", 2_000_000_000)

	w.offer(bad, "guard-1")
	w.waitDevices(t, 30*time.Second, devs, onVersion("1.0.0", "rolled_back", "rollback", 0))
	if st := w.status("guard-1"); st.ReplayGuard != 0 {
		t.Fatalf("replay guard %d after a rollback", st.ReplayGuard)
	}
	w.offer(before, "guard-1") // signed before the bad one: still taken
	w.waitDevices(t, 30*time.Second, devs, onVersion("1.4.0", "committed", "ota_reboot", 1))
	eventually(t, 10*time.Second, func() error {
		if st := w.status("guard-1"); st.ReplayGuard != 2_500_000_000 {
			return fmt.Errorf("replay guard %d", st.ReplayGuard)
		}
		return nil
	})
	rollout := w.offer(older, "guard-1") // a newer version, but below the guard
	w.waitEvents(t, 20*time.Second, "guard-1", rollout, "rejected:version_policy")
	if tl := w.timeline("guard-1"); tl[len(tl)-1].Detail != "sequence" {
		t.Errorf("refused with %+v", tl[len(tl)-1])
	}
}
