package rollout

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/Masterminds/semver/v3"
	"go.yaml.in/yaml/v3"
)

// MaxSpecSize bounds a rollout specification (YAML).
const MaxSpecSize = 32 * 1024

// Limits of a specification.
const (
	MaxWaves       = 32
	MaxPercents    = 20
	MaxListed      = 10000 // devices named in a selector or a wave
	MaxUpgradePath = 4
	MaxRetries     = 10
	maxNameLen     = 64
)

// Defaults of a specification (docs/ROLLOUTS.md).
const (
	DefaultSuccess     = 9500 // basis points: 95 %
	DefaultMinSample   = 10
	DefaultRollbackW   = 100  // 1 %
	DefaultRollbackP   = 500  // 5 %
	DefaultHealthW     = 1000 // 10 %
	DefaultHealthP     = 2000 // 20 %
	DefaultProbation   = 10 * time.Minute
	DefaultDeadline    = 24 * time.Hour
	DefaultRetries     = 2
	DefaultSilence     = 15 * time.Minute
	DefaultReconnects  = 5
	DefaultBlockSize   = 0 // the broker's maximum
	maxBasisPoints     = 10000
	maxDuration        = 366 * 24 * time.Hour
	minProbationOrBake = 0
)

// Spec is a rollout as an operator writes it (docs/ROLLOUTS.md). Parse
// fills the defaults and checks everything; a Spec from Parse is valid as
// far as it can be without the fleet and the releases (Plan checks those).
type Spec struct {
	// ID names the rollout; default a generated one. It decides the
	// percentage cohorts, so a plan made with it shows the devices the
	// rollout will take.
	ID string `yaml:"id" json:"id,omitempty"`
	// Name is a free label for people.
	Name     string   `yaml:"name" json:"name,omitempty"`
	Release  string   `yaml:"release" json:"release"`
	Selector Selector `yaml:"selector" json:"selector"`
	Waves    []Wave   `yaml:"waves" json:"waves"`
	// Bake is how long a wave that reached Success waits before it is
	// judged and the next starts.
	Bake       Duration   `yaml:"bake" json:"bake"`
	Success    Percent    `yaml:"success" json:"success"`
	Thresholds Thresholds `yaml:"thresholds" json:"thresholds"`
	Rate       Rate       `yaml:"rate" json:"rate"`
	Window     *Window    `yaml:"window" json:"window,omitempty"`
	Schedule   Schedule   `yaml:"schedule" json:"schedule"`
	Versions   Versions   `yaml:"versions" json:"versions"`
	// UpgradePath are releases a device older than them installs first,
	// oldest first.
	UpgradePath []string `yaml:"upgrade_path" json:"upgrade_path,omitempty"`
	// Install is "immediately" (install as soon as verified) or
	// "in_window" (download any time, install command inside the
	// device's window). Default: in_window with a window, else
	// immediately.
	Install   string   `yaml:"install" json:"install"`
	Probation Duration `yaml:"probation" json:"probation"`
	// Deadline is each device's time from its offer to a result.
	Deadline Duration `yaml:"deadline" json:"deadline"`
	// Retries is how many times a device whose download failed is offered
	// again.
	Retries *int `yaml:"retries" json:"retries"`
	// Silence is how long a device that rebooted into the update may stay
	// away before it counts as failing.
	Silence Duration `yaml:"silence" json:"silence"`
	// Reconnects is how many connections after its reboot make a device a
	// reconnect loop (failing).
	Reconnects int  `yaml:"reconnects" json:"reconnects"`
	AutoResume bool `yaml:"auto_resume" json:"auto_resume"`
	// Approval: another operator must approve before the start.
	Approval  bool   `yaml:"approval" json:"approval"`
	BlockSize uint32 `yaml:"block_size" json:"block_size,omitempty"`

	version *semver.Constraints // Selector.Version parsed
}

// Selector picks devices: every given condition must hold.
type Selector struct {
	Hardware     []string          `yaml:"hardware" json:"hardware,omitempty"`
	Region       []string          `yaml:"region" json:"region,omitempty"`
	Connectivity []string          `yaml:"connectivity" json:"connectivity,omitempty"`
	Groups       []string          `yaml:"groups" json:"groups,omitempty"`
	Tags         map[string]string `yaml:"tags" json:"tags,omitempty"`
	Version      string            `yaml:"version" json:"version,omitempty"`
	Devices      []string          `yaml:"devices" json:"devices,omitempty"`
}

