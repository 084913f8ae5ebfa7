package main

import (
	"flag"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
)

// helpText documents one command: `otactl COMMAND --help` prints it with
// the command's flags (read from its flag set), and the global usage lists
// every command by section with its args and summary.
//
// A command declares its usage by adding an entry to helps, keyed by the
// name it has in commands(); a test checks that every command has one, with
// an example that parses.
type helpText struct {
	name    string // as in commands(): "device register"
	section string // heading in the global usage
	args    string // positional arguments: "ID", "IMAGE MANIFEST", "VERB DEVICE..."
	summary string // one line, lower case, no final period
	about   string // optional paragraph(s) printed under the summary
	// examples are whole command lines, each starting with "otactl ".
	examples []string
}

// Sections of the global usage, in order.
const (
	secDevices  = "Devices and gateways"
	secOps      = "Operators, observers and the audit log"
	secReleases = "Keys, releases, offers and commands"
	secRollouts = "Rollouts: staged waves with health gates (the spec: docs/ROLLOUTS.md)"
	secOffline  = "Release signing (offline: no broker, the private key stays here)"
)

var helps = []helpText{
	{name: "device register", section: secDevices, args: "ID", summary: "register a device or gateway; prints its token once",
		about: "The token is the device's MQTT password (username = client ID = ID). With --cert-only the device\n" +
			"authenticates with a fleet-CA certificate whose common name is ID, and gets no token.",
		examples: []string{"otactl device register dev-7 --hardware esp32-v2 --region eu --group canary --tag site=lab",
			"otactl device register gw-1 --role gateway",
			"otactl device register node-3 --parent gw-1"}},
	{name: "device list", section: secDevices, summary: "list devices and gateways, filtered; pages of --limit",
		examples: []string{"otactl device list --region eu --online", "otactl device list --all --json"}},
	{name: "device get", section: secDevices, args: "ID", summary: "show one device: registration, status, firmware, health",
		examples: []string{"otactl device get dev-7"}},
	{name: "device update", section: secDevices, args: "ID", summary: "change attributes, rotate the token or lift a revocation",
		examples: []string{"otactl device update dev-7 --group canary --group pilot --tag site=plant-2",
			"otactl device update dev-7 --rotate-token",
			"otactl device update dev-7 --reinstate --rotate-token"}},
	{name: "device revoke", section: secDevices, args: "ID", summary: "disconnect a device and refuse it from now on",
		examples: []string{`otactl device revoke dev-7 --reason "stolen"`}},
	{name: "device import", section: secDevices, args: "FILE", summary: "register a whole fleet from CSV or JSON lines; tokens go to a new 0600 file",
		about: "Columns (CSV header) or keys (JSON lines): id, role, hardware, region, connectivity, groups, tags,\n" +
			"parent, auth. The file is checked here first, then every batch is dry-run on the broker; devices are\n" +
			"registered only if nothing is refused (gateways first). Tokens go to --tokens (default FILE.tokens),\n" +
			"never overwritten. Progress goes to stderr.",
		examples: []string{"otactl device import fleet.csv", "otactl device import fleet.jsonl --tokens fleet.tokens"}},
	{name: "device timeline", section: secDevices, args: "ID", summary: "offers, cancels and the device's own update events, newest first",
		examples: []string{"otactl device timeline dev-7 --limit 20"}},

	{name: "operator add", section: secOps, args: "ID", summary: "add an operator (or, with --observer, a read-only observer); prints its password once",
		examples: []string{"otactl operator add alice", "printf '%s\\n' \"$PW\" | otactl operator add bob --password-stdin",
			"otactl operator add grafana-bot --observer"}},
	{name: "operator list", section: secOps, summary: "list operators and observers",
		examples: []string{"otactl operator list"}},
	{name: "operator update", section: secOps, args: "ID", summary: "set a new password or lift a revocation",
		examples: []string{"otactl operator update alice --rotate-password"}},
	{name: "operator revoke", section: secOps, args: "ID", summary: "refuse an operator from now on (not the last one)",
		examples: []string{"otactl operator revoke bob --reason \"left the team\""}},
	{name: "audit", section: secOps, summary: "the audit log, newest first: who asked what, when, from where, with what result",
		examples: []string{"otactl audit --limit 20", "otactl audit --action device/revoke --actor alice"}},

	{name: "key add", section: secReleases, args: "PUB.pem", summary: "trust a release signing key (the public half from otactl keygen)",
		about:    "The file is checked here first: it must be a PEM public key (P-256), never the private key.",
		examples: []string{"otactl key add release.pub --name ci"}},
	{name: "key list", section: secReleases, summary: "list trusted and revoked signing keys",
		examples: []string{"otactl key list"}},
	{name: "key revoke", section: secReleases, args: "KID", summary: "stop trusting a key: its releases can no longer be offered",
		examples: []string{"otactl key revoke 3fa2c1d98e4b7a60"}},
	{name: "key show", section: secReleases, args: "PUB.pem", summary: "print a public key as device integrators need it: key ID, PEM, point as hex and as a C array",
		about: "Offline: reads the file, needs no broker. The C array pastes into the agent's trusted keys\n" +
			"(ota_agent_config_t.keys; see agent-c/port/esp-idf/example/main/main.c).",
		examples: []string{"otactl key show release.pub"}},
	{name: "release upload", section: secReleases, args: "IMAGE MANIFEST", summary: "upload a signed release; the broker verifies it; resumes if cut off",
		examples: []string{"otactl release upload firmware.bin firmware.bin.manifest"}},
	{name: "release list", section: secReleases, summary: "list releases",
		examples: []string{"otactl release list --hardware esp32-v2"}},
	{name: "release get", section: secReleases, args: "REF", summary: "show one release: REF is its ID, VERSION@DIGEST-PREFIX, or VERSION when only one release has it",
		examples: []string{"otactl release get 1.2.4@3fa2c1d9", "otactl release get 1.2.4"}},
	{name: "release uploads", section: secReleases, summary: "list unfinished uploads, with the UPLOAD-ID release abort takes",
		examples: []string{"otactl release uploads"}},
	{name: "release abort", section: secReleases, args: "UPLOAD-ID", summary: "drop an unfinished upload",
		examples: []string{"otactl release abort u-3fa2c1d98e4b"}},
	{name: "offer create", section: secReleases, args: "RELEASE DEVICE...", summary: "offer a release to devices (sent at once to those connected)",
		examples: []string{"otactl offer create 1.2.4@3fa2c1d9 dev-7 dev-8 --rollout r-2026-11-26",
			"otactl offer create 1.2.4@3fa2c1d9 dev-9 --on-command"}},
	{name: "offer cancel", section: secReleases, args: "DEVICE...", summary: "withdraw devices' offers (they get the empty offer)",
		examples: []string{"otactl offer cancel dev-8"}},
	{name: "offer list", section: secReleases, summary: "list current offers",
		examples: []string{"otactl offer list --device dev-7"}},
	{name: "command send", section: secReleases, args: "VERB DEVICE...", summary: "send install, cancel, check or reboot to connected devices",
		examples: []string{"otactl command send install dev-9 --rollout r-2026-11-26", "otactl command send check dev-7"}},

	{name: "rollout create", section: secRollouts, args: "FILE.yaml", summary: "create a rollout from its spec (- reads standard input) and print its plan; nothing is offered before start",
		about: "The spec is YAML (docs/ROLLOUTS.md). The rollout is a draft, or awaits approval when the spec says\n" +
			"approval: true. A refused spec prints every problem, one \"field: message\" a line, and creates nothing.",
		examples: []string{"otactl rollout create rollout.yaml", "otactl rollout create - < rollout.yaml"}},
	{name: "rollout plan", section: secRollouts, args: "FILE.yaml", summary: "dry run: devices per wave, who is skipped and why, stepping stones; nothing is stored",
		about: "FILE.yaml (- for standard input) plans a spec; --id ID shows the plan of a rollout that exists instead.\n" +
			"Percentage waves draw their devices by the rollout ID: for a spec without an id the plan is provisional.",
		examples: []string{"otactl rollout plan rollout.yaml", "otactl rollout plan --id r-2026-12-eu"}},
	{name: "rollout approve", section: secRollouts, args: "ID", summary: "approve a rollout that needs it (approval: true); not by the operator who created it",
		examples: []string{"otactl rollout approve r-2026-12-eu"}},
	{name: "rollout start", section: secRollouts, args: "ID", summary: "start a draft: its first wave is offered (or it waits for the schedule's start)",
		examples: []string{"otactl rollout start r-2026-12-eu"}},
	{name: "rollout pause", section: secRollouts, args: "ID", summary: "pause: no new offers or install commands; devices under way go on",
		examples: []string{`otactl rollout pause r-2026-12-eu --reason "support calls from plant 2"`}},
	{name: "rollout resume", section: secRollouts, args: "ID", summary: "resume a paused rollout; its thresholds count again from here",
		examples: []string{"otactl rollout resume r-2026-12-eu"}},
	{name: "rollout abort", section: secRollouts, args: "ID", summary: "end a rollout: devices not yet installing get the cancel; those installing are listed",
		examples: []string{`otactl rollout abort r-2026-12-eu --reason "bad build"`}},
	{name: "rollout status", section: secRollouts, args: "ID", summary: "a rollout's state and reason, each wave's progress and counts, alarms, what comes next",
		about:    "With --json: the rollout's View (docs/ROLLOUTS.md), as the broker's live summaries carry it.",
		examples: []string{"otactl rollout status r-2026-12-eu", "otactl rollout status r-2026-12-eu --json", "otactl rollout status r-2026-12-eu --spec"}},
	{name: "rollout list", section: secRollouts, summary: "list rollouts, newest first",
		examples: []string{"otactl rollout list --state running"}},
	{name: "rollout devices", section: secRollouts, args: "ID", summary: "a rollout's devices with state, reason and target; every page unless --limit",
		examples: []string{"otactl rollout devices r-2026-12-eu --state rolled_back", "otactl rollout devices r-2026-12-eu --wave canary --json"}},
	{name: "rollout watch", section: secRollouts, args: "ID", summary: "follow a rollout live: a bar per wave, counts, alarms, the time to the next wave",
		about: "It gets the rollout once, then follows the summaries the broker pushes when it changes (at most one a\n" +
			"second, never a request per device: fine over a slow link), and connects again by itself after a lost\n" +
			"connection. On a terminal a live view; otherwise a line per change; --json one View per line. It ends\n" +
			"when the rollout is completed, aborted or ended (exit status 0), or with q or Ctrl-C (also 0). With --wait\n" +
			"a rollout that does not exist yet is waited for (its creation pushes its first summary).",
		examples: []string{"otactl rollout watch r-2026-12-eu", "otactl rollout watch r-2026-12-eu --json", "otactl rollout watch --wait demo-fixed"}},

	{name: "keygen", section: secOffline, summary: "create a release signing key pair: NAME.key (mode 0600) and NAME.pub; prints the public key as key show does",
		examples: []string{"otactl keygen --name release", "otactl keygen --out keys --name release-2027"}},
	{name: "sign", section: secOffline, args: "IMAGE", summary: "sign an image: writes IMAGE.manifest from a build description",
		about: "--key (the private key from otactl keygen) must follow \"sign\"; OTAMQ_KEY is never used for signing.\n" +
			"BUILD.yaml: version, hardware, bootloader, secure version, ...; see config/build.example.yaml.",
		examples: []string{"otactl sign --key release.key --build build.yaml firmware.bin"}},
	{name: "verify", section: secOffline, args: "MANIFEST", summary: "check a signed manifest against a public key and, with --image, the image",
		about:    "Exit status 1 says what is wrong: malformed, another key, bad signature, size or digest mismatch.",
		examples: []string{"otactl verify --pub release.pub --image firmware.bin firmware.bin.manifest"}},
}

