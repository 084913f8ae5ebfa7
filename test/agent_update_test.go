package test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	bin "encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/test/faultproxy"
)

// The C agent against the real broker, continued: rollbacks after the new
// image was confirmed (ESP-IDF's otadata makes the old image boot like a
// new one), the replay guard after a rollback, configuration and
// feature-flag updates.

// simBehaviour values beyond agent_test.go's (agent-c/README.md).
const (
	simCrashLater      = 4 // healthy, then crashes delay seconds after boot
	simHealthFailLater = 5 // healthy, then its health check fails delay seconds after boot
)

// simSpec describes a release for the simulated device.
type simSpec struct {
	version   string
	behaviour byte   // firmware: how the image behaves once booted
	delay     uint16 // seconds, for simCrashLater and simHealthFailLater
	secure    uint32 // secure version of the image and its manifest
	seq       uint64 // manifest sequence number; 0: the time now
	size      int    // firmware image size
	kind      manifest.Kind
	blob      string // configuration or feature flags: the image
}

// simRelease signs the release s describes: a simulated firmware image
// (agent_test.go's header, with s's delay and secure version) or the blob
// of a configuration or of feature flags.
func simRelease(t testing.TB, key *ecdsa.PrivateKey, s simSpec) firmware {
	t.Helper()
	var img []byte
	if s.kind == manifest.KindFirmware {
		img = make([]byte, s.size)
		_, _ = rand.Read(img[64:])
		copy(img, []byte{0xe9, 'S', 'I', 'M', 1, s.behaviour})
		bin.LittleEndian.PutUint16(img[6:], s.delay)
		bin.LittleEndian.PutUint32(img[8:], s.secure)
		clear(img[12:64])
		copy(img[16:48], s.version)
	} else {
		img = []byte(s.blob)
	}
	n, d, err := manifest.HashImage(bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	if s.seq == 0 {
		s.seq = uint64(time.Now().UnixNano())
	}
	m := manifest.Manifest{Sequence: s.seq, Version: s.version, BuildID: "agent-e2e",
		Hardware: []string{"esp32-v2"}, ImageSize: n, ImageDigest: d, Kind: s.kind, SecureVersion: s.secure}
	signed, err := manifest.Sign(&m, key)
	if err != nil {
		t.Fatal(err)
	}
	return firmware{image: img, signed: signed, m: m}
}

// offerWarning offers release to device id and returns the rollout and
// the offer reply's warning for it.
func (w *agentWorld) offerWarning(releaseID, id string) (string, string) {
	w.t.Helper()
	var res struct {
		RolloutID string `json:"rollout_id"`
		Results   []struct {
			Device, Error, Warning string
			OK                     bool
		}
	}
	if err := w.admin().Call(context.Background(), "offer/create", map[string]any{"release": releaseID, "devices": []string{id}}, &res); err != nil {
		w.t.Fatal(err)
	}
	if len(res.Results) != 1 || !res.Results[0].OK {
		w.t.Fatalf("offer to %s: %+v", id, res.Results)
	}
	return res.RolloutID, res.Results[0].Warning
}

// wantState waits until device id reports firmware fw in slot with OTA
// state st (and boot reason reason unless "").
func (w *agentWorld) wantState(id, fw string, slot uint8, st, reason string) {
	w.t.Helper()
	eventually(w.t, 40*time.Second, func() error {
		s := w.status(id)
		if s.Firmware != fw || s.Slot != slot || s.OTAState != st || (reason != "" && s.BootReason != reason) {
			return fmt.Errorf("%s: firmware %q, slot %d, state %q, boot reason %q; want %q, %d, %q, %q",
				id, s.Firmware, s.Slot, s.OTAState, s.BootReason, fw, slot, st, reason)
		}
		return nil
	})
}

// count is how many device events of type typ (with detail, unless "")
// rollout has in tl.
func count(tl []timelineEntry, rollout, typ, detail string) int {
	n := 0
	for _, e := range tl {
		if e.Source == "device" && e.RolloutID == rollout && e.Type == typ && (detail == "" || e.Detail == detail) {
			n++
		}
	}
	return n
}

// noneAfter fails when rollout's device events after the first of type
// first include one of type typ.
func noneAfter(t *testing.T, tl []timelineEntry, rollout, first, typ string) {
	t.Helper()
	seen := false
	for _, e := range tl {
		if e.Source != "device" || e.RolloutID != rollout {
			continue
		}
		if seen && e.Type == typ {
			t.Errorf("%s after %s: %+v", typ, first, e)
		}
		seen = seen || e.Type == first
	}
}

// boots is how many times the simulated device started slot with version.
func (a *agentProc) boots(slot int, version string) int {
	return strings.Count(a.out.String(), fmt.Sprintf("booted slot %d version %s ", slot, version))
}

// TestAgentProbationRollback: the new image is confirmed, then fails in
// probation. The agent rolls back with esp_ota_set_boot_partition, so the
// old image boots PENDING_VERIFY like an update (ESP-IDF's otadata, which
// the POSIX simulator models): the agent must see a completed rollback (14,
// not 10), confirm the old image at once, never commit the bad one nor
// raise the secure version to its, and the old image must stay (a reset
// must not bring the bad image back).
func TestAgentProbationRollback(t *testing.T) {
	agentBinary(t)
	long := []string{"--probation-ms", "60000"}
	for _, c := range []struct {
		name      string
		behaviour byte
		flags     []string
		why       string // the rollback's error
		detail    string // the health failure's detail
	}{
		{"crash-later", simCrashLater, []string{"--max-reboots", "1"}, "boot_failure", "reboot loop"},
		{"health-fail-later", simHealthFailLater, []string{"--health-fail-ms", "1000"}, "health_check", "health failing"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			w := newAgentWorld(t)
			id := "agent-prob-" + c.name
			a := w.agent(t, id, append(long, c.flags...)...)
			rollout := w.updateTo(id, simRelease(t, w.key, simSpec{version: "1.1.0", behaviour: c.behaviour,
				delay: 2, secure: 1, size: 48 * 1024}))
			eventually(t, 40*time.Second, func() error {
				return hasEvents(w.timeline(id), rollout, "update.reboot.completed", "update.health.ok",
					"update.health.failed:"+c.why, "update.rollback.triggered:"+c.why,
					"update.rollback.completed:"+c.why)
			})
			w.wantState(id, "1.0.0", 0, "rolled_back", "rollback")
			tl := w.timeline(id)
			// (events are sent at least once: one published just before
			// a reset may come again after it)
			if n := count(tl, rollout, "update.health.failed", c.detail); n == 0 {
				t.Errorf("no health failure %q", c.detail)
			}
			// the old image's boot is a completed rollback, not the
			// bad image's reboot
			noneAfter(t, tl, rollout, "update.rollback.triggered", "update.reboot.completed")
			if st := w.status(id); st.SecureVersion != 0 {
				t.Errorf("secure version %d after rolling back from an image with 1", st.SecureVersion)
			}
			// a power loss now boots the old image again: the bootloader
			// cannot fall back to the abandoned one
			before, bad := a.boots(0, "1.0.0"), a.boots(1, "1.1.0")
			a.powerLoss()
			eventually(t, 20*time.Second, func() error {
				if n := a.boots(0, "1.0.0"); n <= before {
					return fmt.Errorf("old image booted %d times", n)
				}
				return nil
			})
			w.wantState(id, "1.0.0", 0, "rolled_back", "")
			if n := a.boots(1, "1.1.0"); n != bad {
				t.Errorf("the bad image booted again after the rollback (%d boots, then %d)", bad, n)
			}
			for _, e := range w.timeline(id) {
				if e.Source == "device" && e.Type == "update.rollback.triggered" && e.Detail != c.detail {
					t.Errorf("another rollback after the power loss: %+v", e)
				}
			}
			w.noRefusals()
		})
	}

	// The broker is lost in probation: the agent rolls back while it
	// cannot report anything, and the device loses power before it is back
	// online. The results (health failed, rollback triggered and
	// completed) are kept across both resets and reach the broker once
	// the link is back.
	t.Run("broker-lost", func(t *testing.T) {
		t.Parallel()
		w := newAgentWorld(t)
		id := "agent-prob-offline"
		tok := w.register(id, "device", "", map[string]any{"hardware": "esp32-v2"})
		px, err := faultproxy.Start(w.Addr(), 1)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = px.Close() })
		a := runAgent(t, "mqtt://"+px.Addr(), id, tok, w.keyFile, nil, append(long, "--no-broker-ms", "2000")...)
		eventually(t, 20*time.Second, func() error {
			if st := w.status(id); st.Firmware != "1.0.0" || !st.Online {
				return fmt.Errorf("online %v, firmware %q", st.Online, st.Firmware)
			}
			return nil
		})
		rollout := w.updateTo(id, simRelease(t, w.key, simSpec{version: "1.1.0", size: 48 * 1024}))
		eventually(t, 40*time.Second, func() error {
			return hasEvents(w.timeline(id), rollout, "update.reboot.completed", "update.health.ok")
		})
		px.SetDown(true)
		eventually(t, 30*time.Second, func() error {
			if n := a.boots(0, "1.0.0"); n < 2 {
				return fmt.Errorf("the old image booted %d times", n)
			}
			return nil
		})
		a.powerLoss()
		eventually(t, 20*time.Second, func() error {
			if n := a.boots(0, "1.0.0"); n < 3 {
				return fmt.Errorf("the old image booted %d times", n)
			}
			return nil
		})
		px.SetDown(false)
		eventually(t, 40*time.Second, func() error {
			return hasEvents(w.timeline(id), rollout, "update.health.ok", "update.health.failed:health_check",
				"update.rollback.triggered:health_check", "update.rollback.completed:health_check")
		})
		w.wantState(id, "1.0.0", 0, "rolled_back", "")
		if n := count(w.timeline(id), rollout, "update.health.failed", "no broker"); n == 0 {
			t.Error("no health failure \"no broker\"")
		}
		w.noRefusals()
	})
}

