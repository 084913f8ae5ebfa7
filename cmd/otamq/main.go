// Command otamq is the otamq broker: an MQTT broker for device fleets with
// over-the-air updates built in. It reads a YAML configuration file
// (optional), applies command-line flags over it, and runs until SIGINT or
// SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/config"
	"github.com/otamq/otamq/internal/stackstart"
	"github.com/otamq/otamq/internal/version"
)

const usage = `otamq - MQTT broker with over-the-air updates for device fleets

Usage:
  otamq [flags]

With no flags otamq runs on loopback with embedded defaults: MQTT on
127.0.0.1:1883, metrics on http://127.0.0.1:9100/metrics, data in ./data.
On an empty database it creates the first operator and prints its
password once (also written to <data-dir>/first-operator.txt, mode 0600).

A configuration file (--config, see config/otamq.example.yaml) sets
everything; flags override the file.

Environment:
  OTAMQ_FIRST_OPERATOR_PASSWORD  password of the first operator (instead of
                                 a generated one), used only on an empty
                                 database
  GODEBUG                        otamq starts itself again with
                                 adaptivestackstart=0 added unless GODEBUG
                                 sets adaptivestackstart (smaller goroutine
                                 stacks after a fleet reconnects at once)

Flags:
`

func main() {
	stackstart.Ensure()
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// override is a flag that sets one key of the configuration file.
type override struct {
	flag, key string
	set       func(f *config.File) // copies the flag's value into f
}

// firstPasswordEnv sets admin.first_operator_password.
const firstPasswordEnv = "OTAMQ_FIRST_OPERATOR_PASSWORD"

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("otamq", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported below, help on stdout
	var overrides []override
	str := func(name, key, def, usage string, field func(*config.File) *string) {
		v := fs.String(name, def, usage+" (config: "+key+")")
		overrides = append(overrides, override{name, key, func(f *config.File) { *field(f) = *v }})
	}
	cfgPath := fs.String("config", "", "YAML configuration file (see config/otamq.example.yaml)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	str("data-dir", "data_dir", broker.DefaultDataDir, "directory of the database and first-operator file", func(f *config.File) *string { return &f.DataDir })
	str("mqtt-addr", "mqtt.tcp_addr", broker.DefaultTCPAddr, `plain MQTT listener address ("off" to disable)`, func(f *config.File) *string { return &f.MQTT.TCPAddr })
	str("tls-addr", "mqtt.tls_addr", "", "MQTT over TLS listener address (needs --tls-cert and --tls-key)", func(f *config.File) *string { return &f.MQTT.TLSAddr })
	str("tls-cert", "mqtt.tls_cert", "", "TLS certificate (PEM)", func(f *config.File) *string { return &f.MQTT.TLSCert })
	str("tls-key", "mqtt.tls_key", "", "TLS private key (PEM)", func(f *config.File) *string { return &f.MQTT.TLSKey })
	str("tls-client-ca", "mqtt.tls_client_ca", "", "fleet CA (PEM): clients may authenticate with a certificate whose CN is their client ID", func(f *config.File) *string { return &f.MQTT.TLSClientCA })
	str("http-addr", "http.addr", broker.DefaultHTTPAddr, `metrics and health listener ("off" to disable)`, func(f *config.File) *string { return &f.HTTP.Addr })
	str("prefix", "prefix", broker.DefaultPrefix, "device topic prefix", func(f *config.File) *string { return &f.Prefix })
	str("first-operator", "admin.first_operator", broker.DefaultFirstOperator, "ID of the operator created on an empty database", func(f *config.File) *string { return &f.Admin.FirstOperator })
	str("log-level", "log.level", "info", "debug, info, warn or error", func(f *config.File) *string { return &f.Log.Level })
	str("log-format", "log.format", "text", "text or json", func(f *config.File) *string { return &f.Log.Format })
	pprof := fs.Bool("pprof", false, "serve /debug/pprof/ on the HTTP listener (config: http.pprof)")
	overrides = append(overrides, override{"pprof", "http.pprof", func(f *config.File) { f.HTTP.Pprof = *pprof }})

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintf(stderr, "otamq: %v\nRun \"otamq --help\" for the flags.\n", err)
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, "otamq", version.String())
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "otamq: unexpected arguments: %s\nRun \"otamq --help\" for the flags.\n", strings.Join(fs.Args(), " "))
		return 2
	}
	flagOf := map[string]string{"admin.first_operator_password": firstPasswordEnv}
	for _, o := range overrides {
		flagOf[o.key] = "--" + o.flag
	}
	report := func(err error) {
		for _, e := range leaves(err) {
			var se *broker.SettingError
			if !errors.As(e, &se) {
				fmt.Fprintln(stderr, "otamq:", e)
				continue
			}
			var hints []string
			for _, k := range se.Keys {
				if f, ok := flagOf[k]; ok {
					hints = append(hints, f+" or "+k)
				} else {
					hints = append(hints, k)
				}
			}
			fmt.Fprintf(stderr, "otamq: %v (set %s)\n", se.Err, strings.Join(hints, ", "))
		}
	}

	// Every problem of the file and of the flags is reported at once.
	var f config.File
	var loadErr error
	if *cfgPath != "" {
		f, loadErr = config.Load(*cfgPath)
		if errors.Is(loadErr, iofs.ErrNotExist) || errors.Is(loadErr, iofs.ErrPermission) {
			report(loadErr)
			return 2
		}
	}
	// Flags given explicitly override the file.
	given := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	for _, o := range overrides {
		if given[o.flag] {
			o.set(&f)
		}
	}
	if pw := os.Getenv(firstPasswordEnv); pw != "" {
		f.Admin.FirstOperatorPassword = pw
	}
	opts, err := f.Options(stderr)
	if err := errors.Join(loadErr, err); err != nil {
		report(err)
		return 2
	}

	b, err := broker.New(opts)
	if err != nil {
		report(err)
		return 1
	}
	if c := b.FirstOperator; c != nil {
		printFirstOperator(stdout, c, b)
	}
	if err := b.Start(); err != nil {
		report(err)
		_ = b.Shutdown(context.Background())
		return 1
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	signal.Stop(sig)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.Shutdown(ctx); err != nil {
		fmt.Fprintln(stderr, "otamq: shutdown:", err)
		return 1
	}
	return 0
}

// leaves returns the errors joined in err (recursively), or err alone.
func leaves(err error) []error {
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return []error{err}
	}
	var out []error
	for _, e := range j.Unwrap() {
		out = append(out, leaves(e)...)
	}
	return out
}

func printFirstOperator(w io.Writer, c *broker.Credentials, b *broker.Broker) {
	url := "mqtt://" + b.Addr()
	if b.Addr() == "" {
		url = "mqtts://" + b.TLSAddr()
	}
	fmt.Fprintln(w, "")
	fmt.Fprintln(w, "  First operator created. Use it with otactl:")
	fmt.Fprintln(w, "")
	fmt.Fprintf(w, "    export OTAMQ_URL=%s\n", url)
	fmt.Fprintf(w, "    export OTAMQ_USER=%s\n", c.ID)
	if c.Generated {
		fmt.Fprintf(w, "    export OTAMQ_PASSWORD=%s\n", c.Password)
		fmt.Fprintln(w, "")
		fmt.Fprintf(w, "  The password is shown only this once; it is also in %s (mode 0600).\n", c.File)
		fmt.Fprintln(w, "  Store it elsewhere and delete that file.")
	} else {
		fmt.Fprintln(w, "    export OTAMQ_PASSWORD=...  (the password you configured)")
	}
	fmt.Fprintln(w, "")
}
