package main

import (
	"strings"
	"testing"
	"time"

	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/ansi"

	"github.com/otamq/otamq/ota/rollout"
)

func counts(kv ...any) map[string]int {
	m := map[string]int{}
	for _, s := range rollout.States() {
		m[s] = 0
	}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i].(string)] = kv[i+1].(int)
	}
	return m
}

// Bars always fill their width, in proportion, and a share that is not
// zero shows.
func TestSegments(t *testing.T) {
	cases := []struct {
		c       map[string]int
		devices int
		want    [4]int
	}{
		{counts("eligible", 10), 10, [4]int{0, 0, 0, 20}},
		{counts("succeeded", 10), 10, [4]int{20, 0, 0, 0}},
		{counts("succeeded", 3, "rolled_back", 1), 4, [4]int{15, 5, 0, 0}},
		{counts("succeeded", 13, "rolled_back", 1), 14, [4]int{19, 1, 0, 0}},
		{counts("succeeded", 1, "downloading", 1, "eligible", 998), 1000, [4]int{1, 0, 1, 18}},
		{counts("failed", 1, "timed_out", 1, "trial", 2, "eligible", 6), 10, [4]int{0, 4, 4, 12}},
		{counts(), 0, [4]int{0, 0, 0, 0}},
	}
	for _, c := range cases {
		got := segments(c.c, c.devices, 20)
		if got != c.want {
			t.Errorf("segments(%v of %d) = %v, want %v", c.c, c.devices, got, c.want)
		}
		if c.devices > 0 && got[0]+got[1]+got[2]+got[3] != 20 {
			t.Errorf("segments(%v) add up to %d", c.c, got[0]+got[1]+got[2]+got[3])
		}
	}
	if b := bar(counts("succeeded", 1, "failed", 1, "offered", 1, "eligible", 1), 4, 8); b != "##xx>>.." {
		t.Errorf("bar %q", b)
	}
}

// A View never goes back: not from a finished rollout, not to an older
// record.
func TestNewer(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	run := &rollout.View{State: rollout.StateRunning, Updated: t0}
	done := &rollout.View{State: rollout.StateCompleted, Updated: t0.Add(time.Second)}
	old := &rollout.View{State: rollout.StatePaused, Updated: t0.Add(-time.Second)}
	same := &rollout.View{State: rollout.StateRunning, Updated: t0}
	for _, c := range []struct {
		cur, v *rollout.View
		want   bool
	}{
		{nil, run, true}, {run, done, true}, {done, run, false}, {run, old, false}, {run, same, true},
	} {
		if got := newer(c.cur, c.v); got != c.want {
			t.Errorf("newer(%v, %v) = %v", c.cur, c.v, got)
		}
	}
}

// The one-slot mailbox keeps the newest summary and signals once.
func TestLatest(t *testing.T) {
	l := newLatest()
	l.put("t", []byte("1"))
	l.put("t", []byte("2"))
	select {
	case <-l.ready:
	default:
		t.Fatal("not ready")
	}
	if b := l.take(); string(b) != "2" {
		t.Fatalf("took %q", b)
	}
	select {
	case <-l.ready:
		t.Fatal("ready twice")
	default:
	}
	if b := l.take(); b != nil {
		t.Fatalf("took %q again", b)
	}
}

func sampleView(now time.Time) *rollout.View {
	return &rollout.View{ID: "r7", Name: "eu fleet", Release: "1.2.4@83ea0c1f", State: rollout.StatePaused,
		Reason: "wave pilot: rollbacks 6% (3 of 50) passed the pause threshold 5%", PausedBy: rollout.PauseThreshold, Devices: 160,
		Counts: counts("succeeded", 52, "rolled_back", 3, "downloading", 5, "eligible", 100),
		Waves: []rollout.WaveView{
			{Name: "canary", State: rollout.WavePassed, Devices: 10, Counts: counts("succeeded", 10), Judged: 10},
			{Name: "pilot", State: rollout.WaveRunning, Devices: 50, Counts: counts("succeeded", 42, "rolled_back", 3, "downloading", 5),
				Judged: 45, Rollbacks: 3, RollbackRate: 667},
			{Name: "100%", State: rollout.WavePending, Devices: 100, Counts: counts("eligible", 100)},
		},
		Alarms: []rollout.Alarm{{Time: now, Wave: "pilot", Kind: "rollback", Level: "pause", Rate: 600, Judged: 50, Count: 3,
			Message: "wave pilot: rollbacks 6% (3 of 50) passed the pause threshold 5%"}},
		Next: &rollout.Next{What: "end", At: now.Add(90 * time.Minute)},
	}
}

