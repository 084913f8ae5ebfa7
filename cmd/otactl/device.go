package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/otamq/otamq/ota/fleet"
)

// attrFlags are the attribute flags shared by register and update.
type attrFlags struct {
	hardware, region, connectivity, parent string
	groups, tags                           multi
}

func (a *attrFlags) bind(fs *flag.FlagSet) {
	fs.StringVar(&a.hardware, "hardware", "", "hardware model, e.g. esp32-v2")
	fs.StringVar(&a.region, "region", "", "region")
	fs.StringVar(&a.connectivity, "connectivity", "", "wifi, cellular, ethernet or via_gateway")
	fs.StringVar(&a.parent, "parent", "", "parent gateway ID")
	fs.Var(&a.groups, "group", "group (repeatable)")
	fs.Var(&a.tags, "tag", "tag key=value (repeatable)")
}

func parseTags(tags []string) (map[string]string, error) {
	if len(tags) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, t := range tags {
		k, v, ok := strings.Cut(t, "=")
		if !ok || k == "" {
			return nil, usagef("--tag %q: want key=value", t)
		}
		m[k] = v
	}
	return m, nil
}

var deviceRegister = command{
	flags: func(fs *flag.FlagSet) {
		var a attrFlags
		a.bind(fs)
		fs.String("role", "device", "device or gateway")
		fs.Bool("cert-only", false, "authenticate only with a fleet-CA client certificate (no token)")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		id, err := oneID(args, "device")
		if err != nil {
			return err
		}
		tags, err := parseTags(flagMulti(e.fs, "tag"))
		if err != nil {
			return err
		}
		req := map[string]any{
			"id": id, "role": flagStr(e.fs, "role"), "hardware": flagStr(e.fs, "hardware"), "region": flagStr(e.fs, "region"),
			"connectivity": flagStr(e.fs, "connectivity"), "parent": flagStr(e.fs, "parent"),
			"groups": flagMulti(e.fs, "group"), "tags": tags,
		}
		if flagBool(e.fs, "cert-only") {
			req["auth"] = "cert"
		}
		var res struct {
			Device fleet.Device `json:"device"`
			Token  string       `json:"token"`
		}
		if err := e.call(ctx, "device/register", req, &res); err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(res)
		}
		fmt.Fprintf(e.out, "registered %s %s\n", res.Device.Role, res.Device.ID)
		if res.Token != "" {
			fmt.Fprintf(e.out, "token: %s\n", res.Token)
			fmt.Fprintf(e.errOut, "The token is shown only once. The device connects with client ID and username %q and this token as password.\n", res.Device.ID)
		} else {
			fmt.Fprintf(e.errOut, "%s authenticates with a fleet-CA certificate whose common name is %q.\n", res.Device.ID, res.Device.ID)
		}
		return nil
	},
}

// listFlags are the filters of device list.
func listFlags(fs *flag.FlagSet) {
	fs.String("role", "", "device or gateway")
	fs.String("hardware", "", "hardware model")
	fs.String("region", "", "region")
	fs.String("connectivity", "", "declared connectivity")
	fs.String("group", "", "member of group")
	fs.String("tag", "", "has tag key, or key=value")
	fs.String("parent", "", "child of gateway")
	fs.String("firmware", "", "reported firmware version")
	fs.Bool("online", false, "only connected devices")
	fs.Bool("offline", false, "only disconnected devices")
	fs.Bool("revoked", false, "only revoked devices")
	fs.Int("limit", 100, "how many to show (1..1000)")
	fs.Bool("all", false, "show every matching device")
}

var deviceList = command{
	flags: listFlags,
	run: func(ctx context.Context, e *env, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		req := map[string]any{}
		for _, k := range []string{"role", "hardware", "region", "connectivity", "group", "tag", "parent", "firmware"} {
			if v := flagStr(e.fs, k); v != "" {
				req[k] = v
			}
		}
		on, off := flagBool(e.fs, "online"), flagBool(e.fs, "offline")
		switch {
		case on && off:
			return usagef("--online and --offline exclude each other")
		case on:
			req["online"] = true
		case off:
			req["online"] = false
		}
		if flagBool(e.fs, "revoked") {
			req["revoked"] = true
		}
		limit := flagInt(e.fs, "limit")
		if limit < 1 || limit > 1000 {
			return usagef("--limit %d: want 1..1000 (--all for everything)", limit)
		}
		want := limit
		if flagBool(e.fs, "all") {
			want = 0
		}
		// The broker may cut a page to fit what this client can receive:
		// collect follows the cursor until --limit devices are shown.
		devs, more, err := collect[deviceRow](ctx, e, "device/list", req, "devices", "after", want)
		if err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(devs)
		}
		printDevices(e.out, devs, time.Now())
		if more {
			fmt.Fprintf(e.errOut, "more devices: --all, or --limit more than %d\n", len(devs))
		}
		return nil
	},
}

