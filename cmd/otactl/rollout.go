package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/otamq/otamq/cmd/otactl/rpc"
	"github.com/otamq/otamq/ota/rollout"
)

// The rollout commands: staged rollouts the broker runs (docs/ROLLOUTS.md
// for the spec, docs/OPERATORS.md "Rollouts" for these commands).

// readSpec reads the spec file named by the one argument ("-": standard
// input). A file that cannot be a spec (missing, empty, larger than
// rollout.MaxSpecSize) is a usage mistake: nothing is sent.
func readSpec(e *env, args []string) (text []byte, name string, err error) {
	if len(args) != 1 {
		return nil, "", usagef("want the rollout spec, FILE.yaml or - for standard input (docs/ROLLOUTS.md)")
	}
	name = args[0]
	var r io.Reader
	if name == "-" {
		name, r = "standard input", e.stdin
	} else {
		f, err := os.Open(name)
		if err != nil {
			return nil, "", usagef("%v", err)
		}
		defer f.Close()
		r = f
	}
	text, err = io.ReadAll(io.LimitReader(r, rollout.MaxSpecSize+1))
	switch {
	case err != nil:
		return nil, "", fmt.Errorf("read %s: %w", name, err)
	case len(text) > rollout.MaxSpecSize:
		return nil, "", usagef("%s: more than %d bytes, the most a rollout spec may have", name, rollout.MaxSpecSize)
	case len(strings.TrimSpace(string(text))) == 0:
		return nil, "", usagef("%s is empty: want a rollout spec (docs/ROLLOUTS.md)", name)
	}
	return text, name, nil
}

