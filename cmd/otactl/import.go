package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/otamq/otamq/cmd/otactl/rpc"
	"github.com/otamq/otamq/ota/fleet"
)

// otactl device import FILE registers a fleet from a CSV file (a header
// row naming the columns id, role, hardware, region, connectivity, groups,
// tags, parent, auth; groups and tags separated by ";", tags as key=value)
// or a JSON lines file (one object per line with the same fields, groups a
// list and tags an object).
//
// Nothing is half-registered: the file is checked locally, then every batch
// is checked by the broker (a dry run), and only when nothing was refused
// are the batches registered. Each batch is all or nothing on the broker;
// should one be refused after the dry run (the registry changed in
// between), the import stops, and the file of tokens holds exactly the
// devices registered. The tokens go to a new file (mode 0600, never
// overwritten), written and synced after each batch.

// importRow is one device of the file.
type importRow struct {
	line int
	reg  map[string]any // the registration as device/register takes it
	id   string
	role string
}

var deviceImport = command{
	flags: func(fs *flag.FlagSet) {
		fs.String("tokens", "", "file to write the tokens to (default FILE.tokens; never overwritten)")
		fs.Int("batch", 500, "devices per request (1..1000)")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		if len(args) != 1 {
			return usagef("want the fleet file (CSV with a header row, or JSON lines)")
		}
		batch := flagInt(e.fs, "batch")
		if batch < 1 || batch > 1000 {
			return usagef("--batch %d: want 1..1000", batch)
		}
		raw, err := os.ReadFile(args[0])
		if err != nil {
			return err
		}
		jsonLines := isJSONLines(args[0], raw)
		rows, problems := parseFleet(raw, jsonLines)
		if len(problems) > 0 {
			for _, p := range problems {
				fmt.Fprintf(e.errOut, "%s:%s\n", args[0], p)
			}
			return fmt.Errorf("%d problem(s) in %s; nothing was registered", len(problems), args[0])
		}
		if len(rows) == 0 {
			return fmt.Errorf("%s lists no device", args[0])
		}
		// Gateways first, so that their children find them.
		slices.SortStableFunc(rows, func(a, b importRow) int {
			return map[bool]int{true: 0, false: 1}[a.role == "gateway"] - map[bool]int{true: 0, false: 1}[b.role == "gateway"]
		})
		tokensPath := flagStr(e.fs, "tokens")
		if tokensPath == "" {
			tokensPath = args[0] + ".tokens"
		}
		out, err := os.OpenFile(tokensPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			if errors.Is(err, os.ErrExist) {
				return fmt.Errorf("%s exists: it may hold tokens shown nowhere else; choose another --tokens file", tokensPath)
			}
			return err
		}
		imp := &importer{e: e, file: args[0], rows: rows, batches: splitBatches(rows, batch), out: out, tokensPath: tokensPath, jsonLines: jsonLines}
		err = imp.run(ctx)
		if cerr := out.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if imp.registered == 0 {
			_ = os.Remove(tokensPath) // nothing in it
		}
		return err
	},
}

type importer struct {
	e          *env
	file       string
	rows       []importRow
	batches    [][]importRow
	out        *os.File
	tokensPath string
	jsonLines  bool
	registered int
}

