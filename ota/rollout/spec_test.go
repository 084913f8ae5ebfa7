package rollout

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/Masterminds/semver/v3"
)

const fullSpec = `
release: 1.2.4
selector:
  hardware: [esp32-v2]
  region: [eu]
  connectivity: [wifi, ethernet]
  groups: [canary, internal, pilot, field]
  tags: {site: berlin}
  version: ">=1.0.0 <1.2.4"
waves:
  - {name: canary,   groups: [canary]}
  - {name: internal, groups: [internal]}
  - {name: pilot,    groups: [pilot]}
  - {percent: [1, 5, 10, 25, 50, 100]}
bake: 1h
success: 95%
thresholds:
  min_sample: 10
  rollback: {warn: 1%, pause: 5%}
  health:   {warn: 10%, pause: 20%}
rate: {per_minute: 100, in_flight: 500, ramp: {factor: 2, every_succeeded: 50}}
window: {start: "02:00", end: "05:00", days: [mon, tue, wed, thu, fri]}
schedule: {start: "2026-12-02T00:00:00Z", end: "2026-12-20T00:00:00Z", at_end: stop}
versions: {minor: true, major: false, downgrade: false}
upgrade_path: [1.1.0]
install: in_window
probation: 10m
deadline: 24h
retries: 2
auto_resume: false
approval: false
`

func TestParseFullSpec(t *testing.T) {
	s, err := Parse([]byte(fullSpec))
	if err != nil {
		t.Fatal(err)
	}
	if s.Bake.D() != time.Hour || s.Success != 9500 || s.Thresholds.Rollback.Pause != 500 || s.Rate.Ramp.Factor != 2 ||
		len(s.Waves) != 4 || len(s.Waves[3].Percent) != 6 || s.Waves[3].Percent[0] != 100 || *s.Retries != 2 ||
		s.Schedule.End.Day() != 20 || s.Window.days != 0x3e || s.Install != InstallInWindow {
		t.Fatalf("parsed %+v", s)
	}
}

