package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"strings"
	"testing"
)

// Every command declares its help, with examples that name it and parse
// with its flags; every help entry is a command; the global usage lists
// them all.
func TestEveryCommandHasHelp(t *testing.T) {
	cmds := commands()
	for _, h := range helps {
		if _, ok := cmds[h.name]; !ok {
			t.Errorf("help for %q, which is no command", h.name)
		}
	}
	var usage bytes.Buffer
	printUsage(&usage, cmds)
	for name, cmd := range cmds {
		h := helpOf(name)
		if h.summary == "" || len(h.examples) == 0 {
			t.Errorf("%s: no summary or example in helps", name)
			continue
		}
		if !strings.Contains(usage.String(), "  "+strings.TrimSpace(name+" "+h.args)+"  ") {
			t.Errorf("the global usage does not list %q", name)
		}
		for _, ex := range h.examples {
			_, line, ok := strings.Cut(ex, "otactl ")
			if !ok {
				t.Errorf("%s: example %q does not run otactl", name, ex)
				continue
			}
			args := strings.Fields(strings.NewReplacer(`"`, "", `'`, "").Replace(line))
			got, rest := resolve(cmds, args)
			if got != name {
				t.Errorf("example %q runs %q, not %q", ex, got, name)
				continue
			}
			fs := flag.NewFlagSet(name, flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			fromEnv().bind(fs)
			if cmd.flags != nil {
				cmd.flags(fs)
			}
			if _, err := parseInterspersed(fs, rest); err != nil {
				t.Errorf("example %q: %v", ex, err)
			}
		}
	}
}

// run's dispatch: help where asked for (exit 0, on stdout), usage
// mistakes with exit status 2 and a pointer to the right help.
func TestDispatch(t *testing.T) {
	cases := []struct {
		args     []string
		code     int
		out, err string // substrings of stdout and stderr
		notOut   string // not in stdout
	}{
		{args: []string{"--help"}, code: 0, out: "Devices and gateways:"},
		{args: []string{"help"}, code: 0, out: "Release signing"},
		{args: []string{}, code: 2, err: "Usage:"},
		{args: []string{"device", "register", "--help"}, code: 0, out: "otactl device register dev-7 --hardware", notOut: "Release signing"},
		{args: []string{"device", "register", "dev-1", "--region", "eu", "-h"}, code: 0, out: "Usage:\n  otactl device register ID [flags]"},
		{args: []string{"help", "device", "register"}, code: 0, out: "Usage:\n  otactl device register ID"},
		{args: []string{"keygen", "--name", "--help"}, code: 0, out: "otactl keygen --name release"},
		{args: []string{"audit", "--help"}, code: 0, out: "--actor string"},
		{args: []string{"device", "--help"}, code: 0, out: "device timeline ID", notOut: "operator add"},
		{args: []string{"key", "--help"}, code: 0, out: "Examples:\n  otactl key add release.pub --name ci\n"},
		{args: []string{"help", "key"}, code: 0, out: "key show PUB.pem"},
		{args: []string{"device"}, code: 2, err: "which command?"},
		{args: []string{"device", "frobnicate"}, code: 2, err: `unknown command "device frobnicate"`},
		{args: []string{"frobnicate", "--help"}, code: 2, err: `unknown command "frobnicate"`},
		{args: []string{"help", "nope"}, code: 2, err: "unknown command"},
		{args: []string{"--bogus"}, code: 2, err: "flag provided but not defined"},
		{args: []string{"device", "list", "--bogus"}, code: 2, err: `Run "otactl device list --help"`},
		{args: []string{"--timeout", "10", "device", "list"}, code: 2, err: "duration 10: add a unit, e.g. 10s"},
		{args: []string{"device", "list", "--timeout", "1.5"}, code: 2, err: "duration 1.5: add a unit, e.g. 1.5s"},
		{args: []string{"device", "list", "--timeout", "0s"}, code: 2, err: "must be more than 0"},
		{args: []string{"device", "list", "--timeout", "soon"}, code: 2, err: `duration "soon"`},
		{args: []string{"--user", "", "device", "list"}, code: 2, err: "no operator given"},
		{args: []string{"--user", "ops", "--url", "http://x:1", "device", "list"}, code: 2, err: `--url "http://x:1"`},
		{args: []string{"device", "get"}, code: 2, err: "exactly one device ID"},
		{args: []string{"--version"}, code: 0, out: "otactl "},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		code := run(context.Background(), c.args, strings.NewReader(""), &out, &errb)
		if code != c.code || !strings.Contains(out.String(), c.out) || !strings.Contains(errb.String(), c.err) ||
			c.notOut != "" && strings.Contains(out.String(), c.notOut) {
			t.Errorf("otactl %q: exit %d, want %d\nstdout (want %q):\n%s\nstderr (want %q):\n%s", c.args, code, c.code, c.out, out.String(), c.err, errb.String())
		}
	}
}
