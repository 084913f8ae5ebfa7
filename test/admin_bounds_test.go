package test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/cmd/otactl/rpc"
	"github.com/otamq/otamq/ota/clock"
)

// dial connects an admin client as id, without retrying rate-limited calls.
func (b *tb) dial(id, password string, mods ...func(*rpc.Config)) *rpc.Client {
	b.t.Helper()
	cfg := rpc.Config{URL: b.url(), Username: id, Password: password, NoRetry: true}
	for _, m := range mods {
		m(&cfg)
	}
	c, err := rpc.Dial(context.Background(), cfg)
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { _ = c.Close() })
	return c
}

type auditRec struct {
	Seq       uint64          `json:"seq"`
	Actor     string          `json:"actor"`
	Session   string          `json:"session"`
	Action    string          `json:"action"`
	Target    string          `json:"target"`
	Args      json.RawMessage `json:"args"`
	Result    string          `json:"result"`
	Error     string          `json:"error"`
	Truncated []string        `json:"truncated"`
}

// auditAll pages through audit/list with the query q.
func auditAll(t testing.TB, c *rpc.Client, q map[string]any) []auditRec {
	t.Helper()
	var out []auditRec
	q["limit"] = 1000
	for {
		var page struct {
			Records []auditRec `json:"records"`
			Next    uint64     `json:"next"`
		}
		if err := c.Call(context.Background(), "audit/list", q, &page); err != nil {
			t.Fatal(err)
		}
		out = append(out, page.Records...)
		if page.Next == 0 {
			return out
		}
		q["before"] = page.Next
	}
}

