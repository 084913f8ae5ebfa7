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
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/config"
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

Flags:
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("otamq", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	var (
		cfgPath   = fs.String("config", "", "YAML configuration file")
		dataDir   = fs.String("data-dir", broker.DefaultDataDir, "directory of the database and first-operator file")
		mqttAddr  = fs.String("mqtt-addr", broker.DefaultTCPAddr, `plain MQTT listener address ("off" to disable)`)
		tlsAddr   = fs.String("tls-addr", "", "MQTT over TLS listener address (needs --tls-cert and --tls-key)")
		tlsCert   = fs.String("tls-cert", "", "TLS certificate (PEM)")
		tlsKey    = fs.String("tls-key", "", "TLS private key (PEM)")
		clientCA  = fs.String("tls-client-ca", "", "fleet CA (PEM): clients may authenticate with a certificate whose CN is their client ID")
		httpAddr  = fs.String("http-addr", broker.DefaultHTTPAddr, `metrics and health listener ("off" to disable)`)
		prefix    = fs.String("prefix", broker.DefaultPrefix, "device topic prefix")
		firstOp   = fs.String("first-operator", broker.DefaultFirstOperator, "ID of the operator created on an empty database")
		logLevel  = fs.String("log-level", "info", "debug, info, warn or error")
		logFormat = fs.String("log-format", "text", "text or json")
		pprof     = fs.Bool("pprof", false, "serve /debug/pprof/ on the HTTP listener")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "otamq: unexpected arguments: %s\n", strings.Join(fs.Args(), " "))
		return 2
	}

	var f config.File
	if *cfgPath != "" {
		var err error
		if f, err = config.Load(*cfgPath); err != nil {
			fmt.Fprintln(stderr, "otamq:", err)
			return 2
		}
	}
	// Flags given explicitly override the file.
	fs.Visit(func(fl *flag.Flag) {
		switch fl.Name {
		case "data-dir":
			f.DataDir = *dataDir
		case "mqtt-addr":
			f.MQTT.TCPAddr = *mqttAddr
		case "tls-addr":
			f.MQTT.TLSAddr = *tlsAddr
		case "tls-cert":
			f.MQTT.TLSCert = *tlsCert
		case "tls-key":
			f.MQTT.TLSKey = *tlsKey
		case "tls-client-ca":
			f.MQTT.TLSClientCA = *clientCA
		case "http-addr":
			f.HTTP.Addr = *httpAddr
		case "prefix":
			f.Prefix = *prefix
		case "first-operator":
			f.Admin.FirstOperator = *firstOp
		case "log-level":
			f.Log.Level = *logLevel
		case "log-format":
			f.Log.Format = *logFormat
		case "pprof":
			f.HTTP.Pprof = *pprof
		}
	})
	if pw := os.Getenv("OTAMQ_FIRST_OPERATOR_PASSWORD"); pw != "" {
		f.Admin.FirstOperatorPassword = pw
	}
	opts, err := f.Options(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "otamq: configuration:", err)
		return 2
	}

	b, err := broker.New(opts)
	if err != nil {
		fmt.Fprintln(stderr, "otamq:", err)
		return 1
	}
	if c := b.FirstOperator; c != nil {
		printFirstOperator(stdout, c, b.Addr())
	}
	if err := b.Start(); err != nil {
		fmt.Fprintln(stderr, "otamq:", err)
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

func printFirstOperator(w io.Writer, c *broker.Credentials, addr string) {
	fmt.Fprintln(w, "")
	fmt.Fprintln(w, "  First operator created. Use it with otactl:")
	fmt.Fprintln(w, "")
	fmt.Fprintf(w, "    export OTAMQ_URL=mqtt://%s\n", addr)
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
