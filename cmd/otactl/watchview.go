package main

import (
	"fmt"
	"slices"
	"strings"
	"time"

	tea "charm.land/bubbletea/v2"
	"charm.land/lipgloss/v2"
	"github.com/charmbracelet/x/ansi"

	"github.com/otamq/otamq/ota/rollout"
)

// The live view of otactl rollout watch on a terminal (Bubble Tea for the
// screen and the keys, Lip Gloss for the styles): the rollout's state and
// reason, a bar and the counts per wave, the alarms, the time to what comes
// next, the state of the link.

// doneMsg: the follower has ended (nil: the rollout is finished).
type doneMsg struct{ err error }

// tickMsg moves the clock of the countdowns.
type tickMsg time.Time

// stopMsg: the operator stopped watching (q, Ctrl-C, a signal).
type stopMsg struct{}

// watchModel is the live view's state; the follower's messages change it.
type watchModel struct {
	id      string
	view    *rollout.View
	link    string // what is wrong with the link ("": up)
	width   int
	now     time.Time
	stopped bool  // by the operator
	err     error // why the follower ended, if it failed
}

func newWatchModel(id string) *watchModel { return &watchModel{id: id, width: 100, now: time.Now()} }

// newWatchProgram runs m inline (no alternate screen: the last frame stays
// when it ends). An interrupt (SIGINT, or Ctrl-C when the input is not a
// terminal) ends it like q does, with its last frame drawn, rather than
// killing it.
func newWatchProgram(m *watchModel, opts ...tea.ProgramOption) *tea.Program {
	opts = append(opts, tea.WithFilter(func(_ tea.Model, msg tea.Msg) tea.Msg {
		if _, ok := msg.(tea.InterruptMsg); ok {
			return stopMsg{}
		}
		return msg
	}))
	return tea.NewProgram(m, opts...)
}

func tick() tea.Cmd { return tea.Tick(time.Second, func(t time.Time) tea.Msg { return tickMsg(t) }) }

// Init implements tea.Model.
func (m *watchModel) Init() tea.Cmd { return tick() }

// Update implements tea.Model.
func (m *watchModel) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case watchMsg:
		if msg.view != nil {
			m.view = msg.view
			if finished(m.view.State) {
				return m, tea.Quit
			}
		}
		if msg.link != nil {
			m.link = *msg.link
		}
	case doneMsg:
		m.err = msg.err
		return m, tea.Quit
	case stopMsg:
		m.stopped = true
		return m, tea.Quit
	case tea.KeyPressMsg:
		switch msg.String() {
		case "q", "ctrl+c", "esc":
			m.stopped = true
			return m, tea.Quit
		}
	case tea.WindowSizeMsg:
		m.width = msg.Width
	case tickMsg:
		m.now = time.Time(msg)
		return m, tick()
	}
	return m, nil
}

// Styles of the live view.
var (
	stBold    = lipgloss.NewStyle().Bold(true)
	stFaint   = lipgloss.NewStyle().Faint(true)
	stOK      = lipgloss.NewStyle().Foreground(lipgloss.Green)
	stBad     = lipgloss.NewStyle().Foreground(lipgloss.Red)
	stMoving  = lipgloss.NewStyle().Foreground(lipgloss.Yellow)
	stTodo    = lipgloss.NewStyle().Foreground(lipgloss.BrightBlack)
	stWarn    = lipgloss.NewStyle().Foreground(lipgloss.Yellow).Bold(true)
	stAlarm   = lipgloss.NewStyle().Foreground(lipgloss.BrightWhite).Background(lipgloss.Red).Bold(true)
	stateLook = map[string]lipgloss.Style{
		rollout.StateRunning:   lipgloss.NewStyle().Foreground(lipgloss.Black).Background(lipgloss.Green).Bold(true),
		rollout.StatePaused:    lipgloss.NewStyle().Foreground(lipgloss.Black).Background(lipgloss.Yellow).Bold(true),
		rollout.StateAborted:   lipgloss.NewStyle().Foreground(lipgloss.BrightWhite).Background(lipgloss.Red).Bold(true),
		rollout.StateCompleted: lipgloss.NewStyle().Foreground(lipgloss.Black).Background(lipgloss.Cyan).Bold(true),
	}
	waveLook = map[string]lipgloss.Style{
		rollout.WaveRunning: stMoving, rollout.WaveBaking: stMoving, rollout.WavePassed: stOK,
		rollout.WaveHalted: stBad, rollout.WaveStopped: stBad,
	}
)

// View implements tea.Model.
func (m *watchModel) View() tea.View { return tea.NewView(m.render()) }