// specRefused prints every problem of a refused spec, one "field: message"
// a line on standard error, and returns the error to exit with; other
// errors come back as they are.
func specRefused(e *env, name, what string, err error) error {
	var re *rpc.RemoteError
	if !errors.As(err, &re) || len(re.Problems) == 0 {
		return err
	}
	for _, p := range re.Problems {
		if p.Field != "" {
			fmt.Fprintf(e.errOut, "%s: %s\n", p.Field, p.Message)
		} else {
			fmt.Fprintln(e.errOut, p.Message)
		}
	}
	n := len(re.Problems)
	return fmt.Errorf("the broker refused %s: %d problem%s (above); %s", name, n, plural(n), what)
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

var rolloutCreateCmd = command{
	run: func(ctx context.Context, e *env, args []string) error {
		text, name, err := readSpec(e, args)
		if err != nil {
			return err
		}
		var res struct {
			Rollout rollout.View     `json:"rollout"`
			Plan    rollout.PlanView `json:"plan"`
		}
		if err := e.call(ctx, "rollout/create", map[string]any{"yaml": string(text)}, &res); err != nil {
			return specRefused(e, name, "nothing was created", err)
		}
		if e.g.json {
			return e.printJSON(res)
		}
		v := &res.Rollout
		fmt.Fprintf(e.out, "created rollout %s (%s)\n", v.ID, v.State)
		printPlan(e.out, &res.Plan)
		if v.State == rollout.StateAwaitingApproval {
			fmt.Fprintf(e.errOut, "Another operator approves it (otactl rollout approve %s), then it can start (otactl rollout start %s).\n", v.ID, v.ID)
		} else {
			fmt.Fprintf(e.errOut, "Nothing is offered until it starts: otactl rollout start %s\n", v.ID)
		}
		return nil
	},
}

var rolloutPlanCmd = command{
	flags: func(fs *flag.FlagSet) {
		fs.String("id", "", "plan of a rollout that exists (instead of FILE.yaml)")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		req := map[string]any{}
		name := ""
		if id := flagStr(e.fs, "id"); id != "" {
			if len(args) != 0 {
				return usagef("give FILE.yaml or --id ID, not both")
			}
			req["id"] = id
		} else {
			text, n, err := readSpec(e, args)
			if err != nil {
				return err
			}
			req["yaml"], name = string(text), n
		}
		var p rollout.PlanView
		if err := e.call(ctx, "rollout/plan", req, &p); err != nil {
			return specRefused(e, name, "nothing was planned", err)
		}
		if e.g.json {
			return e.printJSON(p)
		}
		printPlan(e.out, &p)
		return nil
	},
}

// printPlan writes a plan: the release, the waves with their devices, who
// is skipped and why, the stepping stones and the devices whose local time
// is not known.
func printPlan(w io.Writer, p *rollout.PlanView) {
	if p.Provisional {
		fmt.Fprintf(w, "plan (provisional: the spec has no id, so the percentage cohorts are drawn for a made-up one, %s;\n"+
			"  give the spec an id to see the devices each percentage wave will take)\n", p.ID)
	} else {
		fmt.Fprintf(w, "plan of rollout %s\n", p.ID)
	}
	fmt.Fprintf(w, "release %s (version %s)\n", p.Release, p.Version)
	if len(p.Path) > 0 {
		fmt.Fprintf(w, "upgrade path: %s, then %s\n", strings.Join(p.Path, ", then "), p.Release)
	}
	skipped := 0
	for _, g := range p.Skipped {
		skipped += g.Devices
	}
	fmt.Fprintf(w, "selected %d devices: %d take part, %d skipped", p.Selected, p.Devices, skipped)
	if p.Unassigned > 0 {
		fmt.Fprintf(w, ", %d in no wave (the percentages stop below 100%%)", p.Unassigned)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WAVE\tDEVICES\tSKIPPED\tHARDWARE")
	for _, pw := range p.Waves {
		var hw []string
		for _, h := range slices.Sorted(maps.Keys(pw.Hardware)) {
			hw = append(hw, fmt.Sprintf("%s %d", dash(h), pw.Hardware[h]))
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", pw.Name, pw.Devices, pw.Skipped, dash(strings.Join(hw, ", ")))
	}
	_ = tw.Flush()
	if len(p.Skipped) > 0 {
		fmt.Fprint(w, "\nskipped:\n")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, g := range p.Skipped {
			ex := strings.Join(g.Examples, ", ")
			if len(g.Examples) < g.Devices {
				ex += ", ..."
			}
			fmt.Fprintf(tw, "  %d\t%s\te.g. %s\n", g.Devices, g.Reason, ex)
		}
		_ = tw.Flush()
	}
	if len(p.Steps) > 0 {
		fmt.Fprint(w, "\nstepping stones (taken first by devices too old for the release):\n")
		for _, s := range slices.Sorted(maps.Keys(p.Steps)) {
			fmt.Fprintf(w, "  %s\t%d devices\n", s, p.Steps[s])
		}
	}
	if p.UnknownLocalTime > 0 {
		fmt.Fprintf(w, "\n%d devices have no known local time (no tz tag, no birth yet): their window is in UTC\n", p.UnknownLocalTime)
	}
}

// rolloutVerb is approve, start or resume: ID in, View out.
func rolloutVerb(action, done string) command {
	return command{
		run: func(ctx context.Context, e *env, args []string) error {
			id, err := oneID(args, "rollout")
			if err != nil {
				return err
			}
			var v rollout.View
			if err := e.call(ctx, action, map[string]any{"id": id}, &v); err != nil {
				return err
			}
			return printChanged(e, done, &v)
		},
	}
}

// printChanged reports a rollout's new state after an operator's verb.
func printChanged(e *env, done string, v *rollout.View) error {
	if e.g.json {
		return e.printJSON(v)
	}
	line := fmt.Sprintf("%s rollout %s: %s", done, v.ID, v.State)
	if v.Reason != "" {
		line += " (" + v.Reason + ")"
	}
	fmt.Fprintln(e.out, line)
	if v.Next != nil {
		fmt.Fprintln(e.out, nextText(v, time.Now()))
	}
	return nil
}

func reasonFlag(fs *flag.FlagSet) {
	fs.String("reason", "", "why (shown with the rollout's state, in its events and the audit log)")
}

var rolloutPauseCmd = command{
	flags: reasonFlag,
	run: func(ctx context.Context, e *env, args []string) error {
		id, err := oneID(args, "rollout")
		if err != nil {
			return err
		}
		req := map[string]any{"id": id}
		if r := flagStr(e.fs, "reason"); r != "" {
			req["reason"] = r
		}
		var v rollout.View
		if err := e.call(ctx, "rollout/pause", req, &v); err != nil {
			return err
		}
		if err := printChanged(e, "paused", &v); err != nil || e.g.json {
			return err
		}
		fmt.Fprintf(e.errOut, "No new offers or install commands; devices under way go on. Resume with: otactl rollout resume %s\n", v.ID)
		return nil
	},
}

var rolloutAbortCmd = command{
	flags: reasonFlag,
	run: func(ctx context.Context, e *env, args []string) error {
		id, err := oneID(args, "rollout")
		if err != nil {
			return err
		}
		req := map[string]any{"id": id}
		if r := flagStr(e.fs, "reason"); r != "" {
			req["reason"] = r
		}
		var res struct {
			Rollout    rollout.View         `json:"rollout"`
			Cancelled  int                  `json:"cancelled"`
			Installing []rollout.DeviceView `json:"installing"`
		}
		if err := e.call(ctx, "rollout/abort", req, &res); err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(res)
		}
		v := &res.Rollout
		fmt.Fprintf(e.out, "aborted rollout %s: %s\n", v.ID, v.Reason)
		fmt.Fprintf(e.out, "%d devices that had not begun to install are cancelled (those offered got the empty offer)\n", res.Cancelled)
		if len(res.Installing) == 0 {
			fmt.Fprintln(e.out, "no device was installing")
			return nil
		}
		fmt.Fprintf(e.out, "%d devices had begun to install: they finish, and their results are still recorded:\n", len(res.Installing))
		printRolloutDevices(e.out, res.Installing, time.Now())
		return nil
	},
}

var rolloutStatusCmd = command{
	flags: func(fs *flag.FlagSet) {
		fs.Bool("spec", false, "print only the spec the rollout was created from (YAML)")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		id, err := oneID(args, "rollout")
		if err != nil {
			return err
		}
		var v rollout.View
		if err := e.call(ctx, "rollout/get", map[string]any{"id": id}, &v); err != nil {
			return err
		}
		if flagBool(e.fs, "spec") {
			_, err := io.WriteString(e.out, v.Spec)
			return err
		}
		if e.g.json {
			return e.printJSON(jsonView(&v))
		}
		printStatus(e.out, &v, time.Now())
		return nil
	},
}

// outView is a View as otactl prints it in JSON (status, watch): as the
// broker's summaries carry it, without the spec, and with "reason" even
// when it is empty, so that scripts find every key of the shape.
type outView struct {
	rollout.View
	Reason string `json:"reason"`
}

func jsonView(v *rollout.View) *outView {
	o := &outView{View: *v, Reason: v.Reason}
	o.Spec = ""
	return o
}

// stateFlag checks a --state value against names (a usage mistake
// otherwise).
func stateFlag(fs *flag.FlagSet, names []string) (string, error) {
	s := flagStr(fs, "state")
	if s != "" && !slices.Contains(names, s) {
		return "", usagef("--state %q: want one of %s", s, strings.Join(names, ", "))
	}
	return s, nil
}

var rolloutListCmd = command{
	flags: func(fs *flag.FlagSet) {
		fs.String("state", "", "only rollouts in this state ("+strings.Join(rollout.RolloutStates, ", ")+")")
		fs.Int("limit", 0, "newest rollouts to show (0: all)")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		state, err := stateFlag(e.fs, rollout.RolloutStates)
		if err != nil {
			return err
		}
		limit := flagInt(e.fs, "limit")
		if limit < 0 {
			return usagef("--limit %d: want 0 (all) or more", limit)
		}
		req := map[string]any{}
		if state != "" {
			req["state"] = state
		}
		vs, more, err := collect[rollout.View](ctx, e, "rollout/list", req, "rollouts", "after", limit)
		if err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(vs)
		}
		if len(vs) == 0 {
			fmt.Fprintln(e.out, "no rollout")
			return nil
		}
		tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tRELEASE\tSTATE\tDEVICES\tCREATED\tBY\tREASON")
		for _, v := range vs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", v.ID, dash(v.Name), v.Release, v.State, v.Devices,
				v.Created.Local().Format("2006-01-02 15:04"), v.CreatedBy, dash(v.Reason))
		}
		_ = tw.Flush()
		if more {
			fmt.Fprintf(e.errOut, "more rollouts: --limit more than %d, or 0 for all\n", len(vs))
		}
		return nil
	},
}