// Wave is one step of a rollout: the devices of some groups, a list of
// devices, or percentages of the devices no named wave took.
type Wave struct {
	Name    string    `yaml:"name" json:"name,omitempty"`
	Groups  []string  `yaml:"groups" json:"groups,omitempty"`
	Devices []string  `yaml:"devices" json:"devices,omitempty"`
	Percent []Percent `yaml:"percent" json:"percent,omitempty"`
}

// Thresholds pause a rollout (or warn) when a wave's rate of rollbacks or
// health failures passes them.
type Thresholds struct {
	MinSample int   `yaml:"min_sample" json:"min_sample"`
	Rollback  Level `yaml:"rollback" json:"rollback"`
	Health    Level `yaml:"health" json:"health"`
}

// Level is a warning and a pause threshold.
type Level struct {
	Warn  Percent `yaml:"warn" json:"warn"`
	Pause Percent `yaml:"pause" json:"pause"`
}

// Rate bounds how fast devices are started.
type Rate struct {
	PerMinute int   `yaml:"per_minute" json:"per_minute,omitempty"`
	InFlight  int   `yaml:"in_flight" json:"in_flight,omitempty"`
	Ramp      *Ramp `yaml:"ramp" json:"ramp,omitempty"`
}

// Ramp multiplies the rate by Factor each time EverySucceeded more devices
// succeeded.
type Ramp struct {
	Factor         float64 `yaml:"factor" json:"factor"`
	EverySucceeded int     `yaml:"every_succeeded" json:"every_succeeded"`
	// Max caps the ramped rate per minute (0: no cap).
	Max int `yaml:"max" json:"max,omitempty"`
}

// Schedule bounds when the rollout runs.
type Schedule struct {
	Start *time.Time `yaml:"start" json:"start,omitempty"`
	End   *time.Time `yaml:"end" json:"end,omitempty"`
	// AtEnd is "stop" (no new offers) or "cancel" (devices that have not
	// installed get the cancel).
	AtEnd string `yaml:"at_end" json:"at_end,omitempty"`
}

// Versions are the version rules.
type Versions struct {
	Minor     *bool `yaml:"minor" json:"minor"`
	Major     bool  `yaml:"major" json:"major"`
	Downgrade bool  `yaml:"downgrade" json:"downgrade"`
}

// Install modes of a spec.
const (
	InstallImmediately = "immediately"
	InstallInWindow    = "in_window"
)

// End behaviours of a schedule.
const (
	AtEndStop   = "stop"
	AtEndCancel = "cancel"
)

// Duration is a time.Duration written as "90s", "10m", "1h30m" or "2d".
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return typeError(n, "want a duration such as 30m, 1h or 2d")
	}
	v, err := ParseDuration(n.Value)
	if err != nil {
		return typeError(n, err.Error())
	}
	*d = Duration(v)
	return nil
}

// typeError is how an UnmarshalYAML reports a bad value so that the
// decoder goes on and reports the other problems too (it collects
// *yaml.TypeError and stops at any other error).
func typeError(n *yaml.Node, msg string) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %s", n.Line, msg)}}
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := ParseDuration(string(b))
	*d = Duration(v)
	return err
}

// ParseDuration parses a Go duration, or a whole number of days ("2d").
func ParseDuration(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err == nil && n >= 0 && n <= 366 {
			return time.Duration(n) * 24 * time.Hour, nil
		}
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 || v > maxDuration {
		return 0, fmt.Errorf("duration %s: want a duration such as 30m, 1h or 2d, at most 366d", quote(s))
	}
	return v, nil
}

// Percent is a share in basis points (1 % = 100), written "95%", "0.5%" or
// a number of percent (95, 0.5).
type Percent uint32

// UnmarshalYAML implements yaml.Unmarshaler.
func (p *Percent) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return typeError(n, "want a percentage such as 5% or 0.5")
	}
	v, err := ParsePercent(n.Value)
	if err != nil {
		return typeError(n, err.Error())
	}
	*p = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (p Percent) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Percent) UnmarshalText(b []byte) error {
	v, err := ParsePercent(string(b))
	*p = v
	return err
}

func (p Percent) String() string {
	return strconv.FormatFloat(float64(p)/100, 'f', -1, 64) + "%"
}