// render draws the view as text with styles.
func (m *watchModel) render() string {
	var b strings.Builder
	line := func(s string) { b.WriteString(ansi.Truncate(s, max(m.width-1, 20), "…") + "\n") }
	v := m.view
	if v == nil {
		line(stFaint.Render("rollout " + m.id + ": waiting for the broker..."))
		if m.link != "" {
			line(stBad.Render(m.link))
		}
		return b.String()
	}
	look, ok := stateLook[v.State]
	if !ok {
		look = lipgloss.NewStyle().Reverse(true).Bold(true)
	}
	title := "rollout " + v.ID
	if v.Name != "" {
		title += " (" + v.Name + ")"
	}
	line(stBold.Render(title) + "  " + look.Render(" "+strings.ToUpper(v.State)+" ") + "  " +
		stFaint.Render(fmt.Sprintf("release %s, %d devices", v.Release, v.Devices)))
	if v.Reason != "" {
		st := stWarn
		if v.PausedBy == rollout.PauseThreshold || v.State == rollout.StateAborted {
			st = stBad.Bold(true)
		}
		line(st.Render("reason: " + v.Reason))
	}
	line(m.totals(v.Counts))
	line("")

	barWidth := min(max(m.width-60, 10), 40)
	nameWidth := 6
	for _, w := range v.Waves {
		nameWidth = max(nameWidth, len(w.Name))
	}
	for _, w := range v.Waves {
		st, ok := waveLook[w.State]
		if !ok {
			st = stFaint
		}
		row := fmt.Sprintf("%-*s %s %s %s", nameWidth, w.Name, st.Render(fmt.Sprintf("%-8s", w.State)),
			colourBar(w.Counts, w.Devices, barWidth), fmt.Sprintf("%4d/%-4d", w.Counts["succeeded"], w.Devices))
		var notes []string
		if n := sum(w.Counts, stateMoving); n > 0 {
			notes = append(notes, stMoving.Render(fmt.Sprintf("%d under way", n)))
		}
		if f := failedText(w.Counts); f != "" {
			notes = append(notes, stBad.Render(f))
		}
		if w.Judged > 0 {
			notes = append(notes, stFaint.Render(fmt.Sprintf("rollbacks %s, health %s", w.RollbackRate, w.HealthRate)))
		}
		if w.State == rollout.WaveBaking && !w.BakeUntil.IsZero() {
			notes = append(notes, stMoving.Render("bake ends "+untilText(w.BakeUntil, m.now)))
		}
		line(row + "  " + strings.Join(notes, "  "))
	}
	if len(v.Alarms) > 0 {
		line("")
		first := max(len(v.Alarms)-5, 0)
		if first > 0 {
			line(stFaint.Render(fmt.Sprintf("%d earlier alarm%s (otactl rollout status %s)", first, plural(first), v.ID)))
		}
		for i := first; i < len(v.Alarms); i++ {
			a := &v.Alarms[i]
			st := stWarn
			if a.Level == "pause" {
				st = stAlarm
			}
			line(st.Render(" "+strings.ToUpper(a.Level)+" ") + " " + a.Time.Local().Format("15:04:05") + " " + alarmMessage(a))
		}
	}
	line("")
	if v.Next != nil {
		line(stBold.Render(nextText(v, m.now)))
	}
	if v.State == rollout.StatePaused {
		line(stWarn.Render("paused: nothing new is offered; otactl rollout resume " + v.ID + " goes on"))
	}
	if m.link != "" {
		line(stBad.Render("link: " + m.link))
	}
	if !finished(v.State) {
		line(stFaint.Render("q: stop watching (the rollout goes on)"))
	}
	return b.String()
}

// totals is the rollout's counts by state, coloured by what they mean.
func (m *watchModel) totals(counts map[string]int) string {
	var parts []string
	for _, s := range rollout.States() {
		n := counts[s]
		if n == 0 {
			continue
		}
		st := stFaint
		switch {
		case s == "succeeded":
			st = stOK
		case slices.Contains(stateFailed, s):
			st = stBad
		case slices.Contains(stateMoving, s):
			st = stMoving
		}
		parts = append(parts, st.Render(fmt.Sprintf("%d %s", n, s)))
	}
	if len(parts) == 0 {
		return stFaint.Render("no device")
	}
	return strings.Join(parts, "  ")
}

// colourBar is bar in colour: succeeded green, failed red, under way
// yellow, still to do grey.
func colourBar(counts map[string]int, devices, width int) string {
	if devices <= 0 {
		return stTodo.Render(strings.Repeat("─", width))
	}
	s := segments(counts, devices, width)
	return stOK.Render(strings.Repeat("█", s[0])) + stBad.Render(strings.Repeat("█", s[1])) +
		stMoving.Render(strings.Repeat("▒", s[2])) + stTodo.Render(strings.Repeat("░", s[3]))
}
