package rollout

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	_ "time/tzdata" // zones named by devices' tags, on machines without a zone database

	"github.com/otamq/otamq/ota/fleet"
)

// Window is a recurring maintenance window in each device's local time:
// from Start to End (an End before Start runs past midnight) on Days (the
// day the window opens; default every day).
type Window struct {
	Start string   `yaml:"start" json:"start"`
	End   string   `yaml:"end" json:"end"`
	Days  []string `yaml:"days" json:"days,omitempty"`

	start, end int // minutes after midnight
	days       uint8
}

var dayNames = []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

func (w *Window) check(ps *problems) {
	parse := func(field, v string) int {
		m := clockTime.FindStringSubmatch(v)
		if m == nil {
			ps.add("window."+field, "%s: want HH:MM (00:00 to 23:59)", quote(v))
			return -1
		}
		h, _ := strconv.Atoi(m[1])
		min, _ := strconv.Atoi(m[2])
		return h*60 + min
	}
	w.start, w.end = parse("start", w.Start), parse("end", w.End)
	if w.start >= 0 && w.start == w.end {
		ps.add("window", "start and end are both %s: an empty window (for all day, leave the window out)", w.Start)
	}
	w.days = 0
	for i, d := range w.Days {
		j := index(dayNames, strings.ToLower(d))
		if j < 0 {
			ps.add(fmt.Sprintf("window.days[%d]", i), "%s: want mon, tue, wed, thu, fri, sat or sun", quote(d))
			continue
		}
		w.days |= 1 << j
	}
	if len(w.Days) == 0 {
		w.days = 0x7f
	}
}

func index(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}

// open reports whether the window is open at t (already in the device's
// local time) and, if so, when it closes.
func (w *Window) open(t time.Time) (bool, time.Time) {
	mins := t.Hour()*60 + t.Minute()
	midnight := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, t.Location())
	day := int(t.Weekday())
	if w.start < w.end {
		if w.days&(1<<day) != 0 && mins >= w.start && mins < w.end {
			return true, midnight.Add(time.Duration(w.end) * time.Minute)
		}
		return false, time.Time{}
	}
	// Past midnight: open from start today, or until end on the morning
	// after a window day.
	if w.days&(1<<day) != 0 && mins >= w.start {
		return true, midnight.AddDate(0, 0, 1).Add(time.Duration(w.end) * time.Minute)
	}
	prev := (day + 6) % 7
	if w.days&(1<<prev) != 0 && mins < w.end {
		return true, midnight.Add(time.Duration(w.end) * time.Minute)
	}
	return false, time.Time{}
}

// next returns when the window next opens at or after t (local time).
func (w *Window) next(t time.Time) time.Time {
	if ok, _ := w.open(t); ok {
		return t
	}
	midnight := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, t.Location())
	for d := 0; d <= 7; d++ {
		day := midnight.AddDate(0, 0, d)
		if w.days&(1<<int(day.Weekday())) == 0 {
			continue
		}
		at := day.Add(time.Duration(w.start) * time.Minute)
		if at.After(t) {
			return at
		}
	}
	return time.Time{} // no day: cannot happen after check
}

// Local is how a device's local time is known.
type Local struct {
	// Zone is an IANA zone from the device's "tz" tag; nil when none.
	Zone *time.Location
	// Offset is the UTC offset from the device's birth, with HasOffset.
	Offset    int16
	HasOffset bool
}

// in returns t in the device's local time; known reports whether it is
// known (otherwise UTC).
func (l Local) in(t time.Time) (time.Time, bool) {
	switch {
	case l.Zone != nil:
		return t.In(l.Zone), true
	case l.HasOffset:
		return t.In(time.FixedZone("", int(l.Offset)*60)), true
	}
	return t.UTC(), false
}

// TagZone is the device tag that names its IANA time zone
// ("Europe/Berlin"); it wins over the UTC offset of its birth, because it
// knows daylight saving time.
const TagZone = "tz"

// zones caches time zones by name. Names come from operators' tags; a
// bounded number are kept.
type zones struct {
	mu sync.Mutex
	m  map[string]*time.Location
}

const maxZones = 1024

func (z *zones) get(name string) *time.Location {
	z.mu.Lock()
	defer z.mu.Unlock()
	if loc, ok := z.m[name]; ok {
		return loc
	}
	loc, err := time.LoadLocation(name)
	if err != nil || name == "" || name == "Local" {
		loc = nil
	}
	if z.m == nil {
		z.m = map[string]*time.Location{}
	}
	if len(z.m) < maxZones {
		z.m[name] = loc
	}
	return loc
}

// local returns how device v's local time is known.
func (z *zones) local(v *fleet.View) Local {
	var l Local
	if name, ok := v.Tags[TagZone]; ok {
		l.Zone = z.get(name)
	}
	if !v.Status.BirthAt.IsZero() {
		l.Offset, l.HasOffset = v.Status.UTCOffsetMinutes, true
	}
	return l
}