// TestAgentSequenceRecovery: a bad release rolls back; the release signed
// before it (a lower sequence number) is offered and commits. The device's
// replay guard (birth key 12) is the committed manifest's sequence number,
// and an offer below it gets a warning from the broker and is refused by
// the device.
func TestAgentSequenceRecovery(t *testing.T) {
	agentBinary(t)
	w := newAgentWorld(t)
	id := "agent-seq"
	w.agent(t, id)
	good := simRelease(t, w.key, simSpec{version: "1.1.0", size: 32 * 1024})
	older := simRelease(t, w.key, simSpec{version: "1.3.0", size: 32 * 1024, seq: good.m.Sequence - 1})
	bad := simRelease(t, w.key, simSpec{version: "1.2.0", behaviour: simCrash, size: 32 * 1024})
	if bad.m.Sequence <= good.m.Sequence {
		t.Fatal("sequence numbers out of order")
	}

	r := w.updateTo(id, bad)
	eventually(t, 40*time.Second, func() error {
		return hasEvents(w.timeline(id), r, "update.rollback.completed:boot_failure")
	})
	w.wantState(id, "1.0.0", 0, "rolled_back", "rollback")
	if g := w.status(id).ReplayGuard; g != 0 {
		t.Fatalf("replay guard %d after the rollback, want 0 (nothing committed)", g)
	}

	r, warning := w.offerWarning(w.release(good).ID, id)
	if warning != "" {
		t.Errorf("offer of the earlier good release warns: %s", warning)
	}
	w.wantState(id, "1.1.0", 1, "committed", "")
	eventually(t, 20*time.Second, func() error {
		if g := w.status(id).ReplayGuard; g != good.m.Sequence {
			return fmt.Errorf("replay guard %d, want %d", g, good.m.Sequence)
		}
		return nil
	})
	if err := hasEvents(w.timeline(id), r, "update.reboot.completed", "update.health.ok"); err != nil {
		t.Fatal(err)
	}

	r, warning = w.offerWarning(w.release(older).ID, id)
	if !strings.Contains(warning, "sequence") {
		t.Errorf("offer below the device's replay guard: warning %q", warning)
	}
	eventually(t, 20*time.Second, func() error {
		if count(w.timeline(id), r, "update.rejected", "sequence") != 1 {
			return fmt.Errorf("no rejection of sequence %d", older.m.Sequence)
		}
		return nil
	})
	if st := w.status(id); st.Firmware != "1.1.0" {
		t.Fatalf("firmware %q", st.Firmware)
	}
	w.noRefusals()
}