// ParsePercent parses "5%", "0.5%", "5" or "0.5" (all percent), from 0 to
// 100 in steps of 0.01.
func ParsePercent(s string) (Percent, error) {
	f, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(s, "%")), 64)
	if err != nil || math.IsNaN(f) || f < 0 || f > 100 {
		return 0, fmt.Errorf("percentage %s: want 0%% to 100%%", quote(s))
	}
	bp := math.Round(f * 100)
	if math.Abs(bp-f*100) > 1e-6 {
		return 0, fmt.Errorf("percentage %s: at most two decimals", quote(s))
	}
	return Percent(bp), nil
}

// of returns the basis points n is of total (0 for total 0).
func of(n, total int) Percent {
	if total <= 0 {
		return 0
	}
	return Percent(uint64(n) * maxBasisPoints / uint64(total))
}

// Problem is one thing wrong with a spec.
type Problem struct {
	// Field is where, in the YAML ("waves[2].percent"); empty for the
	// whole.
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

// SpecError lists every problem of a spec (and of its plan).
type SpecError struct {
	Problems []Problem
}

// ErrSpec is wrapped by every *SpecError.
var ErrSpec = errors.New("invalid rollout spec")

func (e *SpecError) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		if p.Field != "" {
			parts[i] = p.Field + ": " + p.Message
		} else {
			parts[i] = p.Message
		}
	}
	noun := "problems"
	if len(parts) == 1 {
		noun = "problem"
	}
	return fmt.Sprintf("rollout spec: %d %s: %s", len(parts), noun, strings.Join(parts, "; "))
}

func (e *SpecError) Unwrap() error { return ErrSpec }

type problems []Problem

func (ps *problems) add(field, format string, args ...any) {
	if len(*ps) < 100 {
		*ps = append(*ps, Problem{Field: field, Message: fmt.Sprintf(format, args...)})
	}
}

func (ps problems) err() error {
	if len(ps) == 0 {
		return nil
	}
	return &SpecError{Problems: ps}
}

var (
	namePattern = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,64}$`)
	idPattern   = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
	// rolloutIDPattern leaves room in the offer's rollout ID (64 bytes)
	// for the suffix of a retry or a stepping stone.
	rolloutIDPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,40}$`)
	clockTime        = regexp.MustCompile(`^([01][0-9]|2[0-3]):([0-5][0-9])$`)
)

// Parse decodes a spec strictly (unknown keys, wrong types and trailing
// documents are errors), fills the defaults and checks it; a *SpecError
// lists every problem found.
func Parse(text []byte) (*Spec, error) {
	var ps problems
	if len(text) > MaxSpecSize {
		ps.add("", "the spec is %d bytes, limit %d", len(text), MaxSpecSize)
		return nil, ps.err()
	}
	if len(bytes.TrimSpace(text)) == 0 {
		ps.add("", "the spec is empty")
		return nil, ps.err()
	}
	dec := yaml.NewDecoder(bytes.NewReader(text))
	dec.KnownFields(true)
	var s Spec
	if err := dec.Decode(&s); err != nil {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			ps.add("", "%s", strings.TrimPrefix(err.Error(), "yaml: "))
			return nil, ps.err()
		}
		// The decoder went on past values of the wrong type: what it
		// decoded is checked too, so that every problem is reported.
		for _, m := range te.Errors {
			ps.add("", "%s", strings.TrimPrefix(m, "yaml: "))
		}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		ps.add("", "more than one YAML document")
	}
	s.check(&ps)
	if err := ps.err(); err != nil {
		return nil, err
	}
	return &s, nil
}

