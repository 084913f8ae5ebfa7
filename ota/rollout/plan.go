package rollout

import (
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/Masterminds/semver/v3"

	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/release"
)

// cohort places a device in 0..9999 by a stable hash of the rollout and
// device IDs: the same device has the same cohort in every plan of the
// same rollout, whatever else changed.
func cohort(rollout, id string) uint32 {
	h := fnv.New64a()
	h.Write([]byte(rollout))
	h.Write([]byte{0})
	h.Write([]byte(id))
	return uint32(h.Sum64() % maxBasisPoints)
}

// planned is a device of a plan.
type planned struct {
	id     string
	wave   int
	need   uint8
	skip   string // why it is skipped; "" takes part
	hw     string
	region string
}

// plan is a spec applied to the fleet and the releases at one moment.
type plan struct {
	id       string
	spec     *Spec
	release  release.Release
	path     []release.Release // stepping stones, oldest first
	waves    []wave
	members  []planned // by ID
	selected int
	// unassigned devices were selected but fall in no wave.
	unassigned   int
	unknownLocal int
	// versions of release and path, parsed once for all devices
	versions versions
}

// versions are the release's and the stepping stones' versions, parsed:
// versionRules compares each device's with them, and Masterminds'
// NewVersion runs a regular expression.
type versions struct {
	to     *semver.Version
	stones []*semver.Version // path's, in its order
}

// parseVersions parses rel's and path's versions once.
func parseVersions(rel release.Release, path []release.Release) versions {
	v := versions{stones: make([]*semver.Version, len(path))}
	v.to, _ = semver.NewVersion(rel.Version)
	for i, s := range path {
		v.stones[i], _ = semver.NewVersion(s.Version)
	}
	return v
}

// parsed returns version s, the one of index i of v (-1: the release's),
// from v when it was parsed there from s.
func (v *versions) parsed(i int, s string) *semver.Version {
	var p *semver.Version
	switch {
	case i < 0:
		p = v.to
	case i < len(v.stones):
		p = v.stones[i]
	}
	if p != nil && p.Original() == s {
		return p
	}
	return semver.MustParse(s)
}

// PlanView is a plan as operators see it (rollout/plan, rollout/create).
type PlanView struct {
	ID          string `json:"id"`
	Provisional bool   `json:"provisional,omitempty"`
	Release     string `json:"release"`
	Version     string `json:"version"`
	// Path are the stepping stones, oldest first.
	Path []string `json:"upgrade_path,omitempty"`
	// Selected is how many devices the selector picked; Devices how many
	// take part (Selected less the skipped and the unassigned).
	Selected   int `json:"selected"`
	Devices    int `json:"devices"`
	Unassigned int `json:"unassigned"`
	// UnknownLocalTime counts the devices whose local time is not known
	// (no "tz" tag, no birth): their window is in UTC.
	UnknownLocalTime int            `json:"unknown_local_time,omitempty"`
	Waves            []PlanWave     `json:"waves"`
	Skipped          []SkipGroup    `json:"skipped"`
	Steps            map[string]int `json:"steps,omitempty"`
}

// PlanWave is one wave of a plan.
type PlanWave struct {
	Name     string         `json:"name"`
	Percent  Percent        `json:"percent,omitempty"`
	Devices  int            `json:"devices"`
	Skipped  int            `json:"skipped"`
	Hardware map[string]int `json:"hardware,omitempty"`
}

// SkipGroup is the devices skipped for one reason.
type SkipGroup struct {
	Reason  string `json:"reason"`
	Devices int    `json:"devices"`
	// Examples are some of them, by ID.
	Examples []string `json:"examples"`
}

const (
	maxSkipGroups   = 50
	maxSkipExamples = 5
)