func (imp *importer) run(ctx context.Context) error {
	e := imp.e
	start := time.Now()
	// The dry run: every batch checked against the registry. A parent in
	// the file counts as there (it is registered in an earlier batch).
	inFile := map[string]bool{}
	for _, r := range imp.rows {
		inFile[r.id] = true
	}
	var refusals []string
	for i, b := range imp.batches {
		err := imp.send(ctx, b, true, nil)
		var re *rpc.RemoteError
		if err != nil && !(errors.As(err, &re) && len(re.Refused) > 0) {
			return fmt.Errorf("checking batch %d of %d: %w", i+1, len(imp.batches), err)
		}
		if re == nil {
			continue
		}
		for _, r := range re.Refused {
			if r.Index < 0 || r.Index >= len(b) {
				continue
			}
			row := b[r.Index]
			if p, _ := row.reg["parent"].(string); r.Code == "not_found" && p != "" && inFile[p] {
				continue
			}
			refusals = append(refusals, fmt.Sprintf("%s:%d: %s: %s: %s", imp.file, row.line, row.id, r.Code, r.Message))
		}
	}
	if len(refusals) > 0 {
		for _, r := range refusals {
			fmt.Fprintln(e.errOut, r)
		}
		return fmt.Errorf("the broker refuses %d device(s); nothing was registered", len(refusals))
	}
	if imp.jsonLines {
		// nothing to head a JSON lines file with
	} else if _, err := io.WriteString(imp.out, "id,token\n"); err != nil {
		return err
	}
	for i, b := range imp.batches {
		err := imp.send(ctx, b, false, func(regs []registeredDevice) error { return imp.write(regs) })
		if err != nil {
			var re *rpc.RemoteError
			if errors.As(err, &re) {
				for _, r := range re.Refused {
					if r.Index >= 0 && r.Index < len(b) {
						fmt.Fprintf(e.errOut, "%s:%d: %s: %s: %s\n", imp.file, b[r.Index].line, b[r.Index].id, r.Code, r.Message)
					}
				}
			}
			return fmt.Errorf("batch %d of %d refused (nothing of it registered): %w; %d device(s) of the earlier batches are registered, their tokens in %s",
				i+1, len(imp.batches), err, imp.registered, imp.tokensPath)
		}
		if !e.g.json {
			rate := float64(imp.registered) / max(time.Since(start).Seconds(), 1e-3)
			fmt.Fprintf(e.errOut, "\rregistered %d of %d devices (%.0f/s)", imp.registered, len(imp.rows), rate)
		}
	}
	took := time.Since(start)
	if e.g.json {
		return e.printJSON(map[string]any{"registered": imp.registered, "tokens_file": imp.tokensPath, "seconds": took.Seconds()})
	}
	fmt.Fprintln(e.errOut)
	fmt.Fprintf(e.out, "registered %d devices in %s (%.0f/s); tokens in %s (mode 0600)\n", imp.registered,
		took.Round(time.Millisecond), float64(imp.registered)/max(took.Seconds(), 1e-3), imp.tokensPath)
	fmt.Fprintln(e.errOut, "The tokens are shown nowhere else: move the file somewhere safe, or provision the devices and delete it.")
	return nil
}

type registeredDevice struct {
	ID    string `json:"id"`
	Token string `json:"token"`
}

// send registers (or with dryRun checks) one batch.
func (imp *importer) send(ctx context.Context, b []importRow, dryRun bool, done func([]registeredDevice) error) error {
	devs := make([]map[string]any, len(b))
	for i, r := range b {
		devs[i] = r.reg
	}
	req := map[string]any{"devices": devs}
	if dryRun {
		req["dry_run"] = true
	}
	var res struct {
		Registered []registeredDevice `json:"registered"`
	}
	if err := imp.e.call(ctx, "device/register", req, &res); err != nil {
		return err
	}
	if done == nil {
		return nil
	}
	return done(res.Registered)
}

// write appends a batch's tokens to the file and syncs it.
func (imp *importer) write(regs []registeredDevice) error {
	var buf bytes.Buffer
	if imp.jsonLines {
		enc := json.NewEncoder(&buf)
		for _, r := range regs {
			_ = enc.Encode(r)
		}
	} else {
		w := csv.NewWriter(&buf)
		for _, r := range regs {
			_ = w.Write([]string{r.ID, r.Token})
		}
		w.Flush()
	}
	if _, err := imp.out.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("write %s: %w (the batch is registered: rotate its tokens)", imp.tokensPath, err)
	}
	if err := imp.out.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", imp.tokensPath, err)
	}
	imp.registered += len(regs)
	return nil
}

// maxBatchBody keeps a batch's request under the broker's 64 KiB body
// limit.
const maxBatchBody = 56 * 1024