// check fills defaults and records every problem.
func (s *Spec) check(ps *problems) {
	if s.ID != "" && !rolloutIDPattern.MatchString(s.ID) {
		ps.add("id", "%s must match [A-Za-z0-9._-]{1,40}", quote(s.ID))
	}
	if len(s.Name) > maxNameLen {
		ps.add("name", "%d bytes, limit %d", len(s.Name), maxNameLen)
	}
	if s.Release == "" {
		ps.add("release", "missing: the release to roll out (ID, VERSION@DIGEST-PREFIX or VERSION)")
	}
	s.Selector.check(s, ps)
	s.checkWaves(ps)
	if s.Success == 0 {
		s.Success = DefaultSuccess
	}
	t := &s.Thresholds
	if t.MinSample == 0 {
		t.MinSample = DefaultMinSample
	}
	if t.MinSample < 0 {
		ps.add("thresholds.min_sample", "%d: want at least 1", t.MinSample)
	}
	level := func(name string, l *Level, warn, pause Percent) {
		if l.Warn == 0 {
			l.Warn = warn
		}
		if l.Pause == 0 {
			l.Pause = pause
		}
		if l.Warn > l.Pause {
			ps.add("thresholds."+name, "warn %s is above pause %s", l.Warn, l.Pause)
		}
	}
	level("rollback", &t.Rollback, DefaultRollbackW, DefaultRollbackP)
	level("health", &t.Health, DefaultHealthW, DefaultHealthP)
	r := &s.Rate
	if r.PerMinute < 0 {
		ps.add("rate.per_minute", "%d: want 0 (no limit) or more", r.PerMinute)
	}
	if r.InFlight < 0 {
		ps.add("rate.in_flight", "%d: want 0 (no limit) or more", r.InFlight)
	}
	if r.Ramp != nil {
		if r.PerMinute == 0 {
			ps.add("rate.ramp", "a ramp multiplies rate.per_minute, which is not set")
		}
		if !(r.Ramp.Factor > 1 && r.Ramp.Factor <= 100) {
			ps.add("rate.ramp.factor", "%v: want more than 1, at most 100", r.Ramp.Factor)
		}
		if r.Ramp.EverySucceeded < 1 {
			ps.add("rate.ramp.every_succeeded", "%d: want at least 1", r.Ramp.EverySucceeded)
		}
		if r.Ramp.Max < 0 {
			ps.add("rate.ramp.max", "%d: want 0 (no cap) or more", r.Ramp.Max)
		}
	}
	if s.Window != nil {
		s.Window.check(ps)
	}
	sc := &s.Schedule
	switch sc.AtEnd {
	case "":
		sc.AtEnd = AtEndStop
	case AtEndStop, AtEndCancel:
	default:
		ps.add("schedule.at_end", "%s: want stop or cancel", quote(sc.AtEnd))
	}
	if sc.Start != nil && sc.End != nil && !sc.End.After(*sc.Start) {
		ps.add("schedule", "end %s is not after start %s", sc.End.Format(time.RFC3339), sc.Start.Format(time.RFC3339))
	}
	if s.Versions.Minor == nil {
		yes := true
		s.Versions.Minor = &yes
	}
	if len(s.UpgradePath) > MaxUpgradePath {
		ps.add("upgrade_path", "%d releases, limit %d", len(s.UpgradePath), MaxUpgradePath)
	}
	for i, ref := range s.UpgradePath {
		if ref == "" {
			ps.add(fmt.Sprintf("upgrade_path[%d]", i), "empty release reference")
		}
	}
	switch s.Install {
	case "":
		s.Install = InstallImmediately
		if s.Window != nil {
			s.Install = InstallInWindow
		}
	case InstallImmediately:
		if s.Window != nil {
			ps.add("install", "immediately installs whenever a download ends, which a window forbids: use in_window (download any time, install inside the window), or drop the window")
		}
	case InstallInWindow:
		if s.Window == nil {
			ps.add("install", "in_window needs a window")
		}
	default:
		ps.add("install", "%s: want immediately or in_window", quote(s.Install))
	}
	if s.Probation == 0 {
		s.Probation = Duration(DefaultProbation)
	}
	if s.Deadline == 0 {
		s.Deadline = Duration(DefaultDeadline)
	}
	if s.Silence == 0 {
		s.Silence = Duration(DefaultSilence)
	}
	if s.Reconnects == 0 {
		s.Reconnects = DefaultReconnects
	}
	if s.Reconnects < 1 || s.Reconnects > 1000 {
		ps.add("reconnects", "%d: want 1 to 1000", s.Reconnects)
	}
	if s.Retries == nil {
		n := DefaultRetries
		s.Retries = &n
	}
	if *s.Retries < 0 || *s.Retries > MaxRetries {
		ps.add("retries", "%d: want 0 to %d", *s.Retries, MaxRetries)
	}
}