const globalFlagsHelp = `Global flags (before or after the command; also from the environment):
  --url URL        broker, mqtt://host:port or mqtts://host:port   (OTAMQ_URL, default mqtt://127.0.0.1:1883)
  --user ID        operator ID; the MQTT client ID is ID~RANDOM     (OTAMQ_USER)
  --password PW    operator password                               (OTAMQ_PASSWORD)
  --ca FILE        CA to verify the broker's TLS certificate       (OTAMQ_CA)
  --cert FILE      client certificate for mTLS                     (OTAMQ_CERT)
  --key FILE       its private key                                 (OTAMQ_KEY)
  --prefix P       topic prefix                                    (OTAMQ_PREFIX, default dm)
  --timeout D      per request, a duration such as 10s or 1m       (default 10s)
  --json           print results as JSON, for scripts
  --version        print otactl's version
`

// helpOf returns the help of the command name (a zero helpText with just
// the name if it declares none).
func helpOf(name string) helpText {
	for _, h := range helps {
		if h.name == name {
			return h
		}
	}
	return helpText{name: name, section: "Other commands"}
}

// groups returns the first words of the multi-word commands.
func groups(cmds map[string]command) map[string]bool {
	g := map[string]bool{}
	for name := range cmds {
		if first, _, ok := strings.Cut(name, " "); ok {
			g[first] = true
		}
	}
	return g
}

