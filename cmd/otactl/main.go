// Command otactl is the operator's tool for otamq: it manages devices,
// operators, releases, rollouts and the audit log over the broker's admin
// topics (MQTT v5 request/response), and signs releases offline.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/otamq/otamq/cmd/otactl/rpc"
	"github.com/otamq/otamq/internal/version"
)

// globals are the connection settings and output mode every command has.
type globals struct {
	url, user, password, ca, cert, key, prefix string
	timeout                                    time.Duration
	json                                       bool
}

// fromEnv returns the globals' defaults, from the environment.
func fromEnv() *globals {
	env := func(k, def string) string {
		if v := os.Getenv(k); v != "" {
			return v
		}
		return def
	}
	return &globals{
		url: env("OTAMQ_URL", "mqtt://127.0.0.1:1883"), user: env("OTAMQ_USER", ""), password: env("OTAMQ_PASSWORD", ""),
		ca: env("OTAMQ_CA", ""), cert: env("OTAMQ_CERT", ""), key: env("OTAMQ_KEY", ""), prefix: env("OTAMQ_PREFIX", "dm"),
		timeout: 10 * time.Second,
	}
}

// bind registers the global flags on fs, each defaulting to its current
// value, so that they may come before or after the command.
func (g *globals) bind(fs *flag.FlagSet) {
	fs.StringVar(&g.url, "url", g.url, "broker URL")
	fs.StringVar(&g.user, "user", g.user, "operator ID")
	fs.StringVar(&g.password, "password", g.password, "operator password")
	fs.StringVar(&g.ca, "ca", g.ca, "CA file for the broker's certificate")
	fs.StringVar(&g.cert, "cert", g.cert, "client certificate file")
	fs.StringVar(&g.key, "key", g.key, "client key file")
	fs.StringVar(&g.prefix, "prefix", g.prefix, "topic prefix")
	fs.Var((*duration)(&g.timeout), "timeout", "per-request timeout")
	fs.BoolVar(&g.json, "json", g.json, "JSON output")
}

// duration is a flag.Value for durations that says what is wrong with a
// bare number ("duration 10: add a unit, e.g. 10s") and refuses a duration
// that is not positive.
type duration time.Duration

func (d *duration) String() string { return time.Duration(*d).String() }

func (d *duration) Set(s string) error {
	v, err := parseDuration(s)
	if err != nil {
		return err
	}
	*d = duration(v)
	return nil
}

var bareNumber = regexp.MustCompile(`^[0-9]+(\.[0-9]*)?$`)

// parseDuration reads a positive Go duration such as 10s, 500ms or 1m30s.
func parseDuration(s string) (time.Duration, error) {
	if bareNumber.MatchString(s) {
		return 0, fmt.Errorf("duration %s: add a unit, e.g. %ss", s, s)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("duration %q: want a number with a unit, e.g. 10s, 500ms or 1m30s", s)
	}
	if v <= 0 {
		return 0, fmt.Errorf("duration %s: must be more than 0", s)
	}
	return v, nil
}

func (g *globals) dial(ctx context.Context) (*rpc.Client, error) {
	// What the command line must say is checked before connecting: a
	// mistake here is a usage error (exit status 2).
	if u, err := url.Parse(g.url); err != nil || u.Host == "" || !slices.Contains([]string{"mqtt", "tcp", "mqtts", "tls", "ssl"}, u.Scheme) {
		return nil, usagef("--url %q: want mqtt://host:port or mqtts://host:port (or set OTAMQ_URL)", g.url)
	}
	if g.user == "" {
		return nil, usagef("no operator given: set --user or OTAMQ_USER (and --password or OTAMQ_PASSWORD)")
	}
	cfg := rpc.Config{URL: g.url, Username: g.user, Password: g.password, Prefix: g.prefix, Timeout: g.timeout}
	if g.ca != "" || g.cert != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if g.ca != "" {
			pem, err := os.ReadFile(g.ca)
			if err != nil {
				return nil, fmt.Errorf("--ca: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("--ca %s: no PEM certificate in it", g.ca)
			}
		}
		if g.cert != "" {
			kp, err := tls.LoadX509KeyPair(g.cert, g.key)
			if err != nil {
				return nil, fmt.Errorf("--cert/--key: %w", err)
			}
			tc.Certificates = []tls.Certificate{kp}
		}
		cfg.TLS = tc
	}
	return rpc.Dial(ctx, cfg)
}

// usageError is a mistake on the command line (exit status 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// command is one otactl command.
type command struct {
	flags func(fs *flag.FlagSet) // registers the command's own flags
	run   func(ctx context.Context, e *env, args []string) error
}

// env is what a running command has.
type env struct {
	g      *globals
	fs     *flag.FlagSet
	out    io.Writer
	errOut io.Writer
	stdin  io.Reader
	client *rpc.Client
}

// call sends a request on the lazily opened connection.
func (e *env) call(ctx context.Context, action string, req, result any) error {
	if e.client == nil {
		c, err := e.g.dial(ctx)
		if err != nil {
			return err
		}
		e.client = c
	}
	return e.client.Call(ctx, action, req, result)
}

