package sim

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Window is a daily span of local time, [Start, End) since midnight; one
// whose End is before its Start wraps over midnight.
type Window struct {
	Start, End time.Duration
}

const day = 24 * time.Hour

// ParseWindow reads "HH:MM-HH:MM" (seconds allowed: "HH:MM:SS").
func ParseWindow(s string) (Window, error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return Window{}, fmt.Errorf("window %q: want HH:MM-HH:MM", s)
	}
	start, err := parseClock(a)
	if err != nil {
		return Window{}, fmt.Errorf("window %q: %w", s, err)
	}
	end, err := parseClock(b)
	if err != nil {
		return Window{}, fmt.Errorf("window %q: %w", s, err)
	}
	w := Window{Start: start, End: end}
	return w, w.Validate()
}

func parseClock(s string) (time.Duration, error) {
	parts := strings.Split(strings.TrimSpace(s), ":")
	if len(parts) < 2 || len(parts) > 3 {
		return 0, fmt.Errorf("%q: want HH:MM or HH:MM:SS", s)
	}
	limits := []int{23, 59, 59}
	var d time.Duration
	units := []time.Duration{time.Hour, time.Minute, time.Second}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || len(p) != 2 || n < 0 || n > limits[i] {
			return 0, fmt.Errorf("%q: want HH:MM or HH:MM:SS", s)
		}
		d += time.Duration(n) * units[i]
	}
	return d, nil
}

// Validate checks that both ends are times of day and differ.
func (w Window) Validate() error {
	if w.Start < 0 || w.Start >= day || w.End < 0 || w.End >= day {
		return fmt.Errorf("window %s: times must be within a day", w)
	}
	if w.Start == w.End {
		return fmt.Errorf("window %s: start and end are the same", w)
	}
	return nil
}

func (w Window) String() string { return clock(w.Start) + "-" + clock(w.End) }

func clock(d time.Duration) string {
	h, m, s := int(d/time.Hour), int(d%time.Hour/time.Minute), int(d%time.Minute/time.Second)
	if s != 0 {
		return fmt.Sprintf("%02d:%02d:%02d", h, m, s)
	}
	return fmt.Sprintf("%02d:%02d", h, m)
}

// MarshalText implements encoding.TextMarshaler.
func (w Window) MarshalText() ([]byte, error) { return []byte(w.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (w *Window) UnmarshalText(b []byte) error {
	v, err := ParseWindow(string(b))
	if err != nil {
		return err
	}
	*w = v
	return nil
}

// timeOfDay is now in the time zone offsetMin minutes east of UTC, as time
// since that zone's midnight.
func timeOfDay(now time.Time, offsetMin int16) time.Duration {
	t := now.UTC().Add(time.Duration(offsetMin) * time.Minute)
	mid := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	return t.Sub(mid)
}

// contains reports whether now, in the zone offsetMin east of UTC, is in w.
func (w Window) contains(now time.Time, offsetMin int16) bool {
	tod := timeOfDay(now, offsetMin)
	if w.Start < w.End {
		return tod >= w.Start && tod < w.End
	}
	return tod >= w.Start || tod < w.End
}

// next returns the first start or end of w after now.
func (w Window) next(now time.Time, offsetMin int16) time.Time {
	tod := timeOfDay(now, offsetMin)
	until := func(b time.Duration) time.Duration {
		d := (b - tod) % day
		if d <= 0 {
			d += day
		}
		return d
	}
	return now.Add(min(until(w.Start), until(w.End)))
}