var rolloutDevicesCmd = command{
	flags: func(fs *flag.FlagSet) {
		fs.String("state", "", "only devices in this state ("+strings.Join(rollout.States(), ", ")+")")
		fs.String("wave", "", "only devices of this wave (its name, e.g. canary or 5%)")
		fs.Int("limit", 0, "devices to show (0: all, page after page)")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		id, err := oneID(args, "rollout")
		if err != nil {
			return err
		}
		state, err := stateFlag(e.fs, rollout.States())
		if err != nil {
			return err
		}
		limit := flagInt(e.fs, "limit")
		if limit < 0 {
			return usagef("--limit %d: want 0 (all) or more", limit)
		}
		req := map[string]any{"id": id}
		if state != "" {
			req["state"] = state
		}
		if w := flagStr(e.fs, "wave"); w != "" {
			req["wave"] = w
		}
		ds, more, err := collect[rollout.DeviceView](ctx, e, "rollout/devices", req, "devices", "after", limit)
		if err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(ds)
		}
		printRolloutDevices(e.out, ds, time.Now())
		if more {
			fmt.Fprintf(e.errOut, "more devices: --limit more than %d, or 0 for all\n", len(ds))
		}
		return nil
	},
}

// printRolloutDevices prints the devices of a rollout, children of
// gateways grouped under their gateway (after the devices that have none).
func printRolloutDevices(w io.Writer, ds []rollout.DeviceView, now time.Time) {
	ds = slices.Clone(ds)
	slices.SortStableFunc(ds, func(a, b rollout.DeviceView) int { return strings.Compare(a.Gateway, b.Gateway) })
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GATEWAY\tDEVICE\tWAVE\tSTATE\tSINCE\tTARGET\tHARDWARE\tREGION\tRETRIES\tREASON")
	for _, d := range ds {
		reason := d.Reason
		switch {
		case d.Broker:
			reason = strings.TrimSpace(reason + " (seen by the broker)")
		case d.Health:
			reason = strings.TrimSpace(reason + " (health)")
		}
		since := "-"
		if !d.Since.IsZero() {
			since = ago(d.Since, now)
		}
		state := d.State
		if d.Unreachable {
			state += " (unreachable)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", dash(d.Gateway), d.Device, d.Wave, state, since, dash(d.Target),
			dash(d.Hardware), dash(d.Region), d.Tries, dash(reason))
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "%d shown\n", len(ds))
}