// ordered returns the command names in the order of helps, then the rest
// sorted.
func ordered(cmds map[string]command) []string {
	var out []string
	for _, h := range helps {
		if _, ok := cmds[h.name]; ok {
			out = append(out, h.name)
		}
	}
	var rest []string
	for name := range cmds {
		if !slices.Contains(out, name) {
			rest = append(rest, name)
		}
	}
	sort.Strings(rest)
	return append(out, rest...)
}

// printUsage writes the global usage: every command by section.
func printUsage(w io.Writer, cmds map[string]command) {
	fmt.Fprint(w, "otactl - operate an otamq fleet\n\nUsage:\n  otactl [global flags] COMMAND [flags] [args]\n")
	section := ""
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, name := range ordered(cmds) {
		h := helpOf(name)
		if h.section != section {
			_ = tw.Flush()
			section = h.section
			fmt.Fprintf(w, "\n%s:\n", section)
		}
		fmt.Fprintf(tw, "  %s\t%s\n", strings.TrimSpace(name+" "+h.args), h.summary)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "\nRun \"otactl COMMAND --help\" for a command's flags and examples.\n\n%s\n", globalFlagsHelp)
	fmt.Fprint(w, "Exit status: 0 ok, 1 the broker refused or failed, 2 a usage mistake.\n")
}