// printJSON writes v indented.
func (e *env) printJSON(v any) error {
	enc := json.NewEncoder(e.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func commands() map[string]command {
	return map[string]command{
		"device register": deviceRegister,
		"device list":     deviceList,
		"device get":      deviceGet,
		"device update":   deviceUpdate,
		"device revoke":   deviceRevoke,
		"device import":   deviceImport,
		"operator add":    operatorAdd,
		"operator list":   operatorList,
		"operator update": operatorUpdate,
		"operator revoke": operatorRevoke,
		"audit":           auditCmd,
		"key add":         keyAdd,
		"key list":        keyList,
		"key revoke":      keyRevoke,
		"key show":        keyShow,
		"release upload":  releaseUpload,
		"release list":    releaseList,
		"release get":     releaseGet,
		"release abort":   releaseAbort,
		"release uploads": releaseUploads,
		"offer create":    offerCreate,
		"offer cancel":    offerCancel,
		"offer list":      offerList,
		"command send":    commandSend,
		"rollout create":  rolloutCreateCmd,
		"rollout plan":    rolloutPlanCmd,
		"rollout approve": rolloutVerb("rollout/approve", "approved"),
		"rollout start":   rolloutVerb("rollout/start", "started"),
		"rollout pause":   rolloutPauseCmd,
		"rollout resume":  rolloutVerb("rollout/resume", "resumed"),
		"rollout abort":   rolloutAbortCmd,
		"rollout status":  rolloutStatusCmd,
		"rollout list":    rolloutListCmd,
		"rollout devices": rolloutDevicesCmd,
		"rollout watch":   rolloutWatchCmd,
		"device timeline": deviceTimeline,
		"keygen":          keygenCmd,
		"sign":            signCmd,
		"verify":          verifyCmd,
	}
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	g := fromEnv()
	cmds := commands()
	top := flag.NewFlagSet("otactl", flag.ContinueOnError)
	top.SetOutput(io.Discard)
	g.bind(top)
	showVersion := top.Bool("version", false, "print the version")
	if err := top.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(stdout, cmds)
			return 0
		}
		fmt.Fprintf(stderr, "otactl: %v\nRun \"otactl --help\" for usage.\n", err)
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, "otactl", version.String())
		return 0
	}
	rest := top.Args()
	if len(rest) == 0 {
		printUsage(stderr, cmds)
		return 2
	}
	if rest[0] == "help" {
		return help(stdout, stderr, cmds, rest[1:])
	}
	name, rest := resolve(cmds, rest)
	cmd, ok := cmds[name]
	if !ok {
		return unknown(stdout, stderr, cmds, name)
	}
	if wantsHelp(rest) {
		printCommandUsage(stdout, name, cmd)
		return 0
	}
	fs := flag.NewFlagSet("otactl "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	g.bind(fs) // global flags may also follow the command
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	pos, err := parseInterspersed(fs, rest)
	if err != nil {
		fmt.Fprintf(stderr, "otactl %s: %v\nRun \"otactl %s --help\" for its usage.\n", name, err, name)
		return 2
	}
	e := &env{g: g, fs: fs, out: stdout, errOut: stderr, stdin: stdin}
	defer func() {
		if e.client != nil {
			_ = e.client.Close()
		}
	}()
	err = cmd.run(ctx, e, pos)
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "otactl %s: %v\n", name, err)
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "Run \"otactl %s --help\" for its usage.\n", name)
		return 2
	}
	return 1
}

// resolve finds the command args name: one word ("audit") or two ("device
// list"). It returns the name (the first word if none matched) and the
// remaining arguments.
func resolve(cmds map[string]command, args []string) (string, []string) {
	if _, ok := cmds[args[0]]; ok || len(args) == 1 {
		return args[0], args[1:]
	}
	if two := args[0] + " " + args[1]; cmds[two].run != nil || groups(cmds)[args[0]] {
		return two, args[2:]
	}
	return args[0], args[1:]
}

// unknown handles a name that is no command: a group alone ("otactl
// device") or with --help prints the group's commands; anything else is a
// usage error.
func unknown(stdout, stderr io.Writer, cmds map[string]command, name string) int {
	first, verb, _ := strings.Cut(name, " ")
	if groups(cmds)[first] {
		switch {
		case verb == "" || verb == "-h" || verb == "-help" || verb == "--help":
			if verb != "" {
				printGroupUsage(stdout, cmds, first)
				return 0
			}
			fmt.Fprintf(stderr, "otactl %s: which command?\n\n", first)
		default:
			fmt.Fprintf(stderr, "otactl: unknown command %q\n\n", name)
		}
		printGroupUsage(stderr, cmds, first)
		return 2
	}
	fmt.Fprintf(stderr, "otactl: unknown command %q\nRun \"otactl --help\" for the commands.\n", first)
	return 2
}

// help answers "otactl help [COMMAND]".
func help(stdout, stderr io.Writer, cmds map[string]command, args []string) int {
	if len(args) == 0 {
		printUsage(stdout, cmds)
		return 0
	}
	name, rest := resolve(cmds, args)
	if cmd, ok := cmds[name]; ok && len(rest) == 0 {
		printCommandUsage(stdout, name, cmd)
		return 0
	}
	if groups(cmds)[name] && len(rest) == 0 {
		printGroupUsage(stdout, cmds, name)
		return 0
	}
	fmt.Fprintf(stderr, "otactl help: unknown command %q\nRun \"otactl --help\" for the commands.\n", strings.Join(args, " "))
	return 2
}

// parseInterspersed parses flags wherever they appear among positional
// arguments ("device register dev-1 --hardware x"). "--" ends the flags.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// oneID checks that exactly one positional argument, an ID, was given.
func oneID(args []string, what string) (string, error) {
	if len(args) != 1 {
		return "", usagef("want exactly one %s ID, got %d arguments", what, len(args))
	}
	return args[0], nil
}

// noArgs checks that no positional argument was given.
func noArgs(args []string) error {
	if len(args) != 0 {
		return usagef("unexpected arguments: %s", strings.Join(args, " "))
	}
	return nil
}

// multi is a repeatable string flag.
type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }
