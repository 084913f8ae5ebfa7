// Command devsim simulates a fleet of devices against an otamq broker:
// thousands of devices in one process, each speaking the device contract as
// agent-c does, with behaviour profiles (docs/DEVSIM.md).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/otamq/otamq/cmd/devsim/sim"
	"github.com/otamq/otamq/cmd/otactl/rpc"
	"github.com/otamq/otamq/internal/version"
	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/wire"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

type keyFiles []string

func (k *keyFiles) String() string     { return strings.Join(*k, ",") }
func (k *keyFiles) Set(s string) error { *k = append(*k, s); return nil }

// options are the command line.
type options struct {
	url, user, password                  string
	tokens, devices, tokensOut, report   string
	register                             int
	prefix                               string
	hardware, regions, groups, links     string
	offsets, profiles, faultVersions     string
	version, bootloader                  string
	secureVersion                        uint
	keys                                 keyFiles
	seed                                 uint64
	wrongHardware, oldVersion            string
	slowRate                             int
	offline                              string
	connectRate                          float64
	load, v311, allowDowngrade, jsonOut  bool
	verbose                              bool
	duration, progress                   time.Duration
	timing                               sim.Timing
	blockSize, window                    uint
	maxRetries, maxReboots, maxWDTResets int
	printVersion                         bool
}