// The live view: state and reason, a line per wave with its bar and
// counts, the alarms, the time to what comes next, the link.
func TestWatchModelRender(t *testing.T) {
	now := time.Now()
	m := newWatchModel("r7")
	m.width, m.now = 120, now
	if s := ansi.Strip(m.render()); !strings.Contains(s, "rollout r7: waiting for the broker") {
		t.Fatalf("before the first View:\n%s", s)
	}
	lost := "connection to the broker lost; connecting again in 250ms"
	m.Update(watchMsg{view: sampleView(now)})
	m.Update(watchMsg{link: &lost})
	styled := m.render()
	s := ansi.Strip(styled)
	for _, want := range []string{"rollout r7 (eu fleet)", " PAUSED ", "reason: wave pilot: rollbacks 6%", "52 succeeded  3 rolled_back",
		"canary passed", "10/10", "pilot  running", "42/50", "5 under way", "3 rolled_back", "rollbacks 6.67%",
		"100%   pending", "0/100", " PAUSE ", "passed the pause threshold 5%", "next: the schedule ends it in 1h30m0s",
		"paused: nothing new is offered; otactl rollout resume r7", "link: " + lost, "q: stop watching"} {
		if !strings.Contains(s, want) {
			t.Errorf("the view lacks %q:\n%s", want, s)
		}
	}
	if styled == s {
		t.Error("the view has no styles")
	}
	// The bar (40 cells at this width) is the wave's share: of 50, 42
	// succeeded and 3 failed (34 and 2 full cells), 5 under way (4).
	pilot := ""
	for _, line := range strings.Split(s, "\n") {
		if strings.HasPrefix(line, "pilot") {
			pilot = line
		}
	}
	if strings.Count(pilot, "█") != 36 || strings.Count(pilot, "▒") != 4 || strings.Contains(pilot, "░") {
		t.Errorf("pilot's bar: %s", pilot)
	}
	// Lines are cut to the terminal's width.
	m.Update(tea.WindowSizeMsg{Width: 50, Height: 20})
	for _, line := range strings.Split(ansi.Strip(m.render()), "\n") {
		if w := ansi.StringWidth(line); w > 49 {
			t.Errorf("a line of %d cells on a terminal of 50: %s", w, line)
		}
	}
}

// The model quits when the rollout is finished (without offering q in its
// last frame), when the operator presses q, and when the follower fails.
func TestWatchModelQuits(t *testing.T) {
	quits := func(cmd tea.Cmd) bool {
		if cmd == nil {
			return false
		}
		_, ok := cmd().(tea.QuitMsg)
		return ok
	}
	m := newWatchModel("r7")
	v := sampleView(time.Now())
	if _, cmd := m.Update(watchMsg{view: v}); quits(cmd) {
		t.Fatal("quit on a paused rollout")
	}
	done := *v
	done.State, done.Reason = rollout.StateCompleted, ""
	if _, cmd := m.Update(watchMsg{view: &done}); !quits(cmd) || m.stopped {
		t.Fatal("no quit on a completed rollout")
	}
	if s := ansi.Strip(m.render()); strings.Contains(s, "q: stop watching") || !strings.Contains(s, " COMPLETED ") {
		t.Errorf("last frame:\n%s", s)
	}
	m = newWatchModel("r7")
	if _, cmd := m.Update(tea.KeyPressMsg{Code: 'q', Text: "q"}); !quits(cmd) || !m.stopped {
		t.Fatal("q does not stop")
	}
	m = newWatchModel("r7")
	if _, cmd := m.Update(stopMsg{}); !quits(cmd) || !m.stopped {
		t.Fatal("an interrupt does not stop")
	}
	m = newWatchModel("r7")
	if _, cmd := m.Update(doneMsg{err: errTest}); !quits(cmd) || m.err != errTest {
		t.Fatal("a failed follower does not end the view")
	}
}

var errTest = usagef("test")

// The plain line names the state, the counts and each wave; alarms say
// their level and message.
func TestPlainLine(t *testing.T) {
	v := sampleView(time.Now())
	want := "r7 paused (wave pilot: rollbacks 6% (3 of 50) passed the pause threshold 5%): 52/160 succeeded, 5 under way, 3 rolled_back" +
		" | canary passed 10/10 | pilot running 42/50 3 rolled_back | 100% pending 0/100"
	if got := plainLine(v); got != want {
		t.Errorf("plain line\n%s\nwant\n%s", got, want)
	}
	if got := alarmText(&v.Alarms[0]); got != "PAUSE wave pilot: rollbacks 6% (3 of 50) passed the pause threshold 5%" {
		t.Errorf("alarm %q", got)
	}
	a := rollout.Alarm{Wave: "canary", Slice: "hardware esp32-v3", Kind: "health", Level: "warn", Rate: 1250, Judged: 8, Count: 1}
	if got := alarmText(&a); got != "WARN wave canary, hardware esp32-v3: health 12.5% (1 of 8 judged)" {
		t.Errorf("alarm without a message %q", got)
	}
}
