package test

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestOtactlDeviceImport: `otactl device import` registers a fleet from CSV
// or JSON lines in batches and writes the tokens to a new 0600 file; a file
// with mistakes, or devices the broker refuses, registers nothing and says
// what and where.
func TestOtactlDeviceImport(t *testing.T) {
	b := startBroker(t)
	dir := t.TempDir()
	count := func() int { return b.Fleet().Len() }

	// 1,200 devices behind two gateways listed last, in batches of 250.
	var sb strings.Builder
	sb.WriteString("id,role,hardware,region,groups,tags,parent\n")
	for i := range 1200 {
		fmt.Fprintf(&sb, "dev-%04d,device,esp32-v2,eu,canary;lab,site=a;floor=%d,gw-%d\n", i, i%5, i%2)
	}
	sb.WriteString("gw-0,gateway,rpi4,eu,,,\ngw-1,gateway,rpi4,us,,,\n")
	fleetCSV := filepath.Join(dir, "fleet.csv")
	if err := os.WriteFile(fleetCSV, []byte(sb.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	before := count()
	out, errOut, code := b.otactl("", "device", "import", fleetCSV, "--batch", "250")
	if code != 0 || !strings.Contains(out, "registered 1202 devices") || !strings.Contains(errOut, "registered 1202 of 1202") {
		t.Fatalf("import: exit %d\n%s%s", code, out, errOut)
	}
	if count() != before+1202 {
		t.Fatalf("%d registered, want %d", count()-before, 1202)
	}
	tokensPath := fleetCSV + ".tokens"
	st, err := os.Stat(tokensPath)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("tokens file: %v %v", st, err)
	}
	f, _ := os.Open(tokensPath)
	recs, err := csv.NewReader(f).ReadAll()
	f.Close()
	if err != nil || len(recs) != 1203 || recs[0][0] != "id" || recs[0][1] != "token" {
		t.Fatalf("tokens file: %d rows, %v", len(recs), err)
	}
	tokens := map[string]string{}
	for _, r := range recs[1:] {
		tokens[r[0]] = r[1]
	}
	for _, id := range []string{"dev-0000", "dev-0777", "gw-1"} {
		b.device(id, tokens[id]) // fails the test if the token does not work
	}
	if d, _ := b.Fleet().Lookup("dev-0003"); d.Parent != "gw-1" || d.Tags["floor"] != "3" || len(d.Groups) != 2 || d.Region != "eu" {
		t.Fatalf("dev-0003: %+v", d)
	}
	if recs := auditAll(t, b.admin(), map[string]any{"target": "dev-0777", "action": "device/register"}); len(recs) != 1 {
		t.Fatalf("audit of dev-0777: %d records", len(recs))
	}

	// Never overwrites a tokens file.
	_, errOut, code = b.otactl("", "device", "import", fleetCSV)
	if code != 1 || !strings.Contains(errOut, "exists") {
		t.Fatalf("second import onto the same tokens file: exit %d\n%s", code, errOut)
	}
	if again, _ := os.ReadFile(tokensPath); len(again) == 0 || !strings.HasPrefix(string(again), "id,token\n") {
		t.Fatal("the tokens file was changed")
	}

	// Mistakes found in the file: each with its line, nothing registered.
	bad := filepath.Join(dir, "bad.csv")
	_ = os.WriteFile(bad, []byte("id,hardware,tags\nok-1,esp32-v2,\nbad id,esp32-v2,\nok-2,esp32-v2,floor\nok-1,esp32-v2,\n"), 0o600)
	before = count()
	_, errOut, code = b.otactl("", "device", "import", bad)
	if code != 1 || count() != before {
		t.Fatalf("bad file: exit %d, %d registered\n%s", code, count()-before, errOut)
	}
	for _, want := range []string{"bad.csv:3:", "bad.csv:4:", "bad.csv:5:", "nothing was registered"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("bad file: no %q in\n%s", want, errOut)
		}
	}
	// Refusals only the broker can find (an ID taken, a parent unknown, a
	// hardware name it refuses), in different batches: the dry run finds
	// them all, nothing is registered, no tokens file is left.
	sb.Reset()
	sb.WriteString("{\"id\":\"new-gw\",\"role\":\"gateway\"}\n")
	for i := range 300 {
		fmt.Fprintf(&sb, "{\"id\":\"n-%03d\",\"parent\":\"new-gw\",\"groups\":[\"g\"],\"tags\":{\"k\":\"v\"}}\n", i)
	}
	sb.WriteString("{\"id\":\"dev-0001\"}\n{\"id\":\"orphan\",\"parent\":\"nope\"}\n{\"id\":\"odd\",\"hardware\":\"a b\"}\n")
	refused := filepath.Join(dir, "refused.jsonl")
	_ = os.WriteFile(refused, []byte(sb.String()), 0o600)
	before = count()
	_, errOut, code = b.otactl("", "device", "import", refused, "--batch", "100")
	if code != 1 || count() != before {
		t.Fatalf("refused import: exit %d, %d registered\n%s", code, count()-before, errOut)
	}
	for _, want := range []string{"refused.jsonl:302: dev-0001: exists", "refused.jsonl:303: orphan: not_found", "refused.jsonl:304: odd: bad_request", "nothing was registered"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("refused import: no %q in\n%s", want, errOut)
		}
	}
	if _, err := os.Stat(refused + ".tokens"); !os.IsNotExist(err) {
		t.Fatalf("a tokens file was left by an import that registered nothing: %v", err)
	}
	// Fixed, it goes through (JSON lines in, JSON lines out).
	fixed := strings.Join(strings.Split(sb.String(), "\n")[:301], "\n") + "\n"
	_ = os.WriteFile(refused, []byte(fixed), 0o600)
	out, errOut, code = b.otactl("", "device", "import", refused, "--batch", "100")
	if code != 0 || count() != before+301 {
		t.Fatalf("fixed import: exit %d\n%s%s", code, out, errOut)
	}
	raw, _ := os.ReadFile(refused + ".tokens")
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	var first struct{ ID, Token string }
	if len(lines) != 301 || json.Unmarshal([]byte(lines[0]), &first) != nil || first.ID != "new-gw" || first.Token == "" {
		t.Fatalf("JSON lines tokens: %d lines, first %q", len(lines), lines[0])
	}
}