// deviceRow is an item of device/list and the reply of device/get: the
// device, its status, and its current offer with the download's progress.
type deviceRow struct {
	fleet.View
	Offer *offerProgress `json:"offer,omitempty"`
}

// offerProgress is a device's current offer and how far it has come.
type offerProgress struct {
	RolloutID  string  `json:"rollout_id"`
	Release    string  `json:"release"`
	Version    string  `json:"version"`
	Size       uint64  `json:"size,omitempty"`
	Downloaded *uint64 `json:"downloaded,omitempty"`
	Progress   *int    `json:"progress,omitempty"`
}

// progressText is "42% of 1.2.4@3fa2c1d9" while downloading, the release
// offered otherwise, "-" without an offer.
func progressText(o *offerProgress) string {
	if o == nil {
		return "-"
	}
	if o.Progress != nil {
		return fmt.Sprintf("%d%% of %s", *o.Progress, o.Release)
	}
	return "offered " + o.Release
}

func printDevices(w io.Writer, devs []deviceRow, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tROLE\tGATEWAY\tHARDWARE\tREGION\tFIRMWARE\tSTATE\tLAST SEEN\tHEALTH\tOTA\tUPDATE")
	for _, v := range devs {
		state := "offline"
		switch {
		case v.Revoked:
			state = "revoked"
		case v.Status.Online:
			state = "online"
		case v.Status.Unreachable:
			state = "unreachable"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.ID, v.Role, dash(v.Parent), dash(v.Hardware), dash(v.Region),
			dash(v.Status.Firmware), state, ago(v.Status.LastSeen, now), health(&v.Status), dash(v.Status.OTAState), progressText(v.Offer))
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "%d shown\n", len(devs))
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func ago(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t).Round(time.Second)
	if d < 0 {
		d = 0
	}
	return d.String() + " ago"
}

func health(st *fleet.Status) string {
	if st.Heartbeats == 0 {
		return "-"
	}
	if st.Healthy() {
		return "ok"
	}
	var bad []string
	for bit, name := range []string{"app", "resources", "messaging"} {
		if st.HealthFlags&(1<<bit) == 0 {
			bad = append(bad, name)
		}
	}
	return "failing: " + strings.Join(bad, ",")
}

var deviceGet = command{
	run: func(ctx context.Context, e *env, args []string) error {
		id, err := oneID(args, "device")
		if err != nil {
			return err
		}
		var v deviceRow
		if err := e.call(ctx, "device/get", map[string]any{"id": id}, &v); err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(v)
		}
		printView(e.out, &v, time.Now())
		return nil
	},
}

func printView(w io.Writer, v *deviceRow, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, val string) {
		if val != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, val)
		}
	}
	st := &v.Status
	row("id", v.ID)
	row("role", string(v.Role))
	row("auth", string(v.Auth))
	row("hardware", v.Hardware)
	row("region", v.Region)
	row("connectivity", v.Connectivity)
	row("groups", strings.Join(v.Groups, ", "))
	if len(v.Tags) > 0 {
		var kv []string
		for _, k := range slices.Sorted(maps.Keys(v.Tags)) {
			kv = append(kv, k+"="+v.Tags[k])
		}
		row("tags", strings.Join(kv, ", "))
	}
	row("parent", v.Parent)
	if v.Parent != "" {
		row("gateway", v.Parent+" (its traffic comes through it)")
	}
	if v.Revoked {
		row("revoked", fmt.Sprintf("%s (%s)", v.RevokedAt.Format(time.RFC3339), v.RevokeReason))
	}
	row("registered", v.Created.Format(time.RFC3339))
	state := "offline"
	switch {
	case st.Online && st.Gateway != "":
		state = "online since " + st.ConnectedAt.Format(time.RFC3339) + " via gateway " + st.Gateway
	case st.Online:
		state = "online since " + st.ConnectedAt.Format(time.RFC3339) + " from " + st.Remote
	case st.Unreachable:
		state = "unreachable via gateway " + st.Gateway + " (gateway offline since " + st.DisconnectedAt.Format(time.RFC3339) + ")"
	case st.DisconnectReason == fleet.ReasonChildSilent:
		state = "offline (not heard from through gateway " + st.Gateway + ")"
	case st.DisconnectReason != "":
		state = "offline (" + st.DisconnectReason + ")"
	}
	row("state", state)
	row("last seen", ago(st.LastSeen, now))
	row("connects", fmt.Sprintf("%d (reconnects %d)", st.Connects, st.Reconnects))
	if !st.BirthAt.IsZero() {
		row("firmware", st.Firmware)
		row("reported hardware", st.ReportedHardware)
		row("bootloader", st.Bootloader)
		row("slot", fmt.Sprint(st.Slot))
		row("boot reason", st.BootReason)
		row("boots since commit", fmt.Sprint(st.BootsSinceCommit))
		row("agent", st.AgentVersion)
		row("link", st.Link)
		row("secure version", fmt.Sprint(st.SecureVersion))
	}
	row("ota state", st.OTAState)
	if o := v.Offer; o != nil {
		row("offer", fmt.Sprintf("%s (version %s, rollout %s)", o.Release, o.Version, o.RolloutID))
		if o.Progress != nil {
			row("download", fmt.Sprintf("%d%% (%d of %d bytes)", *o.Progress, *o.Downloaded, o.Size))
		}
	}
	if st.Heartbeats > 0 {
		row("health", health(st))
		row("uptime", (time.Duration(st.Uptime) * time.Second).String())
		row("watchdog resets", fmt.Sprint(st.WatchdogResets))
		row("free heap", fmt.Sprint(st.FreeHeap))
		row("rssi", fmt.Sprintf("%d dBm", st.RSSI))
		if st.DownloadOffset != nil {
			row("download offset", fmt.Sprint(*st.DownloadOffset))
		}
	}
	if st.Wills > 0 {
		row("last will", fmt.Sprintf("%s (%d in all)", ago(st.WillAt, now), st.Wills))
	}
	_ = tw.Flush()
}