const usage = `Usage: devsim [flags]

Simulates devices that speak otamq's device contract as agent-c does: each
connects with its token, sends its birth and heartbeats, takes offers
(checking the signature with --key), fetches images in blocks and installs
them in a simulated A/B slot, as its profile says it should.

Devices come from one of:
  --tokens FILE        the tokens file of otactl device import (CSV id,token
                       or JSON lines)
  --devices FILE       JSON lines, one device each: {"id", "token",
                       "profile", "hardware", "version", ...}
  --register N         N new devices registered here first (needs an
                       operator: --user/--password or OTAMQ_USER and
                       OTAMQ_PASSWORD)

Examples:
  devsim --register 200 --prefix sim- --tokens-out fleet.tokens \
         --key release.pub --groups canary=10,pilot=40,none=150 \
         --profile healthy=90,bad-health=5,boot-loop=5 --seed 7
  devsim --tokens fleet.tokens --key release.pub --heartbeat 10s --json
  devsim --tokens fleet.tokens --load --heartbeat 30s --connect-rate 500

devsim demo (see devsim demo --help) runs the demonstration of make demo.

Flags:
`

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("devsim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	env := func(name, def string) string {
		if v := os.Getenv(name); v != "" {
			return v
		}
		return def
	}
	fs.StringVar(&o.url, "url", env("OTAMQ_URL", "mqtt://127.0.0.1:1883"), "broker URL (env OTAMQ_URL)")
	fs.StringVar(&o.user, "user", env("OTAMQ_USER", ""), "operator for --register (env OTAMQ_USER)")
	fs.StringVar(&o.password, "password", env("OTAMQ_PASSWORD", ""), "its password (env OTAMQ_PASSWORD)")
	fs.StringVar(&o.tokens, "tokens", "", "tokens file of otactl device import")
	fs.StringVar(&o.devices, "devices", "", "devices file (JSON lines of device settings)")
	fs.IntVar(&o.register, "register", 0, "register this many devices first")
	fs.StringVar(&o.prefix, "prefix", "sim-", "device ID prefix for --register")
	fs.StringVar(&o.tokensOut, "tokens-out", "", "write the tokens of --register to this new file (mode 0600)")
	fs.StringVar(&o.report, "report", "", "at the end, write each device's state to this file (JSON lines)")
	fs.StringVar(&o.hardware, "hardware", sim.DefaultHardware, "hardware, or a mix (esp32-v2=80,esp32-v3=20)")
	fs.StringVar(&o.regions, "regions", "", "regions to register, a mix (eu=50,us=50)")
	fs.StringVar(&o.groups, "groups", "", "groups to register, a mix; \"none\" is no group (canary=10,none=90)")
	fs.StringVar(&o.links, "connectivity", "wifi", "connectivity, or a mix (wifi=80,cellular=20)")
	fs.StringVar(&o.offsets, "utc-offsets", "0", "UTC offsets in minutes, or a mix (60=50,-300=50)")
	fs.StringVar(&o.profiles, "profile", "healthy", "profiles, a mix (healthy=90,bad-health=5,boot-loop=5); "+
		"profiles: "+strings.Join(profileNames(), ", "))
	fs.StringVar(&o.faultVersions, "fault-versions", "", "comma-separated versions the profiles' faults apply to (default all)")
	fs.StringVar(&o.version, "version", sim.DefaultVersion, "factory firmware version")
	fs.UintVar(&o.secureVersion, "secure-version", 0, "factory secure version")
	fs.StringVar(&o.bootloader, "bootloader", sim.DefaultBootloader, "bootloader version")
	fs.Var(&o.keys, "key", "trusted release public key, PEM (repeatable)")
	fs.Uint64Var(&o.seed, "seed", 1, "seed: the same seed gives the same fleet")
	fs.StringVar(&o.wrongHardware, "wrong-hardware", sim.DefaultWrongHardware, "hardware of wrong-hardware devices")
	fs.StringVar(&o.oldVersion, "old-version", sim.DefaultOldVersion, "version of too-old devices")
	fs.IntVar(&o.slowRate, "slow-rate", sim.DefaultSlowRate, "bytes per second of slow devices")
	fs.StringVar(&o.offline, "offline-window", "02:00-04:00", "daily window (local time) offline-window devices are offline")
	fs.Float64Var(&o.connectRate, "connect-rate", 0, "connection attempts per second, all devices (0: no limit)")
	fs.BoolVar(&o.load, "load", false, "load mode: connect, birth and heartbeats only")
	fs.BoolVar(&o.v311, "v311", false, "MQTT 3.1.1 instead of 5")
	fs.BoolVar(&o.allowDowngrade, "allow-downgrade", false, "devices accept older versions")
	fs.BoolVar(&o.jsonOut, "json", false, "summary (and progress lines) as JSON")
	fs.BoolVar(&o.verbose, "verbose", false, "log connection problems")
	fs.DurationVar(&o.duration, "duration", 0, "stop after this long (0: at SIGINT or SIGTERM)")
	fs.DurationVar(&o.progress, "progress", 5*time.Second, "print progress this often (0: never)")
	t := &o.timing
	fs.DurationVar(&t.Heartbeat, "heartbeat", sim.DefaultHeartbeat, "heartbeat period")
	fs.DurationVar(&t.RequestTimeout, "request-timeout", sim.DefaultRequestTimeout, "block request timeout")
	fs.DurationVar(&t.BackoffMin, "backoff-min", sim.DefaultBackoffMin, "first download retry backoff")
	fs.DurationVar(&t.BackoffMax, "backoff-max", sim.DefaultBackoffMax, "largest download retry backoff")
	fs.IntVar(&o.maxRetries, "max-retries", sim.DefaultMaxRetries, "download retries before giving up")
	fs.DurationVar(&t.TrialTimeout, "trial-timeout", sim.DefaultTrialTimeout, "time for a new image to pass its health check")
	fs.DurationVar(&t.Probation, "probation", sim.DefaultProbation, "trial run time before the commit")
	fs.IntVar(&o.maxReboots, "max-reboots", sim.DefaultMaxReboots, "reboots in --reboot-window that roll a trial back")
	fs.DurationVar(&t.RebootWindow, "reboot-window", sim.DefaultRebootWindow, "window of the reboot trigger")
	fs.IntVar(&o.maxWDTResets, "max-wdt-resets", sim.DefaultMaxWDTResets, "watchdog resets in --wdt-window that roll a trial back")
	fs.DurationVar(&t.WDTWindow, "wdt-window", sim.DefaultWDTWindow, "window of the watchdog trigger")
	fs.DurationVar(&t.HealthFail, "health-fail", sim.DefaultHealthFail, "failing health during probation that rolls back")
	fs.DurationVar(&t.NoBroker, "no-broker", sim.DefaultNoBroker, "time without the broker during probation that rolls back")
	fs.UintVar(&o.blockSize, "block-size", sim.DefaultBlockSize, "block size asked for")
	fs.UintVar(&o.window, "window", sim.DefaultWindow, "blocks per request")
	fs.DurationVar(&t.Boot, "boot-time", sim.DefaultBoot, "how long a reboot takes")
	fs.DurationVar(&t.CrashAfter, "crash-after", sim.DefaultCrashAfter, "how long a boot-loop image runs before it crashes")
	fs.DurationVar(&t.KeepAlive, "keepalive", sim.DefaultKeepAlive, "MQTT keepalive")
	fs.BoolVar(&o.printVersion, "version-info", false, "print devsim's version and exit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	t.MaxRetries, t.MaxReboots, t.MaxWDTResets = o.maxRetries, o.maxReboots, o.maxWDTResets
	t.BlockSize, t.Window = uint32(o.blockSize), uint32(o.window)
	return o, nil
}