func (p *plan) view() *PlanView {
	v := &PlanView{ID: p.id, Release: p.release.ID, Version: p.release.Version, Selected: p.selected,
		Unassigned: p.unassigned, UnknownLocalTime: p.unknownLocal, Skipped: []SkipGroup{}}
	for _, r := range p.path {
		v.Path = append(v.Path, r.ID)
	}
	for _, w := range p.waves {
		v.Waves = append(v.Waves, PlanWave{Name: w.Name, Percent: w.Percent})
	}
	groups := map[string]*SkipGroup{}
	for _, m := range p.members {
		pw := &v.Waves[m.wave]
		if m.skip != "" {
			pw.Skipped++
			g := groups[m.skip]
			if g == nil {
				g = &SkipGroup{Reason: m.skip}
				groups[m.skip] = g
			}
			g.Devices++
			if len(g.Examples) < maxSkipExamples {
				g.Examples = append(g.Examples, m.id)
			}
			continue
		}
		v.Devices++
		pw.Devices++
		if pw.Hardware == nil {
			pw.Hardware = map[string]int{}
		}
		pw.Hardware[m.hw]++
		for i := range p.path {
			if m.need&(1<<i) != 0 {
				if v.Steps == nil {
					v.Steps = map[string]int{}
				}
				v.Steps[p.path[i].ID]++
			}
		}
	}
	for _, g := range groups {
		v.Skipped = append(v.Skipped, *g)
	}
	sort.Slice(v.Skipped, func(i, j int) bool {
		a, b := v.Skipped[i], v.Skipped[j]
		return a.Devices > b.Devices || a.Devices == b.Devices && a.Reason < b.Reason
	})
	if len(v.Skipped) > maxSkipGroups {
		v.Skipped = v.Skipped[:maxSkipGroups]
	}
	return v
}

// planner is what a plan needs to see.
type planner struct {
	fleet   *fleet.Registry
	catalog *release.Catalog
	// holder names the active rollout holding a device ("" none).
	holder func(id string) string
	zones  *zones
}