// TestAdminObserverFloodBounded is the repro: an observer sends
// release/get with a 60 KiB ID as fast as it can. Before, each request
// stored the ID twice in the audit log (2.3 GiB in 20 s); now the replies
// quote a bounded prefix, the requests beyond the rate limit are refused,
// every audit record is bounded (truncated with the length and SHA-256),
// the log keeps its configured number of records, and the database stays
// small.
func TestAdminObserverFloodBounded(t *testing.T) {
	// A low rate, so that the flood is limited however slowly a loaded
	// machine serves it (1200 requests within 4 minutes pass 5/s and a
	// burst of 20).
	b := startBroker(t, func(o *broker.Options) { o.AuditMaxRecords, o.AdminRate, o.AdminBurst = 300, 5, 20 })
	b.addOperator("olga", "observer", "observer password 1")
	dbPath := filepath.Join(b.opts.DataDir, "otamq.db")
	size := func() int64 {
		st, err := os.Stat(dbPath)
		if err != nil {
			t.Fatal(err)
		}
		return st.Size()
	}
	before := size()

	olga := b.dial("olga", "observer password 1")
	id := strings.Repeat("x", 60*1024)
	sum := fmt.Sprintf("%x", sha256.Sum256([]byte(id)))
	const requests, senders = 1200, 16
	var mu sync.Mutex
	codes := map[string]int{}
	var wg sync.WaitGroup
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range requests / senders {
				err := olga.Call(context.Background(), "release/get", map[string]any{"id": id}, nil)
				var re *rpc.RemoteError
				if !errors.As(err, &re) {
					t.Errorf("sender %d: %v", s, err)
					return
				}
				if len(re.Message) > 1024 || strings.Contains(re.Message, strings.Repeat("x", 200)) {
					t.Errorf("the reply repeats the ID: %d bytes", len(re.Message))
				}
				mu.Lock()
				codes[re.Code]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if codes["not_found"]+codes["rate_limited"] != requests || codes["rate_limited"] == 0 {
		t.Fatalf("replies: %v", codes)
	}
	t.Logf("replies: %v", codes)

	recs := auditAll(t, b.admin(), map[string]any{})
	if len(recs) > 300 {
		t.Fatalf("the log holds %d records, more than its 300", len(recs))
	}
	gets := auditAll(t, b.admin(), map[string]any{"actor": "olga", "action": "release/get"})
	if len(gets) == 0 {
		t.Fatal("no release/get record of olga")
	}
	for _, r := range gets {
		if len(r.Target) > 512 || !strings.Contains(r.Target, "truncated: 61440 bytes, sha256 "+sum) {
			t.Fatalf("target of %d bytes: %.80q", len(r.Target), r.Target[max(0, len(r.Target)-120):])
		}
		if len(r.Args) == 0 || len(r.Args) > 2050 || strings.Join(r.Truncated, ",") != "target,error,args" && strings.Join(r.Truncated, ",") != "target,args" {
			t.Fatalf("args of %d bytes, truncated %v", len(r.Args), r.Truncated)
		}
	}
	// The full ID finds its records through the target index (the same
	// ones, less the few the log's retention dropped since: every query is
	// on the record too).
	byTarget := auditAll(t, b.admin(), map[string]any{"target": id})
	seqs := map[uint64]bool{}
	for _, r := range gets {
		seqs[r.Seq] = true
	}
	for _, r := range byTarget {
		if !seqs[r.Seq] {
			t.Fatalf("by the 60 KiB target: record %d is not one of olga's release/get", r.Seq)
		}
	}
	if len(byTarget) < len(gets)-5 {
		t.Fatalf("by the 60 KiB target: %d records, want about %d", len(byTarget), len(gets))
	}
	// The refused ones are on the record too, summed up before the
	// caller's next accepted request. The flood's own summaries may be
	// older than the log keeps (300 records here), so refuse one more and
	// then, once the bucket allows it, accept one.
	for i := 0; ; i++ {
		var re *rpc.RemoteError
		err := olga.Call(context.Background(), "device/list", map[string]any{}, nil)
		if errors.As(err, &re) && re.Code == "rate_limited" {
			break
		}
		if i == 10000 {
			t.Fatalf("never rate limited again: %v", err)
		}
	}
	eventually(t, 10*time.Second, func() error {
		return olga.Call(context.Background(), "device/list", map[string]any{}, nil)
	})
	limited := auditAll(t, b.admin(), map[string]any{"action": "admin/rate_limited", "actor": "olga"})
	if len(limited) == 0 {
		t.Fatal("no record of the rate-limited requests")
	}
	if grew := size() - before; grew > 16<<20 {
		t.Fatalf("the database grew by %d MiB", grew>>20)
	}
}

// TestAdminRateLimit: beyond its burst an observer's requests are refused
// with rate_limited and retry_after_ms; another operator is not affected;
// after the wait it is served again, and the refusals are in the audit log.
func TestAdminRateLimit(t *testing.T) {
	clk := clock.NewFake(time.Now())
	b := startBroker(t, func(o *broker.Options) { o.Clock, o.AdminRate, o.AdminBurst = clk, 1, 5 })
	b.addOperator("olga", "observer", "observer password 1")
	olga := b.dial("olga", "observer password 1")
	call := func() error { return olga.Call(context.Background(), "device/list", nil, nil) }
	for i := range 5 {
		if err := call(); err != nil {
			t.Fatalf("request %d of the burst: %v", i+1, err)
		}
	}
	for range 3 {
		var re *rpc.RemoteError
		if err := call(); !errors.As(err, &re) || re.Code != "rate_limited" || re.RetryAfterMS < 1 || re.RetryAfterMS > 1001 {
			t.Fatalf("over the burst: %v (%+v)", err, re)
		}
	}
	// The operator has a bucket of its own.
	if err := b.admin().Call(context.Background(), "device/list", nil, nil); err != nil {
		t.Fatalf("operator while the observer is limited: %v", err)
	}
	clk.Advance(time.Second)
	if err := call(); err != nil {
		t.Fatalf("after retry_after: %v", err)
	}
	recs := auditAll(t, b.admin(), map[string]any{"action": "admin/rate_limited"})
	if len(recs) != 1 || recs[0].Actor != "olga" || !strings.Contains(string(recs[0].Args), `"refused":3`) {
		t.Fatalf("refusal records: %+v", recs)
	}
}