func profileNames() []string {
	var out []string
	for _, p := range sim.Profiles() {
		out = append(out, p.String())
	}
	return out
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "demo" {
		return runDemo(args[1:], stdout, stderr)
	}
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintln(stderr, "devsim:", err)
		return exitUsage
	}
	if o.printVersion {
		fmt.Fprintln(stdout, "devsim", version.String())
		return exitOK
	}
	specs, cfg, err := o.fleet(ctx, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "devsim:", err)
		if errors.As(err, new(usageError)) {
			return exitUsage
		}
		return exitError
	}
	if err := simulate(ctx, o, cfg, specs, stdout, stderr); err != nil {
		fmt.Fprintln(stderr, "devsim:", err)
		return exitError
	}
	return exitOK
}

// usageError is a problem with the command line (exit status 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// fleet builds the fleet's configuration and devices from the options,
// registering devices first when asked to.
func (o *options) fleet(ctx context.Context, stderr io.Writer) ([]sim.DeviceSpec, sim.Config, error) {
	cfg := sim.Config{URL: o.url, Seed: o.seed, Timing: o.timing, V311: o.v311, ConnectRate: o.connectRate,
		Load: o.load, SlowRate: o.slowRate, WrongHardware: o.wrongHardware, OldVersion: o.oldVersion}
	var problems []error
	w, err := sim.ParseWindow(o.offline)
	if err != nil {
		problems = append(problems, fmt.Errorf("--offline-window: %w", err))
	}
	cfg.Offline = w
	keys := manifest.KeySet{}
	for _, f := range o.keys {
		pub, err := manifest.LoadPublicKey(f)
		if err != nil {
			problems = append(problems, fmt.Errorf("--key %s: %w", f, err))
			continue
		}
		keys[manifest.KeyIDOf(pub)] = pub
	}
	cfg.Keys = keys
	if len(keys) == 0 && !o.load && len(o.keys) == 0 {
		problems = append(problems, usagef("give the trusted release keys with --key (or run --load)"))
	}
	sources := 0
	for _, s := range []bool{o.tokens != "", o.devices != "", o.register > 0} {
		if s {
			sources++
		}
	}
	if sources == 0 {
		problems = append(problems, usagef("no devices: give --tokens, --devices or --register"))
	}
	if o.register > 0 && o.user == "" {
		problems = append(problems, usagef("--register needs an operator: --user and --password (or OTAMQ_USER, OTAMQ_PASSWORD)"))
	}
	if o.register > 0 && (o.tokens != "" || o.devices != "") {
		problems = append(problems, usagef("--register makes its own devices: not with --tokens or --devices"))
	}
	profiles, err := sim.ParseMix(o.profiles, sim.ParseProfile)
	if err != nil {
		problems = append(problems, fmt.Errorf("--profile: %w", err))
	}
	hardware, err := sim.ParseMix(o.hardware, func(s string) (string, error) { return s, nil })
	if err != nil {
		problems = append(problems, fmt.Errorf("--hardware: %w", err))
	}
	links, err := sim.ParseMix(o.links, func(s string) (wire.Connectivity, error) {
		c, ok := wire.ParseConnectivity(strings.ReplaceAll(s, "-", "_"))
		if !ok {
			return 0, fmt.Errorf("connectivity %q: want wifi, cellular, ethernet or via-gateway", s)
		}
		return c, nil
	})
	if err != nil {
		problems = append(problems, fmt.Errorf("--connectivity: %w", err))
	}
	offsets, err := sim.ParseMix(o.offsets, func(s string) (int16, error) {
		n, err := strconv.Atoi(s)
		if err != nil || n < -14*60 || n > 14*60 {
			return 0, fmt.Errorf("UTC offset %q: want minutes from -840 to 840", s)
		}
		return int16(n), nil
	})
	if err != nil {
		problems = append(problems, fmt.Errorf("--utc-offsets: %w", err))
	}
	text := func(s string) (string, error) { return s, nil }
	var regions, groups sim.Mix[string]
	if o.regions != "" {
		if regions, err = sim.ParseMix(o.regions, text); err != nil {
			problems = append(problems, fmt.Errorf("--regions: %w", err))
		}
	}
	if o.groups != "" {
		if groups, err = sim.ParseMix(o.groups, text); err != nil {
			problems = append(problems, fmt.Errorf("--groups: %w", err))
		}
	}
	if (o.regions != "" || o.groups != "") && o.register == 0 {
		problems = append(problems, usagef("--regions and --groups are for --register"))
	}
	if len(problems) > 0 {
		return nil, cfg, usageError{errors.Join(problems...)}
	}
	var faults []string
	for v := range strings.SplitSeq(o.faultVersions, ",") {
		if v = strings.TrimSpace(v); v != "" {
			faults = append(faults, v)
		}
	}

	// The devices: their IDs and tokens, then what the mixes give them.
	var specs []sim.DeviceSpec
	switch {
	case o.devices != "":
		f, err := os.Open(o.devices)
		if err != nil {
			return nil, cfg, err
		}
		specs, err = sim.ReadSpecs(f)
		f.Close()
		if err != nil {
			return nil, cfg, fmt.Errorf("%s: %w", o.devices, err)
		}
		if o.tokens != "" {
			creds, err := readTokens(o.tokens)
			if err != nil {
				return nil, cfg, err
			}
			byID := map[string]string{}
			for _, c := range creds {
				byID[c.ID] = c.Token
			}
			for i := range specs {
				if specs[i].Token == "" {
					specs[i].Token = byID[specs[i].ID]
				}
			}
		}
		return specs, cfg, nil
	case o.tokens != "":
		creds, err := readTokens(o.tokens)
		if err != nil {
			return nil, cfg, err
		}
		for _, c := range creds {
			specs = append(specs, sim.DeviceSpec{ID: c.ID, Token: c.Token})
		}
	default:
		width := len(strconv.Itoa(o.register))
		for i := range o.register {
			specs = append(specs, sim.DeviceSpec{ID: fmt.Sprintf("%s%0*d", o.prefix, width, i+1)})
		}
	}
	slices.SortFunc(specs, func(a, b sim.DeviceSpec) int { return strings.Compare(a.ID, b.ID) })
	n := len(specs)
	prof, hw := profiles.Assign(n, o.seed, "profile"), hardware.Assign(n, o.seed, "hardware")
	link, off := links.Assign(n, o.seed, "connectivity"), offsets.Assign(n, o.seed, "utc-offset")
	for i := range specs {
		s := &specs[i]
		s.Profile, s.Hardware, s.Connectivity, s.UTCOffsetMinutes = prof[i], hw[i], link[i], off[i]
		if s.Profile == sim.WrongHardware {
			s.Hardware = o.wrongHardware
		}
		s.Version, s.SecureVersion, s.Bootloader = o.version, uint32(o.secureVersion), o.bootloader
		if s.Profile == sim.TooOld {
			s.Version = o.oldVersion
		}
		s.AllowDowngrade, s.FaultVersions = o.allowDowngrade, faults
	}
	if o.register > 0 {
		var reg, grp []string
		if regions != nil {
			reg = regions.Assign(n, o.seed, "region")
		}
		if groups != nil {
			grp = groups.Assign(n, o.seed, "group")
		}
		regs := make([]sim.Registration, n)
		for i, s := range specs {
			r := &regs[i]
			r.ID, r.Hardware, r.Connectivity = s.ID, s.Hardware, strings.ReplaceAll(s.Connectivity.String(), "_", "-")
			if reg != nil {
				r.Region = reg[i]
			}
			if grp != nil && grp[i] != "none" {
				r.Groups = []string{grp[i]}
			}
		}
		creds, err := o.registerAll(ctx, regs, stderr)
		if err != nil {
			return nil, cfg, err
		}
		for i := range specs {
			specs[i].Token = creds[i].Token
		}
	}
	return specs, cfg, nil
}