// plan applies spec (from Parse) under rollout ID id to the fleet now.
// A *SpecError lists every problem: releases that do not exist or cannot be
// offered, devices held by another rollout, waves that select nobody, a
// release no selected device can take.
func (pl *planner) plan(spec *Spec, id string) (*plan, error) {
	var ps problems
	p := &plan{id: id, spec: spec}
	rel, err := pl.catalog.Resolve(spec.Release)
	if err != nil {
		ps.add("release", "%s", refMessage(err))
	} else if err := pl.catalog.Offerable(rel); err != nil {
		ps.add("release", "%s cannot be offered: %v", rel.ID, err)
	}
	p.release = rel
	relVersion, verr := semver.StrictNewVersion(rel.Version)
	if err == nil && verr != nil {
		ps.add("release", "%s has no semantic version (%s)", rel.ID, quote(rel.Version))
	}
	for i, ref := range spec.UpgradePath {
		field := fmt.Sprintf("upgrade_path[%d]", i)
		r, err := pl.catalog.Resolve(ref)
		if err != nil {
			ps.add(field, "%s", refMessage(err))
			continue
		}
		if err := pl.catalog.Offerable(r); err != nil {
			ps.add(field, "%s cannot be offered: %v", r.ID, err)
		}
		v, verr := semver.StrictNewVersion(r.Version)
		switch {
		case r.Kind != manifest.KindFirmware || rel.Kind != manifest.KindFirmware:
			ps.add(field, "stepping stones are firmware releases on the way to a firmware release")
		case verr != nil || relVersion == nil:
			ps.add(field, "%s has no semantic version", r.ID)
		case !v.LessThan(relVersion):
			ps.add(field, "%s is not older than the release %s", r.ID, rel.Version)
		}
		for _, q := range p.path {
			if q.Version == r.Version {
				ps.add(field, "two stepping stones of version %s", r.Version)
			}
		}
		p.path = append(p.path, r)
	}
	if len(ps) > 0 {
		return nil, ps.err()
	}
	slices.SortFunc(p.path, func(a, b release.Release) int {
		return semver.MustParse(a.Version).Compare(semver.MustParse(b.Version))
	})
	p.versions = parseVersions(p.release, p.path)
	for _, w := range spec.Waves {
		if len(w.Percent) == 0 {
			p.waves = append(p.waves, wave{Name: w.Name, State: WavePending})
			continue
		}
		for _, pc := range w.Percent {
			p.waves = append(p.waves, wave{Name: pc.String(), Percent: pc, State: WavePending})
		}
	}
	sel := &spec.Selector
	listed := map[string]bool{}
	for _, id := range sel.Devices {
		listed[id] = true
	}
	inWave := map[string]int{} // device → named wave of its devices list
	for i, w := range spec.Waves {
		for _, d := range w.Devices {
			if _, dup := inWave[d]; !dup {
				inWave[d] = i
			}
		}
	}
	seen := map[string]bool{}
	var conflicts []string
	namedCount := make([]int, len(p.waves))
	pl.fleet.Each(func(v *fleet.View) {
		d := &v.Device
		if !d.Role.IsDevice() || !selects(sel, spec.version, v, listed) {
			return
		}
		seen[d.ID] = true
		p.selected++
		m := planned{id: d.ID, hw: hardwareOf(v), region: d.Region, wave: -1}
		if wi, ok := inWave[d.ID]; ok {
			m.wave = wi
		} else {
			for wi, w := range spec.Waves {
				if len(w.Groups) > 0 && slices.ContainsFunc(w.Groups, d.InGroup) {
					m.wave = wi
					break
				}
			}
		}
		if m.wave >= 0 {
			m.wave = waveIndex(spec, m.wave)
			namedCount[m.wave]++
		} else if last := spec.Waves[len(spec.Waves)-1]; len(last.Percent) > 0 {
			c := cohort(id, d.ID)
			first := waveIndex(spec, len(spec.Waves)-1)
			for j, pc := range last.Percent {
				if c < uint32(pc) {
					m.wave = first + j
					break
				}
			}
		}
		if m.wave < 0 {
			p.unassigned++
			return
		}
		if h := pl.holder(d.ID); h != "" {
			conflicts = append(conflicts, fmt.Sprintf("%s (in rollout %s)", d.ID, h))
		}
		m.need, m.skip = pl.eligible(p, v)
		if _, known := pl.zones.local(v).in(time.Time{}); !known && m.skip == "" {
			p.unknownLocal++
		}
		p.members = append(p.members, m)
	})
	for _, id := range sel.Devices {
		if !seen[id] {
			if _, ok := pl.fleet.Lookup(id); ok {
				ps.add("selector.devices", "%s does not match the selector's other conditions (or is not a device)", id)
			} else {
				ps.add("selector.devices", "%s is not registered", id)
			}
		}
	}
	for i, w := range spec.Waves {
		for _, d := range w.Devices {
			if !seen[d] {
				ps.add(fmt.Sprintf("waves[%d].devices", i), "%s is not selected (not registered, or outside the selector)", d)
			}
		}
	}
	if len(conflicts) > 0 {
		sort.Strings(conflicts)
		more := ""
		if len(conflicts) > 10 {
			more = fmt.Sprintf(" and %d more", len(conflicts)-10)
			conflicts = conflicts[:10]
		}
		ps.add("selector", "%d device(s) belong to another active rollout (a device takes part in one at a time): %s%s",
			len(conflicts), strings.Join(conflicts, ", "), more)
	}
	sort.Slice(p.members, func(i, j int) bool { return p.members[i].id < p.members[j].id })
	taking := make([]int, len(p.waves))
	var reasons []string
	for _, m := range p.members {
		if m.skip == "" {
			taking[m.wave]++
		} else if len(reasons) < 3 && !slices.Contains(reasons, m.skip) {
			reasons = append(reasons, m.skip)
		}
	}
	for i, w := range spec.Waves {
		if len(w.Percent) > 0 {
			continue
		}
		wi := waveIndex(spec, i)
		field := fmt.Sprintf("waves[%d]", i)
		switch {
		case namedCount[wi] == 0:
			ps.add(field, "wave %s selects no device (none of the selector's devices is in it)", w.Name)
		case taking[wi] == 0:
			ps.add(field, "every device of wave %s is skipped (%s)", w.Name, strings.Join(reasons, "; "))
		}
	}
	total := 0
	for _, n := range taking {
		total += n
	}
	if total == 0 && len(ps) == 0 {
		if p.selected == 0 {
			ps.add("selector", "selects no device")
		} else {
			ps.add("release", "no selected device can take %s: %s", rel.ID, strings.Join(reasons, "; "))
		}
	}
	if err := ps.err(); err != nil {
		return nil, err
	}
	return p, nil
}

// waveIndex maps a spec wave to the index of its first plan wave.
func waveIndex(spec *Spec, i int) int {
	n := 0
	for j := 0; j < i; j++ {
		if len(spec.Waves[j].Percent) > 0 {
			n += len(spec.Waves[j].Percent)
		} else {
			n++
		}
	}
	return n
}