func TestParseDefaults(t *testing.T) {
	s, err := Parse([]byte("release: 1.0.0\nwaves: [{groups: [canary]}, {percent: [100]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Waves[0].Name != "canary" || s.Success != DefaultSuccess || s.Thresholds.MinSample != DefaultMinSample ||
		s.Thresholds.Rollback.Warn != DefaultRollbackW || s.Thresholds.Health.Pause != DefaultHealthP ||
		s.Probation.D() != DefaultProbation || s.Deadline.D() != DefaultDeadline || *s.Retries != DefaultRetries ||
		s.Install != InstallImmediately || !*s.Versions.Minor || s.Versions.Major || s.Schedule.AtEnd != AtEndStop {
		t.Fatalf("defaults %+v", s)
	}
}

// Every problem is reported at once, with where it is.
func TestParseReportsEveryProblem(t *testing.T) {
	for name, tc := range map[string]struct {
		yaml  string
		want  map[string]string // field → part of the message
		count int
	}{
		"unknown keys and types": {
			yaml: "release: 1.0.0\nwaves: [{percent: [100]}]\nbogus: 1\nbake: soon\nrate: {per_minute: many}\n",
			want: map[string]string{"": "bogus"}, count: 3,
		},
		"semantics": {
			yaml: `
waves:
  - {name: canary, groups: [canary]}
  - {name: canary, groups: [internal]}
  - {percent: [5, 5, 200]}
  - {groups: [late]}
thresholds: {rollback: {warn: 10%, pause: 5%}}
rate: {ramp: {factor: 1, every_succeeded: 0}}
window: {start: "25:00", end: "05:00", days: [caturday]}
schedule: {start: "2026-12-20T00:00:00Z", end: "2026-12-02T00:00:00Z", at_end: explode}
install: whenever
retries: 99
selector: {version: "not a constraint", connectivity: [carrier-pigeon], devices: ["a b"]}
`,
			want: map[string]string{
				"release":                   "missing",
				"waves[1].name":             "names two waves",
				"waves[2]":                  "percentages come last",
				"thresholds.rollback":       "above pause",
				"rate.ramp":                 "per_minute",
				"rate.ramp.factor":          "more than 1",
				"rate.ramp.every_succeeded": "at least 1",
				"window.start":              "HH:MM",
				"window.days[0]":            "caturday",
				"schedule":                  "not after start",
				"schedule.at_end":           "stop or cancel",
				"install":                   "immediately or in_window",
				"retries":                   "0 to 10",
				"selector.version":          "not a constraint",
				"selector.connectivity[0]":  "carrier-pigeon",
				"selector.devices[0]":       "not a device ID",
				"waves[2].percent[1]":       "does not increase",
				"waves[3].name":             "", // after a percentage wave...
			},
		},
		"empty":         {yaml: "  \n", want: map[string]string{"": "empty"}},
		"two documents": {yaml: "release: 1.0.0\nwaves: [{percent: [100]}]\n---\nrelease: 2.0.0\n", want: map[string]string{"": "more than one"}},
		"not yaml":      {yaml: "release: [1.0.0\n", want: map[string]string{"": "line"}},
		"too large":     {yaml: "release: 1.0.0\n#" + strings.Repeat("x", MaxSpecSize), want: map[string]string{"": "limit"}},
		"in_window without window": {yaml: "release: 1.0.0\nwaves: [{percent: [100]}]\ninstall: in_window\n",
			want: map[string]string{"install": "needs a window"}},
		"immediately with a window": {yaml: "release: 1.0.0\nwaves: [{percent: [100]}]\ninstall: immediately\nwindow: {start: '02:00', end: '03:00'}\n",
			want: map[string]string{"install": "window"}},
		"percent 0 and decimals": {yaml: "release: 1.0.0\nwaves: [{percent: [0, 0.001]}]\n",
			want: map[string]string{"waves[0].percent[0]": "selects nobody", "": "two decimals"}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			se := specErr(t, err)
			for field, msg := range tc.want {
				if msg == "" {
					continue
				}
				if !hasProblem(se, field, msg) {
					t.Errorf("no problem %q at %q in %v", msg, field, se.Problems)
				}
			}
			if tc.count > 0 && len(se.Problems) != tc.count {
				t.Errorf("%d problems, want %d: %v", len(se.Problems), tc.count, se.Problems)
			}
		})
	}
}

func TestPercent(t *testing.T) {
	for in, want := range map[string]Percent{"5%": 500, "0.5": 50, "100": 10000, " 95 %": 9500, "0.01%": 1} {
		if got, err := ParsePercent(in); err != nil || got != want {
			t.Errorf("%q: %v %v", in, got, err)
		}
	}
	for _, in := range []string{"101", "-1", "x", "NaN", "0.005"} {
		if _, err := ParsePercent(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
	if Percent(50).String() != "0.5%" {
		t.Error(Percent(50).String())
	}
}

func TestWindow(t *testing.T) {
	w := &Window{Start: "22:00", End: "02:00", Days: []string{"fri"}}
	var ps problems
	w.check(&ps)
	if len(ps) != 0 {
		t.Fatal(ps)
	}
	fri := time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC) // a Friday
	for _, tc := range []struct {
		at   time.Time
		open bool
	}{
		{fri.Add(21 * time.Hour), false},
		{fri.Add(22 * time.Hour), true},
		{fri.Add(25 * time.Hour), true},  // Saturday 01:00: the Friday window
		{fri.Add(26 * time.Hour), false}, // Saturday 02:00: closed
		{fri.Add(-2 * time.Hour), false}, // Thursday 22:00: not a window day
		{fri.Add(1 * time.Hour), false},  // Friday 01:00: Thursday's night, no window
	} {
		if ok, _ := w.open(tc.at); ok != tc.open {
			t.Errorf("%s: open %v", tc.at.Format("Mon 15:04"), ok)
		}
	}
	if n := w.next(fri.Add(-2 * time.Hour)); !n.Equal(fri.Add(22 * time.Hour)) {
		t.Errorf("next %s", n)
	}
	if _, closes := w.open(fri.Add(23 * time.Hour)); !closes.Equal(fri.Add(26 * time.Hour)) {
		t.Errorf("closes %s", closes)
	}
}

func TestVersionRules(t *testing.T) {
	yes, no := true, false
	for _, tc := range []struct {
		v        Versions
		from, to string
		ok       bool
	}{
		{Versions{Minor: &yes}, "1.0.0", "1.0.1", true},
		{Versions{Minor: &no}, "1.0.0", "1.0.9", true},
		{Versions{Minor: &yes}, "1.0.0", "1.2.0", true},
		{Versions{Minor: &no}, "1.0.0", "1.2.0", false},
		{Versions{Minor: &yes}, "1.0.0", "2.0.0", false},
		{Versions{Minor: &yes, Major: true}, "1.0.0", "2.0.0", true},
		{Versions{Minor: &yes}, "1.0.1", "1.0.0", false},
		{Versions{Minor: &yes, Downgrade: true}, "1.0.1", "1.0.0", true},
		{Versions{Minor: &yes, Downgrade: true}, "1.1.0", "1.0.9", false},
		{Versions{Minor: &yes}, "1.0.0", "1.0.0", false},
	} {
		from, to := mustVersion(tc.from), mustVersion(tc.to)
		if why := tc.v.hop(from, to); (why == "") != tc.ok {
			t.Errorf("%s → %s with %+v: %q", tc.from, tc.to, tc.v, why)
		}
	}
}

// FuzzParse: any bytes give a spec or a *SpecError, never a panic.
func FuzzParse(f *testing.F) {
	f.Add([]byte(fullSpec))
	f.Add([]byte("release: 1\nwaves: [{percent: [1, 100]}]\nwindow: {start: '23:59', end: '00:00'}\n"))
	f.Add([]byte("{"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Parse(b)
		if err != nil {
			specErr(t, err)
			return
		}
		if s.Release == "" || len(s.Waves) == 0 || s.Success == 0 || s.Retries == nil {
			t.Fatalf("accepted an incomplete spec: %+v", s)
		}
	})
}

func mustVersion(s string) *semver.Version { return semver.MustParse(s) }

// The commented example in config/ parses, and says what Parse fills in.
func TestExampleSpec(t *testing.T) {
	b, err := os.ReadFile("../../config/rollout.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	def, err := Parse([]byte("release: x\nwaves: [{percent: [100]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	// The values the example calls defaults are the defaults.
	if s.Success != def.Success || s.Thresholds != def.Thresholds || s.Probation != def.Probation ||
		s.Deadline != def.Deadline || *s.Retries != *def.Retries || s.Silence != def.Silence || s.Reconnects != def.Reconnects {
		t.Fatalf("example %+v\ndefaults %+v", s, def)
	}
}

// FuzzDecodeMember: a stored device record of any bytes decodes or is
// refused, and what decodes encodes back to the same bytes.
func FuzzDecodeMember(f *testing.F) {
	m := &member{id: "d", wave: 2, state: Trial, need: 1, tries: 1, flags: fHealth, hw: 3, region: 4, at: 5, offered: 6, okAt: 7, connects: 8, wills: 9}
	f.Add(m.encode("a reason"))
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, reason, err := decodeMember("d", b)
		if err != nil {
			return
		}
		if got := m.encode(reason); len(reason) <= maxReason && !bytes.Equal(got, b) {
			t.Fatalf("%x decodes to %+v, which encodes to %x", b, m, got)
		}
	})
}