func readTokens(path string) ([]sim.Credential, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	creds, err := sim.ReadTokens(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return creds, nil
}

// registerAll registers regs and writes their tokens to --tokens-out.
func (o *options) registerAll(ctx context.Context, regs []sim.Registration, stderr io.Writer) ([]sim.Credential, error) {
	var out *os.File
	if o.tokensOut != "" {
		f, err := os.OpenFile(o.tokensOut, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			if errors.Is(err, os.ErrExist) {
				return nil, fmt.Errorf("%s exists: it may hold tokens shown nowhere else; choose another --tokens-out", o.tokensOut)
			}
			return nil, err
		}
		out = f
		defer out.Close()
	}
	c, err := rpc.Dial(ctx, rpc.Config{URL: o.url, Username: o.user, Password: o.password})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	start := time.Now()
	creds, err := sim.Register(ctx, c, regs)
	if out != nil && len(creds) > 0 {
		if werr := sim.WriteTokens(out, creds); werr != nil {
			return nil, fmt.Errorf("write %s: %w (the devices are registered)", o.tokensOut, werr)
		}
		if serr := out.Sync(); serr != nil {
			return nil, serr
		}
	}
	if err != nil {
		if out != nil {
			err = fmt.Errorf("%w; the %d devices registered have their tokens in %s", err, len(creds), o.tokensOut)
		}
		return nil, err
	}
	fmt.Fprintf(stderr, "devsim: registered %d devices in %s\n", len(creds), time.Since(start).Round(time.Millisecond))
	return creds, nil
}

// summary is what devsim prints at the end (--json: as one JSON object).
type summary struct {
	sim.Stats
	Elapsed float64 `json:"elapsed_s"`
	// ConnectSeconds is the time until every device had connected once
	// (0: not all did), and ConnectRate devices per second over it.
	ConnectSeconds float64 `json:"connect_s,omitempty"`
	ConnectRate    float64 `json:"connects_per_s,omitempty"`
	// Memory per device, measured once every device had connected: heap in
	// use, goroutine stacks and the process's resident set, each divided
	// by the number of devices.
	Memory *memory `json:"memory_per_device,omitempty"`
}

type memory struct {
	Heap  uint64 `json:"heap_bytes"`
	Stack uint64 `json:"stack_bytes"`
	RSS   uint64 `json:"rss_bytes,omitempty"`
	// Goroutines per device.
	Goroutines float64 `json:"goroutines"`
}

func simulate(ctx context.Context, o *options, cfg sim.Config, specs []sim.DeviceSpec, stdout, stderr io.Writer) error {
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelDebug
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	f, err := sim.New(cfg)
	if err != nil {
		return err
	}
	if err := f.Add(specs...); err != nil {
		return err
	}
	if o.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}
	start := time.Now()
	f.Start()
	var sum summary
	var tick <-chan time.Time
	if o.progress > 0 {
		t := time.NewTicker(o.progress)
		defer t.Stop()
		tick = t.C
	}
	poll := time.NewTicker(100 * time.Millisecond)
	defer poll.Stop()
	n := len(specs)
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-tick:
			printProgress(stderr, o.jsonOut, time.Since(start), f.Stats())
		case <-poll.C:
			if sum.ConnectSeconds == 0 {
				if st := f.Stats(); n > 0 && st.Seen+st.Dead >= n {
					sum.ConnectSeconds = time.Since(start).Seconds()
					sum.ConnectRate = float64(n) / sum.ConnectSeconds
					sum.Memory = measure(n)
					if !o.jsonOut {
						fmt.Fprintf(stderr, "devsim: %d devices connected in %.2fs (%.0f/s); per device: heap %d B, stacks %d B, RSS %d B, %.1f goroutines\n",
							n, sum.ConnectSeconds, sum.ConnectRate, sum.Memory.Heap, sum.Memory.Stack, sum.Memory.RSS, sum.Memory.Goroutines)
					}
				}
			}
		}
	}
	sum.Stats = f.Stats()
	sum.Elapsed = time.Since(start).Seconds()
	stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.Stop(stopCtx); err != nil {
		return err
	}
	if o.report != "" {
		if err := writeReport(o.report, f.Devices()); err != nil {
			return err
		}
	}
	return printSummary(stdout, o.jsonOut, sum)
}