// splitBatches cuts rows into batches of at most n devices and
// maxBatchBody bytes.
func splitBatches(rows []importRow, n int) [][]importRow {
	var out [][]importRow
	var cur []importRow
	size := 0
	for _, r := range rows {
		b, _ := json.Marshal(r.reg)
		if len(cur) > 0 && (len(cur) == n || size+len(b)+1 > maxBatchBody) {
			out = append(out, cur)
			cur, size = nil, 0
		}
		cur = append(cur, r)
		size += len(b) + 1
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// isJSONLines tells a JSON lines file (by its name, or by a first
// character "{") from CSV.
func isJSONLines(name string, raw []byte) bool {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".jsonl", ".ndjson", ".json":
		return true
	case ".csv":
		return false
	}
	return bytes.HasPrefix(bytes.TrimSpace(raw), []byte("{"))
}

// importColumns are the fields a fleet file may give.
var importColumns = []string{"id", "role", "hardware", "region", "connectivity", "groups", "tags", "parent", "auth"}

// parseFleet reads the rows of a fleet file and checks what can be checked
// here: the fields, IDs, roles, duplicates. Problems come as "LINE: text".
func parseFleet(raw []byte, jsonLines bool) ([]importRow, []string) {
	var rows []importRow
	var problems []string
	add := func(line int, f map[string]any) {
		id, _ := f["id"].(string)
		role, _ := f["role"].(string)
		var bad []string
		if err := fleet.ValidID(id); err != nil {
			bad = append(bad, err.Error())
		}
		if role != "" && role != "device" && role != "gateway" {
			bad = append(bad, fmt.Sprintf("role %q: want device or gateway", role))
		}
		if a, _ := f["auth"].(string); a != "" && a != "token" && a != "cert" {
			bad = append(bad, fmt.Sprintf("auth %q: want token or cert", a))
		}
		if len(bad) > 0 {
			problems = append(problems, fmt.Sprintf("%d: %s", line, strings.Join(bad, "; ")))
			return
		}
		if role == "" {
			role = "device"
		}
		rows = append(rows, importRow{line: line, reg: f, id: id, role: role})
	}
	if jsonLines {
		sc := bufio.NewScanner(bytes.NewReader(raw))
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		for line := 1; sc.Scan(); line++ {
			text := strings.TrimSpace(sc.Text())
			if text == "" || strings.HasPrefix(text, "#") {
				continue
			}
			var r struct {
				ID           string            `json:"id"`
				Role         string            `json:"role,omitempty"`
				Hardware     string            `json:"hardware,omitempty"`
				Region       string            `json:"region,omitempty"`
				Connectivity string            `json:"connectivity,omitempty"`
				Groups       []string          `json:"groups,omitempty"`
				Tags         map[string]string `json:"tags,omitempty"`
				Parent       string            `json:"parent,omitempty"`
				Auth         string            `json:"auth,omitempty"`
			}
			dec := json.NewDecoder(strings.NewReader(text))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&r); err != nil {
				problems = append(problems, fmt.Sprintf("%d: %v", line, err))
				continue
			}
			b, _ := json.Marshal(r)
			var f map[string]any
			_ = json.Unmarshal(b, &f)
			add(line, f)
		}
		if err := sc.Err(); err != nil {
			problems = append(problems, fmt.Sprintf("0: %v", err))
		}
	} else {
		cr := csv.NewReader(bytes.NewReader(raw))
		cr.Comment = '#'
		cr.TrimLeadingSpace = true
		header, err := cr.Read()
		if err != nil {
			return nil, []string{fmt.Sprintf("1: no header row (want columns of %s): %v", strings.Join(importColumns, ","), err)}
		}
		cols := map[string]int{}
		for i, h := range header {
			h = strings.ToLower(strings.TrimSpace(h))
			if !slices.Contains(importColumns, h) {
				return nil, []string{fmt.Sprintf("1: unknown column %q (columns: %s)", h, strings.Join(importColumns, ","))}
			}
			if _, dup := cols[h]; dup {
				return nil, []string{fmt.Sprintf("1: column %q twice", h)}
			}
			cols[h] = i
		}
		if _, ok := cols["id"]; !ok {
			return nil, []string{"1: no id column"}
		}
		for {
			rec, err := cr.Read()
			if err == io.EOF {
				break
			}
			line, _ := cr.FieldPos(0)
			if err != nil {
				problems = append(problems, fmt.Sprintf("%d: %v", line, err))
				continue
			}
			f := map[string]any{}
			var bad []string
			for name, i := range cols {
				v := strings.TrimSpace(rec[i])
				if v == "" {
					continue
				}
				switch name {
				case "groups":
					f[name] = splitList(v)
				case "tags":
					tags := map[string]string{}
					for _, kv := range splitList(v) {
						k, val, ok := strings.Cut(kv, "=")
						if !ok || k == "" {
							bad = append(bad, fmt.Sprintf("tag %q: want key=value", kv))
							continue
						}
						tags[k] = val
					}
					f[name] = tags
				default:
					f[name] = v
				}
			}
			if len(bad) > 0 {
				problems = append(problems, fmt.Sprintf("%d: %s", line, strings.Join(bad, "; ")))
				continue
			}
			add(line, f)
		}
	}
	seen := map[string]int{}
	for _, r := range rows {
		if first, dup := seen[r.id]; dup {
			problems = append(problems, fmt.Sprintf("%d: %s is already on line %d", r.line, r.id, first))
			continue
		}
		seen[r.id] = r.line
	}
	return rows, problems
}

// splitList splits "a;b; c" into its non-empty items.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ";") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
