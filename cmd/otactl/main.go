// Command otactl is the operator's tool for otamq: it manages devices,
// operators and the audit log over the broker's admin topics (MQTT v5
// request/response), and signs releases offline.
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
	"os"
	"strings"
	"time"

	"github.com/otamq/otamq/cmd/otactl/rpc"
)

const usage = `otactl - operate an otamq fleet

Usage:
  otactl [global flags] <command> [flags] [args]

Devices and gateways:
  device register ID [--role gateway] [--hardware H] [--region R]
                     [--connectivity wifi|cellular|ethernet|via_gateway]
                     [--group G]... [--tag k=v]... [--parent GATEWAY] [--cert-only]
  device list        [--role R] [--hardware H] [--region R] [--group G] [--tag k[=v]]
                     [--parent GW] [--firmware V] [--online|--offline] [--revoked]
                     [--limit N] [--all]
  device get ID
  device update ID   [--hardware H] [--region R] [--connectivity C] [--group G]...
                     [--no-groups] [--tag k=v]... [--no-tags] [--parent GW|--no-parent]
                     [--rotate-token] [--reinstate]
  device revoke ID   [--reason TEXT]
  device import FILE [--tokens OUT] [--batch N]   register a fleet from CSV or JSON lines
                     (id, role, hardware, region, connectivity, groups, tags, parent, auth);
                     tokens go to a new file (mode 0600), default FILE.tokens

Operators and observers:
  operator add ID    [--observer] [--cert-only] [--password-stdin]
  operator list
  operator update ID [--rotate-password | --password-stdin] [--reinstate]
  operator revoke ID [--reason TEXT]

Audit log:
  audit              [--actor ID] [--action resource/verb] [--target ID] [--limit N]

Keys, releases and offers:
  key add PUB.pem    [--name NAME]          trust a release signing key
  key list
  key revoke KID                            its releases can no longer be offered
  release upload IMAGE MANIFEST [--part-size N]   verified by the broker; resumes
  release list       [--version V] [--hardware H]
  release get REF                           REF: ID, VERSION@DIGEST-PREFIX, or VERSION
  release uploads                           unfinished uploads, with their UPLOAD-ID
  release abort UPLOAD-ID                   drop an unfinished upload
  offer create RELEASE DEVICE... [--rollout ID] [--on-command] [--block-size N] [--deadline UNIX]
  offer cancel DEVICE...                    devices get the empty offer
  offer list         [--device D]
  command send VERB DEVICE... [--rollout ID]   VERB: install, cancel, check, reboot
  device timeline ID [--limit N]            offers, cancels and the device's update events

Release signing (offline, no broker; the private key never leaves this machine):
  keygen             [--out DIR] [--name NAME]    writes NAME.key (mode 0600) and NAME.pub
  sign IMAGE         --key NAME.key --build BUILD.yaml [--out FILE] [--force]
                     (BUILD.yaml: see config/build.example.yaml; default out IMAGE.manifest)
  verify MANIFEST    --pub NAME.pub [--image IMAGE]
                     (exit status 1 says what is wrong: malformed, another key,
                     bad signature, size or digest mismatch)

Global flags (also from the environment):
  --url URL        broker, mqtt://host:port or mqtts://host:port   (OTAMQ_URL, default mqtt://127.0.0.1:1883)
  --user ID        operator ID; the MQTT client ID is ID~RANDOM   (OTAMQ_USER)
  --password PW    operator password                               (OTAMQ_PASSWORD)
  --ca FILE        CA to verify the broker's TLS certificate       (OTAMQ_CA)
  --cert FILE      client certificate for mTLS                     (OTAMQ_CERT)
  --key FILE       its private key                                 (OTAMQ_KEY)
  --prefix P       topic prefix                                    (OTAMQ_PREFIX, default dm)
  --timeout D      per request                                     (default 10s)
  --json           print results as JSON, for scripts

Exit status: 0 ok, 1 the broker refused or failed, 2 usage error.
`

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
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "per-request timeout")
	fs.BoolVar(&g.json, "json", g.json, "JSON output")
}

func (g *globals) dial(ctx context.Context) (*rpc.Client, error) {
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
		"release upload":  releaseUpload,
		"release list":    releaseList,
		"release get":     releaseGet,
		"release abort":   releaseAbort,
		"release uploads": releaseUploads,
		"offer create":    offerCreate,
		"offer cancel":    offerCancel,
		"offer list":      offerList,
		"command send":    commandSend,
		"device timeline": deviceTimeline,
		"keygen":          keygenCmd,
		"sign":            signCmd,
		"verify":          verifyCmd,
	}
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	g := fromEnv()
	top := flag.NewFlagSet("otactl", flag.ContinueOnError)
	top.SetOutput(io.Discard)
	g.bind(top)
	if err := top.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return 0
		}
		fmt.Fprintf(stderr, "otactl: %v\n\n%s", err, usage)
		return 2
	}
	rest := top.Args()
	if len(rest) == 0 || rest[0] == "help" {
		fmt.Fprint(stdout, usage)
		return 0
	}
	cmds := commands()
	name := rest[0]
	rest = rest[1:]
	if _, ok := cmds[name]; !ok && len(rest) > 0 {
		name, rest = name+" "+rest[0], rest[1:]
	}
	cmd, ok := cmds[name]
	if !ok {
		fmt.Fprintf(stderr, "otactl: unknown command %q\n\n%s", strings.TrimSpace(name), usage)
		return 2
	}
	fs := flag.NewFlagSet("otactl "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	g.bind(fs) // global flags may also follow the command
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	pos, err := parseInterspersed(fs, rest)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return 0
		}
		fmt.Fprintf(stderr, "otactl %s: %v\n", name, err)
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
		return 2
	}
	return 1
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