// Rendering of a View, shared by status and watch.

// finished reports whether a rollout in state s is over.
func finished(s string) bool {
	return s == rollout.StateCompleted || s == rollout.StateAborted || s == rollout.StateEnded
}

// Groups of device states as the views show them.
var (
	stateDone   = []string{"succeeded"}
	stateFailed = []string{"failed", "rolled_back", "timed_out"}
	stateMoving = []string{"offered", "downloading", "verified", "installing", "rebooting", "trial"}
)

func sum(counts map[string]int, states []string) int {
	n := 0
	for _, s := range states {
		n += counts[s]
	}
	return n
}

// countsText lists the non-zero counts in the states' order: "3
// succeeded, 1 rolled_back, 12 eligible" ("none" when all are zero).
func countsText(counts map[string]int) string {
	var parts []string
	for _, s := range rollout.States() {
		if n := counts[s]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, s))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// segments splits width cells among the devices that succeeded, failed,
// are under way and are still to do, in proportion (rounded so that the
// four add up to width, and a non-zero share gets a cell when it can).
func segments(counts map[string]int, devices, width int) [4]int {
	var out [4]int
	if devices <= 0 || width <= 0 {
		return out
	}
	shares := [3]int{sum(counts, stateDone), sum(counts, stateFailed), sum(counts, stateMoving)}
	cum, edge := 0, 0
	for i, n := range shares {
		cum += n
		next := max(min((cum*width+devices/2)/devices, width), edge)
		if n > 0 && next == edge && edge < width {
			next++
		}
		out[i] = next - edge
		edge = next
	}
	out[3] = width - edge
	return out
}