// writeReport writes each device's snapshot as a line of JSON.
func writeReport(path string, devs []sim.Snapshot) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(f)
	for _, d := range devs {
		if err := enc.Encode(d); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

func printProgress(w io.Writer, asJSON bool, elapsed time.Duration, s sim.Stats) {
	if asJSON {
		b, _ := json.Marshal(struct {
			Elapsed float64 `json:"elapsed_s"`
			sim.Stats
		}{elapsed.Seconds(), s})
		fmt.Fprintln(w, string(b))
		return
	}
	fmt.Fprintf(w, "devsim: %5.0fs devices %d connected %d %s | versions %s\n", elapsed.Seconds(), s.Devices, s.Connected,
		counts(s.States, stateOrder), counts(s.Versions, nil))
}

var stateOrder = func() []string {
	var out []string
	for i := range wire.StateFailed + 1 {
		out = append(out, i.String())
	}
	return out
}()

// counts prints the non-zero counts of m, in order (sorted when nil).
func counts(m map[string]int, order []string) string {
	if order == nil {
		for k := range m {
			order = append(order, k)
		}
		slices.Sort(order)
	}
	var parts []string
	for _, k := range order {
		if m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
		}
	}
	return strings.Join(parts, ", ")
}

func printSummary(w io.Writer, asJSON bool, s summary) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	}
	fmt.Fprintf(w, "devices      %d (connected %d, running %d, dead %d) after %.1fs\n", s.Devices, s.Connected, s.Up, s.Dead, s.Elapsed)
	fmt.Fprintf(w, "ota states   %s\n", counts(s.States, stateOrder))
	fmt.Fprintf(w, "versions     %s\n", counts(s.Versions, nil))
	fmt.Fprintf(w, "profiles     %s\n", counts(s.Profiles, profileNames()))
	fmt.Fprintf(w, "connects     %d (%d failed, %d refused)\n", s.Connects, s.ConnectFailures, s.Refused)
	fmt.Fprintf(w, "messages     %d births, %d heartbeats, %d events (%d lost), %d offers (%d refused)\n",
		s.Births, s.Heartbeats, s.Events, s.EventsLost, s.Offers, s.Rejected)
	fmt.Fprintf(w, "downloads    %d block requests, %d blocks, %d bytes; %d commits, %d rollbacks\n",
		s.Requests, s.Blocks, s.Bytes, s.Commits, s.Rollbacks)
	if s.ConnectSeconds > 0 {
		fmt.Fprintf(w, "connected    all in %.2fs (%.0f devices/s)\n", s.ConnectSeconds, s.ConnectRate)
	}
	if m := s.Memory; m != nil {
		fmt.Fprintf(w, "memory       per device: heap %d B, stacks %d B, RSS %d B, %.1f goroutines\n", m.Heap, m.Stack, m.RSS, m.Goroutines)
	}
	return nil
}