func (sel *Selector) check(s *Spec, ps *problems) {
	names := func(field string, vs []string) {
		for i, v := range vs {
			if !namePattern.MatchString(v) {
				ps.add(fmt.Sprintf("selector.%s[%d]", field, i), "%s must match [A-Za-z0-9._:-]{1,64}", quote(v))
			}
		}
	}
	names("hardware", sel.Hardware)
	names("region", sel.Region)
	names("groups", sel.Groups)
	for i, c := range sel.Connectivity {
		if !slices.Contains([]string{"wifi", "cellular", "ethernet", "via_gateway"}, c) {
			ps.add(fmt.Sprintf("selector.connectivity[%d]", i), "%s: want wifi, cellular, ethernet or via_gateway", quote(c))
		}
	}
	for k := range sel.Tags {
		if !namePattern.MatchString(k) {
			ps.add("selector.tags", "key %s must match [A-Za-z0-9._:-]{1,64}", quote(k))
		}
	}
	if sel.Version != "" {
		c, err := semver.NewConstraint(sel.Version)
		if err != nil {
			ps.add("selector.version", "%s: %v", quote(sel.Version), err)
		}
		s.version = c
	}
	checkDevices("selector.devices", sel.Devices, ps)
}

func checkDevices(field string, ids []string, ps *problems) {
	if len(ids) > MaxListed {
		ps.add(field, "%d devices, limit %d", len(ids), MaxListed)
		return
	}
	seen := make(map[string]bool, len(ids))
	for i, id := range ids {
		switch {
		case !idPattern.MatchString(id):
			ps.add(fmt.Sprintf("%s[%d]", field, i), "%s is not a device ID", quote(id))
		case seen[id]:
			ps.add(fmt.Sprintf("%s[%d]", field, i), "%s is listed twice", id)
		}
		seen[id] = true
	}
}

func (s *Spec) checkWaves(ps *problems) {
	if len(s.Waves) == 0 {
		ps.add("waves", "missing: at least one wave (named groups, devices, or percentages)")
		return
	}
	if len(s.Waves) > MaxWaves {
		ps.add("waves", "%d waves, limit %d", len(s.Waves), MaxWaves)
	}
	names := map[string]bool{}
	for i := range s.Waves {
		w := &s.Waves[i]
		field := fmt.Sprintf("waves[%d]", i)
		kinds := 0
		if len(w.Groups) > 0 {
			kinds++
		}
		if len(w.Devices) > 0 {
			kinds++
		}
		if len(w.Percent) > 0 {
			kinds++
		}
		if kinds != 1 {
			ps.add(field, "give exactly one of groups, devices or percent")
			continue
		}
		for j, g := range w.Groups {
			if !namePattern.MatchString(g) {
				ps.add(fmt.Sprintf("%s.groups[%d]", field, j), "%s must match [A-Za-z0-9._:-]{1,64}", quote(g))
			}
		}
		checkDevices(field+".devices", w.Devices, ps)
		if len(w.Percent) > 0 {
			if i != len(s.Waves)-1 {
				ps.add(field, "percentages come last: they share out the devices no named wave took")
			}
			if w.Name != "" {
				ps.add(field+".name", "percentage waves are named by their percentage")
			}
			if len(w.Percent) > MaxPercents {
				ps.add(field+".percent", "%d steps, limit %d", len(w.Percent), MaxPercents)
			}
			for j, p := range w.Percent {
				switch {
				case p == 0:
					ps.add(fmt.Sprintf("%s.percent[%d]", field, j), "0%% selects nobody")
				case j > 0 && p <= w.Percent[j-1]:
					ps.add(fmt.Sprintf("%s.percent[%d]", field, j), "%s does not increase on %s (each step is the share reached, not added)", p, w.Percent[j-1])
				}
				names[p.String()] = true
			}
			continue
		}
		if w.Name == "" {
			if len(w.Groups) == 1 {
				w.Name = w.Groups[0]
			} else {
				ps.add(field+".name", "missing: a wave of several groups or of devices needs a name")
				continue
			}
		}
		if !namePattern.MatchString(w.Name) {
			ps.add(field+".name", "%s must match [A-Za-z0-9._:-]{1,64}", quote(w.Name))
		}
		if names[w.Name] {
			ps.add(field+".name", "%s names two waves", w.Name)
		}
		names[w.Name] = true
	}
}

func quote(s string) string {
	if len(s) > 64 {
		return fmt.Sprintf("%q… (%d bytes)", s[:64], len(s))
	}
	return strconv.Quote(s)
}