var deviceUpdate = command{
	flags: func(fs *flag.FlagSet) {
		var a attrFlags
		a.bind(fs)
		fs.Bool("no-groups", false, "remove every group")
		fs.Bool("no-tags", false, "remove every tag")
		fs.Bool("no-parent", false, "detach from the parent gateway")
		fs.Bool("rotate-token", false, "issue a new token (the old one stops working and the device is disconnected)")
		fs.Bool("reinstate", false, "lift a revocation (needs --rotate-token for token devices)")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		id, err := oneID(args, "device")
		if err != nil {
			return err
		}
		req := map[string]any{"id": id}
		set := map[string]bool{}
		e.fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for _, k := range []string{"hardware", "region", "connectivity", "parent"} {
			if set[k] {
				req[k] = flagStr(e.fs, k)
			}
		}
		switch {
		case set["group"] && set["no-groups"]:
			return usagef("--group and --no-groups exclude each other")
		case set["group"]:
			req["groups"] = flagMulti(e.fs, "group")
		case set["no-groups"]:
			req["groups"] = []string{}
		}
		switch {
		case set["tag"] && set["no-tags"]:
			return usagef("--tag and --no-tags exclude each other")
		case set["tag"]:
			tags, err := parseTags(flagMulti(e.fs, "tag"))
			if err != nil {
				return err
			}
			req["tags"] = tags
		case set["no-tags"]:
			req["tags"] = map[string]string{}
		}
		if set["no-parent"] {
			if set["parent"] {
				return usagef("--parent and --no-parent exclude each other")
			}
			req["parent"] = ""
		}
		if flagBool(e.fs, "rotate-token") {
			req["rotate_token"] = true
		}
		if flagBool(e.fs, "reinstate") {
			req["reinstate"] = true
		}
		if len(req) == 1 {
			return usagef("nothing to change: give at least one flag (otactl help)")
		}
		var res struct {
			Device fleet.Device `json:"device"`
			Token  string       `json:"token"`
		}
		if err := e.call(ctx, "device/update", req, &res); err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(res)
		}
		fmt.Fprintf(e.out, "updated %s\n", res.Device.ID)
		if res.Token != "" {
			fmt.Fprintf(e.out, "token: %s\n", res.Token)
			fmt.Fprintln(e.errOut, "The new token is shown only once; the old one no longer works.")
		}
		return nil
	},
}

var deviceRevoke = command{
	flags: func(fs *flag.FlagSet) { fs.String("reason", "", "why (kept in the registry and the audit log)") },
	run: func(ctx context.Context, e *env, args []string) error {
		id, err := oneID(args, "device")
		if err != nil {
			return err
		}
		var res map[string]any
		if err := e.call(ctx, "device/revoke", map[string]any{"id": id, "reason": flagStr(e.fs, "reason")}, &res); err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(res)
		}
		fmt.Fprintf(e.out, "revoked %s; it is disconnected and can no longer connect\n", id)
		return nil
	},
}

func flagStr(fs *flag.FlagSet, name string) string { return fs.Lookup(name).Value.String() }

func flagBool(fs *flag.FlagSet, name string) bool { return fs.Lookup(name).Value.String() == "true" }

func flagInt(fs *flag.FlagSet, name string) int {
	var n int
	_, _ = fmt.Sscan(fs.Lookup(name).Value.String(), &n)
	return n
}

func flagMulti(fs *flag.FlagSet, name string) []string {
	if m, ok := fs.Lookup(name).Value.(*multi); ok {
		return *m
	}
	return nil
}
