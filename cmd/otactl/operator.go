package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/otamq/otamq/ota/fleet"
)

// readPassword reads one line from stdin (for --password-stdin).
func readPassword(e *env) (string, error) {
	line, err := bufio.NewReader(e.stdin).ReadString('\n')
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		if err != nil {
			return "", fmt.Errorf("--password-stdin: nothing on standard input: %w", err)
		}
		return "", usagef("--password-stdin: empty password")
	}
	return line, nil
}

type operatorResult struct {
	Operator fleet.Device `json:"operator"`
	Password string       `json:"password"`
}

func (e *env) printOperator(verb string, res operatorResult) error {
	if e.g.json {
		return e.printJSON(res)
	}
	fmt.Fprintf(e.out, "%s %s %s\n", verb, res.Operator.Role, res.Operator.ID)
	if res.Password != "" {
		fmt.Fprintf(e.out, "password: %s\n", res.Password)
		fmt.Fprintln(e.errOut, "The password is shown only once.")
	}
	return nil
}

var operatorAdd = command{
	flags: func(fs *flag.FlagSet) {
		fs.Bool("observer", false, "read-only: fleet events and admin reads")
		fs.Bool("cert-only", false, "authenticate only with a client certificate")
		fs.Bool("password-stdin", false, "read the password from standard input (default: generate one)")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		id, err := oneID(args, "operator")
		if err != nil {
			return err
		}
		req := map[string]any{"id": id, "role": "operator"}
		if flagBool(e.fs, "observer") {
			req["role"] = "observer"
		}
		if flagBool(e.fs, "cert-only") {
			req["auth"] = "cert"
		}
		if flagBool(e.fs, "password-stdin") {
			pw, err := readPassword(e)
			if err != nil {
				return err
			}
			req["password"] = pw
		}
		var res operatorResult
		if err := e.call(ctx, "operator/add", req, &res); err != nil {
			return err
		}
		return e.printOperator("added", res)
	},
}

var operatorList = command{
	run: func(ctx context.Context, e *env, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		ops, _, err := collect[fleet.Device](ctx, e, "operator/list", nil, "operators", "after", 0)
		if err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(ops)
		}
		tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tROLE\tAUTH\tSTATE\tCREATED")
		for _, o := range ops {
			state := "active"
			if o.Revoked {
				state = "revoked"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", o.ID, o.Role, o.Auth, state, o.Created.Format(time.RFC3339))
		}
		return tw.Flush()
	},
}

var operatorUpdate = command{
	flags: func(fs *flag.FlagSet) {
		fs.Bool("rotate-password", false, "generate a new password")
		fs.Bool("password-stdin", false, "read the new password from standard input")
		fs.Bool("reinstate", false, "lift a revocation")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		id, err := oneID(args, "operator")
		if err != nil {
			return err
		}
		req := map[string]any{"id": id}
		if flagBool(e.fs, "rotate-password") {
			req["rotate_password"] = true
		}
		if flagBool(e.fs, "password-stdin") {
			pw, err := readPassword(e)
			if err != nil {
				return err
			}
			req["password"] = pw
		}
		if flagBool(e.fs, "reinstate") {
			req["reinstate"] = true
		}
		if len(req) == 1 {
			return usagef("nothing to change: give --rotate-password, --password-stdin or --reinstate")
		}
		var res operatorResult
		if err := e.call(ctx, "operator/update", req, &res); err != nil {
			return err
		}
		return e.printOperator("updated", res)
	},
}

var operatorRevoke = command{
	flags: func(fs *flag.FlagSet) { fs.String("reason", "", "why") },
	run: func(ctx context.Context, e *env, args []string) error {
		id, err := oneID(args, "operator")
		if err != nil {
			return err
		}
		var res map[string]any
		if err := e.call(ctx, "operator/revoke", map[string]any{"id": id, "reason": flagStr(e.fs, "reason")}, &res); err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(res)
		}
		fmt.Fprintf(e.out, "revoked %s\n", id)
		return nil
	},
}

type auditRecord struct {
	Seq       uint64          `json:"seq"`
	Time      time.Time       `json:"time"`
	Actor     string          `json:"actor"`
	Role      string          `json:"role"`
	Remote    string          `json:"remote"`
	Session   string          `json:"session,omitempty"`
	Action    string          `json:"action"`
	Target    string          `json:"target"`
	Args      json.RawMessage `json:"args"`
	Result    string          `json:"result"`
	Error     string          `json:"error"`
	Truncated []string        `json:"truncated,omitempty"`
}

var auditCmd = command{
	flags: func(fs *flag.FlagSet) {
		fs.String("actor", "", "only requests by this operator")
		fs.String("action", "", "only this resource/verb")
		fs.String("target", "", "only requests about this ID")
		fs.Int("limit", 50, "how many (newest first, up to 1000)")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		limit := flagInt(e.fs, "limit")
		if limit < 1 || limit > 1000 {
			return usagef("--limit %d: want 1..1000", limit)
		}
		req := map[string]any{}
		for _, k := range []string{"actor", "action", "target"} {
			if v := flagStr(e.fs, k); v != "" {
				req[k] = v
			}
		}
		recs, _, err := collect[auditRecord](ctx, e, "audit/list", req, "records", "before", limit)
		if err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(recs)
		}
		tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tTIME\tACTOR\tFROM\tACTION\tTARGET\tRESULT")
		for _, r := range recs {
			result := r.Result
			if r.Error != "" {
				result += ": " + r.Error
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Seq, r.Time.Local().Format("2006-01-02 15:04:05"),
				r.Actor, dash(r.Remote), r.Action, dash(r.Target), result)
		}
		return tw.Flush()
	},
}
