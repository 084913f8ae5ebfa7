package test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"

	"github.com/otamq/otamq/ota/wire"
)

// vectorValue converts a decoded CBOR value into the shared vector JSON form:
// maps keyed by the decimal integer key, byte strings as "h'..'".
func vectorValue(v any) any {
	switch x := v.(type) {
	case map[any]any:
		out := map[string]any{}
		for k, val := range x {
			out[fmt.Sprint(k)] = vectorValue(val)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = vectorValue(e)
		}
		return out
	case []byte:
		return "h'" + hex.EncodeToString(x) + "'"
	case uint64:
		return json.Number(strconv.FormatUint(x, 10))
	case int64:
		return json.Number(strconv.FormatInt(x, 10))
	default:
		return x
	}
}

func canonicalJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var generic any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&generic); err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(generic)
	return string(out)
}

// withoutZeros drops map entries whose value is 0 or "" (keys an encoder
// may leave out).
func withoutZeros(v any) any {
	m, ok := v.(map[string]any)
	if !ok {
		return v
	}
	out := map[string]any{}
	for k, val := range m {
		if n, ok := val.(json.Number); ok && n.String() == "0" || val == "" {
			continue
		}
		out[k] = val
	}
	return out
}

// TestAgentMessagesDecodeInGo runs the C agent's vector writer (its own
// encoder producing births, heartbeats, events and block requests) and
// decodes every message with the broker's decoders: each must be accepted,
// carry exactly the values the agent says it encoded, and be the same
// values once the broker re-encodes it.
func TestAgentMessagesDecodeInGo(t *testing.T) {
	needCommand(t, "make")
	out := t.TempDir()
	cmd := exec.Command("make", "-s", "-C", filepath.Join(repoRoot(), "agent-c"), "vectors", "OUT="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make -C agent-c vectors: %v\n%s", err, b)
	}
	files, _ := filepath.Glob(filepath.Join(out, "*.cbor"))
	if len(files) < 10 {
		t.Fatalf("the agent wrote %d vectors, expected its births, heartbeats, events and block requests", len(files))
	}
	kinds := map[string]int{}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".cbor")
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(strings.TrimSuffix(f, ".cbor") + ".json")
		if err != nil {
			t.Fatalf("%s: no json: %v", name, err)
		}
		var reencoded []byte
		switch {
		case strings.HasPrefix(name, "birth-"):
			m, err := wire.DecodeBirth(raw)
			if err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			reencoded = m.Encode()
			kinds["birth"]++
		case strings.HasPrefix(name, "heartbeat-"):
			m, err := wire.DecodeHeartbeat(raw)
			if err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			reencoded = m.Encode()
			kinds["heartbeat"]++
		case strings.HasPrefix(name, "event-"):
			m, err := wire.DecodeEvent(raw)
			if err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			reencoded = m.Encode()
			kinds["event"]++
		case strings.HasPrefix(name, "block-request-"):
			m, err := wire.DecodeBlockRequest(raw)
			if err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			reencoded = m.Encode()
			kinds["block request"]++
		default:
			t.Errorf("%s: unknown kind of vector", name)
			continue
		}
		// The values the agent meant are the values in the bytes.
		var generic any
		if err := cbor.Unmarshal(raw, &generic); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var wantV any
		dec := json.NewDecoder(bytes.NewReader(want))
		dec.UseNumber()
		if err := dec.Decode(&wantV); err != nil {
			t.Fatalf("%s.json: %v", name, err)
		}
		if got, exp := canonicalJSON(t, vectorValue(generic)), canonicalJSON(t, wantV); got != exp {
			t.Errorf("%s: bytes hold %s, the agent meant %s", name, got, exp)
		}
		// The broker's own encoding of the decoded message carries the same
		// values (the two encoders differ only in which zero-valued keys
		// they leave out, which the contract allows).
		var again any
		if err := cbor.Unmarshal(reencoded, &again); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if a, b := canonicalJSON(t, withoutZeros(vectorValue(again))), canonicalJSON(t, withoutZeros(vectorValue(generic))); a != b {
			t.Errorf("%s: broker re-encodes %s, agent sent %s", name, a, b)
		}
	}
	var names []string
	for k := range kinds {
		names = append(names, k)
	}
	sort.Strings(names)
	if !reflect.DeepEqual(names, []string{"birth", "block request", "event", "heartbeat"}) {
		t.Errorf("vector kinds %v", names)
	}
}