// bar is a wave's progress in width cells: succeeded '#', failed 'x', under
// way '>', still to do '.'.
func bar(counts map[string]int, devices, width int) string {
	s := segments(counts, devices, width)
	return strings.Repeat("#", s[0]) + strings.Repeat("x", s[1]) + strings.Repeat(">", s[2]) + strings.Repeat(".", s[3])
}

// failedText lists the results that are failures, by state: "1 failed, 2
// rolled_back" ("" none).
func failedText(counts map[string]int) string {
	var parts []string
	for _, s := range stateFailed {
		if n := counts[s]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, s))
		}
	}
	return strings.Join(parts, ", ")
}

// untilText is "in 4m10s", or "now" once t has passed.
func untilText(t, now time.Time) string {
	d := t.Sub(now).Round(time.Second)
	if d <= 0 {
		return "now"
	}
	return "in " + d.String()
}

// nextText says what rollout v waits for (v.Next is set): "next: the bake
// of wave pilot ends in 4m10s (10:32:00), then the next wave starts".
func nextText(v *rollout.View, now time.Time) string {
	n := v.Next
	at := n.At.Local().Format("15:04:05")
	if n.At.Local().YearDay() != now.Local().YearDay() || n.At.Year() != now.Year() {
		at = n.At.Local().Format("2006-01-02 15:04:05")
	}
	switch n.What {
	case "start":
		return fmt.Sprintf("next: the schedule starts it %s (%s)", untilText(n.At, now), at)
	case "wave":
		then := "the next wave starts"
		if len(v.Waves) > 0 && v.Waves[len(v.Waves)-1].Name == n.Wave {
			then = "the rollout completes"
		}
		return fmt.Sprintf("next: the bake of wave %s ends %s (%s), then %s", n.Wave, untilText(n.At, now), at, then)
	case "end":
		return fmt.Sprintf("next: the schedule ends it %s (%s)", untilText(n.At, now), at)
	}
	return fmt.Sprintf("next: %s %s %s (%s)", n.What, n.Wave, untilText(n.At, now), at)
}

// alarmText is one alarm without its time: "WARN wave canary, hardware
// esp32-v3: rollbacks 3% (1 of 30) passed the warning threshold 1%".
func alarmText(a *rollout.Alarm) string { return strings.ToUpper(a.Level) + " " + alarmMessage(a) }

// alarmMessage is what an alarm says (the broker's message, or one made of
// its fields).
func alarmMessage(a *rollout.Alarm) string {
	if a.Message != "" {
		return a.Message
	}
	where := a.Wave
	if a.Slice != "" {
		where += ", " + a.Slice
	}
	return fmt.Sprintf("wave %s: %s %s (%d of %d judged)", where, a.Kind, a.Rate, a.Count, a.Judged)
}