// activeConfig is the configuration (kind 1) or feature-flag (kind 2) blob
// the simulated device has in use: cfgdata-K's second byte names the slot
// (agent-c/README.md, "Data directory").
func (a *agentProc) activeConfig(kind int) (string, error) {
	rec, err := os.ReadFile(filepath.Join(a.dir, fmt.Sprintf("cfgdata-%d", kind)))
	if err != nil || len(rec) != 12 {
		return "", fmt.Errorf("cfgdata-%d: %v (%d bytes)", kind, err, len(rec))
	}
	if rec[1] == 0xff {
		return "", nil
	}
	b, err := os.ReadFile(filepath.Join(a.dir, fmt.Sprintf("cfg%d-slot%d.bin", kind, rec[1])))
	return string(b), err
}

// TestAgentConfigurationUpdates: configurations and feature flags take the
// firmware's path (signed manifest, download, digest, trial, commit) into
// a configuration slot and are swapped in without a reboot, unless the
// application asks for one; a configuration the application's health
// check fails on is rolled back to the previous one.
func TestAgentConfigurationUpdates(t *testing.T) {
	agentBinary(t)
	w := newAgentWorld(t)
	id := "agent-cfg"
	a := w.agent(t, id, "--trial-timeout-ms", "3000")
	committed := func(rollout string, blob string, kind int) {
		t.Helper()
		eventually(t, 30*time.Second, func() error {
			if err := hasEvents(w.timeline(id), rollout, "update.download.completed", "update.install.completed",
				"update.reboot.completed", "update.health.ok"); err != nil {
				return err
			}
			if st := w.status(id).OTAState; st != "committed" {
				return fmt.Errorf("state %q", st)
			}
			if got, err := a.activeConfig(kind); err != nil || got != blob {
				return fmt.Errorf("kind %d in use: %q (%v), want %q", kind, got, err, blob)
			}
			return nil
		})
	}
	cfg := "wifi.ssid=lab-2\nmqtt.host=otamq.lab\n"
	r := w.updateTo(id, simRelease(t, w.key, simSpec{kind: manifest.KindConfig, version: "5.0.0", blob: cfg}))
	committed(r, cfg, 1)
	if n := count(w.timeline(id), r, "update.reboot.started", ""); n != 0 {
		t.Errorf("a configuration update rebooted the device")
	}

	flags := "feature.fast-scan=on\n"
	r = w.updateTo(id, simRelease(t, w.key, simSpec{kind: manifest.KindFeatureFlags, version: "7.0.0", blob: flags}))
	committed(r, flags, 2)
	if n := count(w.timeline(id), r, "update.reboot.started", ""); n != 0 {
		t.Errorf("a feature-flag update rebooted the device")
	}
	if n := a.boots(0, "1.0.0"); n != 1 {
		t.Errorf("the device started %d times, want once", n)
	}

	// the application's health check fails with this one: back to cfg
	badCfg := "#fail-health\nwifi.ssid=nowhere\n"
	r = w.updateTo(id, simRelease(t, w.key, simSpec{kind: manifest.KindConfig, version: "5.1.0", blob: badCfg}))
	eventually(t, 30*time.Second, func() error {
		return hasEvents(w.timeline(id), r, "update.reboot.completed", "update.health.failed:health_check",
			"update.rollback.triggered:health_check", "update.rollback.completed:health_check")
	})
	eventually(t, 10*time.Second, func() error {
		if st := w.status(id).OTAState; st != "rolled_back" {
			return fmt.Errorf("state %q", st)
		}
		if got, err := a.activeConfig(1); err != nil || got != cfg {
			return fmt.Errorf("configuration in use %q (%v), want the previous one", got, err)
		}
		return nil
	})

	// an application that needs a restart for this one
	restartCfg := "#restart\nwifi.ssid=lab-3\n"
	r = w.updateTo(id, simRelease(t, w.key, simSpec{kind: manifest.KindConfig, version: "5.2.0", blob: restartCfg}))
	committed(r, restartCfg, 1)
	if err := hasEvents(w.timeline(id), r, "update.install.completed", "update.reboot.started", "update.reboot.completed"); err != nil {
		t.Error(err)
	}
	if got, err := a.activeConfig(2); err != nil || got != flags {
		t.Errorf("feature flags in use %q (%v) after the configuration updates", got, err)
	}
	if st := w.status(id); st.Firmware != "1.0.0" || st.Slot != 0 {
		t.Errorf("firmware %q in slot %d", st.Firmware, st.Slot)
	}
	if !strings.Contains(a.out.String(), "configuration now in use") {
		t.Error("the application was not told of the new configuration")
	}
	w.noRefusals()
}
