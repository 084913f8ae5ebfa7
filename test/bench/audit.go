package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/otamq/otamq/ota/audit"
	"github.com/otamq/otamq/ota/store"
)

var (
	auditN    = flag.Int("audit-records", 1_000_000, "audit benchmark: records in the log")
	auditRuns = flag.Int("audit-runs", 20, "audit benchmark: runs of each query (the median is reported)")
)

// benchAudit: filtered audit queries (the filters `otactl audit` offers)
// over a log of -audit-records records, through the indexes, against the
// full scan that answered them before (decode every record from the newest,
// keep the matching ones).
func benchAudit() error {
	n := *auditN
	dir, err := os.MkdirTemp("", "otamq-bench-audit-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "audit.db")
	// Built without fsync (the queries read); the file is the same.
	db, err := store.Open(path, &store.Options{NoSync: true, Logger: quiet})
	if err != nil {
		return err
	}
	defer db.Close()
	log, err := audit.Open(context.Background(), db, audit.Retention{MaxRecords: -1, MaxAge: -1})
	if err != nil {
		return err
	}
	actions := []string{"device/get", "device/list", "device/register", "device/update", "device/revoke", "release/get",
		"release/list", "offer/create", "offer/list", "command/send", "audit/list", "key/list", "device/timeline",
		"operator/list", "release/upload", "verbs/list", "offer/cancel", "operator/add", "key/add", "release/uploads"}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	fmt.Printf("== filtered audit queries: %d records (20 operators, %d actions, 100,000 targets; \"rare-op\" has 100 records, 1 in 10,000)\n",
		n, len(actions))
	start := time.Now()
	const perTx = 10_000
	for base := 0; base < n; base += perTx {
		err := db.Update(context.Background(), func(tx store.Tx) error {
			for i := base; i < min(base+perTx, n); i++ {
				actor := fmt.Sprintf("op-%02d", i%20)
				if i%10_000 == 4321 {
					actor = "rare-op"
				}
				r := audit.Record{Time: t0.Add(time.Duration(i) * time.Second), Actor: actor, Role: "operator", Remote: "10.0.0.7:41234",
					Action: actions[(i/3)%len(actions)], Target: fmt.Sprintf("dev-%06d", (i*7919)%100_000), Result: audit.ResultOK,
					Args: json.RawMessage(fmt.Sprintf(`{"id":"dev-%06d","region":"eu"}`, (i*7919)%100_000))}
				if err := log.Append(tx, r); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	build := time.Since(start)
	st, _ := os.Stat(path)
	fmt.Printf("built in %.1f s (%.0f appends/s, records and 3 index entries each, no fsync); file %d MiB\n",
		build.Seconds(), float64(n)/build.Seconds(), st.Size()>>20)

	queries := []struct {
		name string
		q    audit.Query
	}{
		{"newest 100, no filter", audit.Query{}},
		{"--actor rare-op (100 in the log)", audit.Query{Actor: "rare-op"}},
		{"--target dev-012345 (10 in the log)", audit.Query{Target: "dev-012345"}},
		{"--action release/get, first 100", audit.Query{Action: "release/get"}},
		{"--actor op-07 --action device/register", audit.Query{Actor: "op-07", Action: "device/register"}},
		{"--actor rare-op --action release/get", audit.Query{Actor: "rare-op", Action: "release/get"}},
		{"--actor nobody (no match)", audit.Query{Actor: "nobody"}},
	}
	fmt.Printf("%-42s %8s %12s %14s\n", "query (page of up to 100)", "records", "indexed", "full scan")
	for _, q := range queries {
		q.q.Limit = 100
		var got int
		var times []time.Duration
		for range *auditRuns {
			s := time.Now()
			recs, _, err := audit.List(db, q.q)
			if err != nil {
				return err
			}
			times = append(times, time.Since(s))
			got = len(recs)
		}
		slices.Sort(times)
		med := times[len(times)/2]
		s := time.Now()
		scanned, err := fullScan(db, q.q)
		if err != nil {
			return err
		}
		scan := time.Since(s)
		if scanned != got {
			return fmt.Errorf("%s: the index found %d records, the scan %d", q.name, got, scanned)
		}
		fmt.Printf("%-42s %8d %9.3f ms %11.1f ms  (%.0fx)\n", q.name, got, msf(med), msf(scan), float64(scan)/float64(max(med, 1)))
	}
	fmt.Println("indexed: median of the runs; full scan: one run of the way the log was queried before the indexes")
	return nil
}

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// fullScan answers q the way audit.List did before the indexes: decode every
// record from the newest and keep the matching ones, up to the limit.
func fullScan(db *store.DB, q audit.Query) (int, error) {
	n := 0
	err := db.View(context.Background(), func(tx store.Tx) error {
		return tx.Scan("audit", nil, true, func(_, v []byte) error {
			var r audit.Record
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			if q.Actor != "" && r.Actor != q.Actor || q.Action != "" && r.Action != q.Action || q.Target != "" && r.Target != q.Target {
				return nil
			}
			n++
			if n == q.Limit {
				return store.ErrStop
			}
			return nil
		})
	})
	return n, err
}