// printStatus writes a human summary of a rollout: its state and reason,
// a line per wave with counts and a bar, the alarms and what comes next.
func printStatus(w io.Writer, v *rollout.View, now time.Time) {
	title := "rollout " + v.ID
	if v.Name != "" {
		title += " (" + v.Name + ")"
	}
	fmt.Fprintf(w, "%s: %s\n", title, strings.ToUpper(v.State))
	if v.Reason != "" {
		by := ""
		if v.PausedBy != "" {
			by = " [paused by " + v.PausedBy + "]"
		}
		fmt.Fprintf(w, "reason: %s%s\n", v.Reason, by)
	}
	fmt.Fprintf(w, "release: %s (version %s)", v.Release, v.Version)
	if len(v.Path) > 0 {
		fmt.Fprintf(w, " by way of %s", strings.Join(v.Path, ", "))
	}
	fmt.Fprintln(w)
	line := fmt.Sprintf("created %s by %s", v.Created.Local().Format("2006-01-02 15:04:05"), v.CreatedBy)
	if v.Approved != nil {
		line += fmt.Sprintf(", approved by %s", v.Approved.By)
	} else if v.Approval {
		line += ", needs approval"
	}
	if !v.Started.IsZero() {
		line += fmt.Sprintf(", started %s by %s", v.Started.Local().Format("2006-01-02 15:04:05"), v.StartedBy)
	}
	if !v.Ended.IsZero() {
		line += fmt.Sprintf(", ended %s", v.Ended.Local().Format("2006-01-02 15:04:05"))
	}
	fmt.Fprintln(w, line)
	part, out := map[string]int{}, map[string]int{}
	for s, n := range v.Counts {
		if s == "skipped" || s == "cancelled" {
			out[s] = n
		} else {
			part[s] = n
		}
	}
	line = fmt.Sprintf("devices: %d taking part: %s", v.Devices, countsText(part))
	if c := countsText(out); c != "none" {
		line += "; " + c
	}
	if v.Unreachable > 0 {
		line += fmt.Sprintf("; %d unreachable (their gateway is offline: waiting)", v.Unreachable)
	}
	fmt.Fprintln(w, line)
	if r := v.Rate; r.PerMinute > 0 || r.InFlightLimit > 0 {
		var parts []string
		if r.PerMinute > 0 {
			parts = append(parts, fmt.Sprintf("%d started in the last minute of %d/min", r.StartedLastMinute, r.PerMinute))
		}
		if r.InFlightLimit > 0 {
			parts = append(parts, fmt.Sprintf("%d in flight of %d", r.InFlight, r.InFlightLimit))
		}
		fmt.Fprintf(w, "rate: %s\n", strings.Join(parts, ", "))
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WAVE\tSTATE\tPROGRESS\tSUCCEEDED\tROLLBACKS\tHEALTH\tDEVICES BY STATE")
	for _, wv := range v.Waves {
		state := wv.State
		if wv.State == rollout.WaveBaking && !wv.BakeUntil.IsZero() {
			state += " until " + wv.BakeUntil.Local().Format("15:04:05")
		}
		fmt.Fprintf(tw, "%s\t%s\t[%s]\t%d/%d\t%s\t%s\t%s\n", wv.Name, state, bar(wv.Counts, wv.Devices, 20),
			wv.Counts["succeeded"], wv.Devices, wv.RollbackRate, wv.HealthRate, countsText(wv.Counts))
	}
	_ = tw.Flush()
	if len(v.Gateways) > 0 {
		fmt.Fprint(w, "\nchildren of gateways (each counted as a device):\n")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  GATEWAY\tONLINE\tDEVICES\tUNREACHABLE\tDEVICES BY STATE")
		for _, g := range v.Gateways {
			online := "no"
			if g.Online {
				online = "yes"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%d\t%s\n", g.Gateway, online, g.Devices, g.Unreachable, countsText(g.Counts))
		}
		_ = tw.Flush()
		if v.MoreGateways > 0 {
			fmt.Fprintf(w, "  and %d more gateways\n", v.MoreGateways)
		}
	}
	if len(v.Alarms) > 0 {
		fmt.Fprint(w, "\nalarms:\n")
		for i := range v.Alarms {
			a := &v.Alarms[i]
			fmt.Fprintf(w, "  %s %s\n", a.Time.Local().Format("15:04:05"), alarmText(a))
		}
	}
	if v.Next != nil {
		fmt.Fprintf(w, "\n%s\n", nextText(v, now))
	}
}