func hardwareOf(v *fleet.View) string { return registeredOr(&v.Device, v.Status.ReportedHardware) }

// registeredOr is d's registered hardware, or the one it reported when none
// is registered.
func registeredOr(d *fleet.Device, reported string) string {
	if d.Hardware != "" {
		return d.Hardware
	}
	return reported
}

func connectivityOf(v *fleet.View) string {
	if v.Connectivity != "" {
		return v.Connectivity
	}
	if v.Status.BirthAt.IsZero() {
		return ""
	}
	return v.Status.Link
}

// selects reports whether the selector picks v.
func selects(sel *Selector, version *semver.Constraints, v *fleet.View, listed map[string]bool) bool {
	d := &v.Device
	switch {
	case len(listed) > 0 && !listed[d.ID],
		len(sel.Hardware) > 0 && !slices.Contains(sel.Hardware, hardwareOf(v)),
		len(sel.Region) > 0 && !slices.Contains(sel.Region, d.Region),
		len(sel.Connectivity) > 0 && !slices.Contains(sel.Connectivity, connectivityOf(v)),
		len(sel.Groups) > 0 && !slices.ContainsFunc(sel.Groups, d.InGroup):
		return false
	}
	for k, want := range sel.Tags {
		if got, ok := d.Tags[k]; !ok || got != want {
			return false
		}
	}
	if version != nil {
		fw, err := semver.StrictNewVersion(v.Status.Firmware)
		if err != nil || !version.Check(fw) {
			return false
		}
	}
	return true
}

// eligible decides whether device v can take the plan's release, and which
// stepping stones it needs first; a non-empty reason skips it.
func (pl *planner) eligible(p *plan, v *fleet.View) (need uint8, skip string) {
	switch {
	case v.Revoked:
		return 0, "revoked"
	case hardwareOf(v) == "":
		return 0, "no known hardware (register it with --hardware, or let it send a birth)"
	}
	hw := hardwareOf(v)
	if !slices.Contains(p.release.Hardware, hw) {
		return 0, fmt.Sprintf("wrong hardware: the release targets %s, not %s", strings.Join(p.release.Hardware, ","), hw)
	}
	if p.release.Kind != manifest.KindFirmware {
		return 0, "" // configurations and flags have versions of their own, which births do not carry
	}
	if v.Status.BirthAt.IsZero() || v.Status.Firmware == "" {
		return 0, "" // judged when it is offered
	}
	return pl.versionRules(p, v.Status.Firmware, v.Status.SecureVersion, hw)
}

// versionRules checks the hops from a running version to the release
// along the stepping stones above it.
func (pl *planner) versionRules(p *plan, running string, secure uint32, hw string) (need uint8, skip string) {
	from, err := semver.StrictNewVersion(running)
	if err != nil {
		return 0, fmt.Sprintf("runs %s, which is not a semantic version", quote(running))
	}
	if p.release.SecureVersion < secure {
		return 0, fmt.Sprintf("secure version: the release has %d, the device %d (it would refuse it)", p.release.SecureVersion, secure)
	}
	at := from
	for i, stone := range p.path {
		sv := p.versions.parsed(i, stone.Version)
		if !sv.GreaterThan(from) {
			continue
		}
		if !slices.Contains(stone.Hardware, hw) {
			return 0, fmt.Sprintf("upgrade path: %s does not target %s", stone.ID, hw)
		}
		if stone.SecureVersion < secure {
			return 0, fmt.Sprintf("upgrade path: %s has secure version %d, the device %d", stone.ID, stone.SecureVersion, secure)
		}
		if why := p.spec.Versions.hop(at, sv); why != "" {
			return 0, why
		}
		need |= 1 << i
		at = sv
	}
	to := p.versions.parsed(-1, p.release.Version)
	if why := p.spec.Versions.hop(at, to); why != "" {
		if need == 0 && len(p.path) > 0 && to.GreaterThan(at) {
			why += "; and no stepping stone of the upgrade path lies between"
		}
		return 0, why
	}
	return need, ""
}

// refMessage is a release reference error's message.
func refMessage(err error) string {
	var re *release.RefError
	if errors.As(err, &re) {
		return re.Error()
	}
	return err.Error()
}