// printGroupUsage writes the commands of one group ("device").
func printGroupUsage(w io.Writer, cmds map[string]command, group string) {
	fmt.Fprintf(w, "Usage:\n  otactl %s COMMAND [flags] [args]\n\nCommands:\n", group)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, name := range ordered(cmds) {
		if strings.HasPrefix(name, group+" ") {
			h := helpOf(name)
			fmt.Fprintf(tw, "  %s\t%s\n", strings.TrimSpace(name+" "+h.args), h.summary)
		}
	}
	_ = tw.Flush()
	fmt.Fprint(w, "\nExamples:\n")
	for _, name := range ordered(cmds) {
		if h := helpOf(name); strings.HasPrefix(name, group+" ") && len(h.examples) > 0 {
			fmt.Fprintf(w, "  %s\n", h.examples[0])
		}
	}
	fmt.Fprintf(w, "\nRun \"otactl %s COMMAND --help\" for a command's flags and examples.\n", group)
}

// printCommandUsage writes one command's usage, its own flags and its
// examples.
func printCommandUsage(w io.Writer, name string, cmd command) {
	h := helpOf(name)
	fmt.Fprintf(w, "Usage:\n  otactl %s [flags]\n", strings.TrimSpace(name+" "+h.args))
	if h.summary != "" {
		s := h.summary
		fmt.Fprintf(w, "\n%s.\n", strings.ToUpper(s[:1])+s[1:])
	}
	if h.about != "" {
		fmt.Fprintf(w, "%s\n", h.about)
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	if n := countFlags(fs); n > 0 {
		fmt.Fprint(w, "\nFlags:\n")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fs.VisitAll(func(f *flag.Flag) {
			kind, usage := flag.UnquoteUsage(f)
			if kind == "value" { // the repeatable string flags
				kind = "string"
			}
			left := "--" + f.Name
			if kind != "" {
				left += " " + kind
			}
			if d := f.DefValue; d != "" && d != "false" && d != "0" && d != "[]" {
				usage += fmt.Sprintf(" (default %s)", d)
			}
			fmt.Fprintf(tw, "  %s\t%s\n", left, usage)
		})
		_ = tw.Flush()
	}
	if len(h.examples) > 0 {
		fmt.Fprint(w, "\nExamples:\n")
		for _, e := range h.examples {
			fmt.Fprintf(w, "  %s\n", e)
		}
	}
	fmt.Fprint(w, "\nGlobal flags (--url, --user, --password, --json, ...): otactl --help\n")
}

func countFlags(fs *flag.FlagSet) int {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n
}

// wantsHelp reports whether args ask for help (-h, -help or --help before
// any "--").
func wantsHelp(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-h", "-help", "--help":
			return true
		}
	}
	return false
}
