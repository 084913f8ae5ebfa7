package audit

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/otamq/otamq/ota/store"
)

func openDB(t testing.TB) store.Store {
	t.Helper()
	db, err := store.Open(filepath.Join(t.TempDir(), "audit.db"), &store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func openLog(t testing.TB, db store.Store, ret Retention) *Log {
	t.Helper()
	l, err := Open(context.Background(), db, ret)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

var t0 = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

func appendAll(t testing.TB, db store.Store, l *Log, recs ...Record) {
	t.Helper()
	if err := db.Update(context.Background(), func(tx store.Tx) error {
		for _, r := range recs {
			if err := l.Append(tx, r); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func count(t testing.TB, db store.Store, bucket string) int {
	t.Helper()
	n := 0
	_ = db.View(context.Background(), func(tx store.Tx) error { n = tx.Count(bucket); return nil })
	return n
}

func TestBound(t *testing.T) {
	if s, cut := Bound("short", 10); s != "short" || cut {
		t.Fatalf("Bound(short) = %q, %v", s, cut)
	}
	long := strings.Repeat("é", 1000) // 2000 bytes, 2 per character
	s, cut := Bound(long, 300)
	sum := sha256.Sum256([]byte(long))
	if !cut || len(s) > 300 || !utf8.ValidString(s) {
		t.Fatalf("Bound: %d bytes, valid %v, cut %v", len(s), utf8.ValidString(s), cut)
	}
	if want := fmt.Sprintf("…[truncated: 2000 bytes, sha256 %x]", sum); !strings.HasSuffix(s, want) {
		t.Fatalf("Bound = %q, want the marker %q", s, want)
	}
	if !strings.HasPrefix(long, strings.TrimSuffix(s, s[strings.Index(s, "…[truncated"):])) {
		t.Fatal("the kept part is not a prefix of the value")
	}
	if again, cut := Bound(s, 300); again != s || cut {
		t.Fatal("Bound of a bounded value changed it")
	}
	if s, _ := Bound(long, 5); !strings.HasPrefix(s, "…[truncated: 2000 bytes") {
		t.Fatalf("a limit below the marker's length keeps the marker: %q", s)
	}
}

// TestFieldsBounded: the repro stores a 60 KiB ID twice per record
// (target and args). Every field is bounded now, nothing is dropped, and the
// record says what was cut, how long it was and its hash.
func TestFieldsBounded(t *testing.T) {
	db := openDB(t)
	l := openLog(t, db, Retention{})
	id := strings.Repeat("x", 60*1024)
	args, _ := json.Marshal(map[string]string{"id": id})
	appendAll(t, db, l, Record{Time: t0, Actor: "olga", Role: "observer", Remote: "127.0.0.1:1", Action: "release/get",
		Target: id, Args: args, Result: "not_found", Error: "no release " + id})
	recs, _, err := List(db, Query{})
	if err != nil || len(recs) != 1 {
		t.Fatalf("List: %v %v", recs, err)
	}
	r := recs[0]
	sum := fmt.Sprintf("%x", sha256.Sum256([]byte(id)))
	if len(r.Target) > MaxTargetLen || !strings.Contains(r.Target, "truncated: 61440 bytes, sha256 "+sum) {
		t.Errorf("target: %d bytes %q", len(r.Target), r.Target[max(0, len(r.Target)-120):])
	}
	var a string
	if err := json.Unmarshal(r.Args, &a); err != nil || len(r.Args) > MaxArgsLen+2 || !strings.HasPrefix(a, `{"id":"xxx`) ||
		!strings.Contains(a, fmt.Sprintf("truncated: %d bytes", len(args))) {
		t.Errorf("args (%d bytes): %v %.80q", len(r.Args), err, a)
	}
	if len(r.Error) > MaxErrorLen || !strings.HasPrefix(r.Error, "no release xxx") {
		t.Errorf("error: %d bytes", len(r.Error))
	}
	if !slices.Equal(r.Truncated, []string{"target", "error", "args"}) {
		t.Errorf("truncated = %v", r.Truncated)
	}
	raw, _ := json.Marshal(r)
	if len(raw) > 5*1024 {
		t.Errorf("record is %d bytes of JSON", len(raw))
	}
	// The full value finds it.
	got, _, err := List(db, Query{Target: id})
	if err != nil || len(got) != 1 {
		t.Fatalf("query by the long target: %v %v", got, err)
	}
	if got, _, _ := List(db, Query{Target: id[:len(id)-1]}); len(got) != 0 {
		t.Fatal("a different long target matched")
	}
}

// TestRetentionByCount drives the log far past its limit: it holds exactly
// the newest MaxRecords, and the indexes hold exactly their entries.
func TestRetentionByCount(t *testing.T) {
	db := openDB(t)
	l := openLog(t, db, Retention{MaxRecords: 100})
	for i := range 1000 {
		appendAll(t, db, l, Record{Time: t0.Add(time.Duration(i) * time.Second), Actor: fmt.Sprintf("op%d", i%3),
			Action: "device/get", Target: fmt.Sprintf("dev-%d", i), Result: ResultOK})
	}
	if n := count(t, db, bucket); n != 100 {
		t.Fatalf("%d records, want 100", n)
	}
	for _, b := range []string{bucketActor, bucketAction, bucketTarget} {
		if n := count(t, db, b); n != 100 {
			t.Errorf("index %s has %d entries, want 100", b, n)
		}
	}
	recs, _, _ := List(db, Query{Limit: 1000})
	if len(recs) != 100 || recs[0].Seq != 1000 || recs[99].Seq != 901 {
		t.Fatalf("kept %d records, %d..%d", len(recs), recs[len(recs)-1].Seq, recs[0].Seq)
	}
	if recs, _, _ := List(db, Query{Target: "dev-5"}); len(recs) != 0 {
		t.Fatal("a pruned record is still found through the index")
	}
}

func TestRetentionByAge(t *testing.T) {
	db := openDB(t)
	l := openLog(t, db, Retention{MaxAge: time.Hour})
	for i := range 10 {
		appendAll(t, db, l, Record{Time: t0.Add(time.Duration(i) * time.Minute), Actor: "a", Action: "x/y", Result: ResultOK})
	}
	// Two hours later: every earlier record is past the age.
	appendAll(t, db, l, Record{Time: t0.Add(2 * time.Hour), Actor: "a", Action: "x/y", Result: ResultOK})
	recs, _, _ := List(db, Query{})
	if len(recs) != 1 || recs[0].Seq != 11 {
		t.Fatalf("after the age limit: %d records", len(recs))
	}
	// Within the age nothing goes.
	appendAll(t, db, l, Record{Time: t0.Add(2*time.Hour + 59*time.Minute), Actor: "a", Action: "x/y", Result: ResultOK})
	if recs, _, _ := List(db, Query{}); len(recs) != 2 {
		t.Fatalf("within the age: %d records", len(recs))
	}
}

// TestRetentionBoundedWork: a log far over a newly lowered limit is not
// pruned all at once on the writer: each append removes at most
// pruneBatch, and the log converges to the limit.
func TestRetentionBoundedWork(t *testing.T) {
	db := openDB(t)
	unlimited := openLog(t, db, Retention{MaxRecords: -1, MaxAge: -1})
	var recs []Record
	for i := range 1000 {
		recs = append(recs, Record{Time: t0, Actor: "a", Action: "x/y", Result: ResultOK, Target: fmt.Sprint(i)})
	}
	appendAll(t, db, unlimited, recs...)
	l := openLog(t, db, Retention{MaxRecords: 100})
	appendAll(t, db, l, Record{Time: t0, Actor: "a", Action: "x/y", Result: ResultOK})
	if n := count(t, db, bucket); n != 1001-pruneBatch {
		t.Fatalf("one append over the limit left %d records, want %d", n, 1001-pruneBatch)
	}
	for range (1001 - 100) / (pruneBatch - 1) {
		appendAll(t, db, l, Record{Time: t0, Actor: "a", Action: "x/y", Result: ResultOK})
	}
	if n := count(t, db, bucket); n != 100 {
		t.Fatalf("converged to %d records, want 100", n)
	}
	// The newest 100 are the 61 appends without a target and the last 39
	// of the first thousand: the index holds exactly those.
	if n := count(t, db, bucketTarget); n != 39 {
		t.Fatalf("%d target entries, want 39 (of the records kept)", n)
	}
}

// TestIndexedQueriesMatchScan compares every kind of filtered query, paged,
// with a brute-force filter of all records.
func TestIndexedQueriesMatchScan(t *testing.T) {
	db := openDB(t)
	l := openLog(t, db, Retention{})
	rng := rand.New(rand.NewPCG(1, 2))
	actors := []string{"alice", "bob", "carol"}
	actions := []string{"device/get", "device/register", "audit/list", "release/get"}
	var all []Record
	for i := range 3000 {
		r := Record{Time: t0, Actor: actors[rng.IntN(3)], Action: actions[rng.IntN(4)], Result: ResultOK}
		if rng.IntN(4) > 0 {
			r.Target = fmt.Sprintf("dev-%d", rng.IntN(40))
		}
		r.Seq = uint64(i + 1)
		all = append(all, r)
		appendAll(t, db, l, r)
	}
	for _, q := range []Query{
		{Actor: "alice"}, {Action: "device/get"}, {Target: "dev-7"},
		{Actor: "bob", Action: "release/get"}, {Actor: "carol", Target: "dev-3"},
		{Actor: "alice", Action: "device/register", Target: "dev-11"}, {Actor: "nobody"}, {Target: "dev-7", Action: "audit/list"},
	} {
		var want []uint64
		for i := len(all) - 1; i >= 0; i-- {
			r := all[i]
			if (q.Actor == "" || r.Actor == q.Actor) && (q.Action == "" || r.Action == q.Action) && (q.Target == "" || r.Target == q.Target) {
				want = append(want, r.Seq)
			}
		}
		var got []uint64
		q.Limit = 7
		for page := 0; ; page++ {
			recs, next, err := List(db, q)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range recs {
				got = append(got, r.Seq)
			}
			if next == 0 {
				break
			}
			if page > 1000 {
				t.Fatal("paging does not end")
			}
			q.Before = next
		}
		if !slices.Equal(got, want) {
			t.Errorf("%+v: got %d records, want %d", q, len(got), len(want))
		}
	}
}

// TestFilteredQueryReadsOnlyMatches: a filtered query reads the records it
// returns, not the log (before the indexes it decoded every record).
func TestFilteredQueryReadsOnlyMatches(t *testing.T) {
	db := openDB(t)
	l := openLog(t, db, Retention{})
	var recs []Record
	for i := range 20000 {
		actor := "busy"
		if i%5000 == 17 {
			actor = "rare"
		}
		recs = append(recs, Record{Time: t0, Actor: actor, Action: "device/get", Target: fmt.Sprintf("d%d", i%100), Result: ResultOK})
	}
	appendAll(t, db, l, recs...)
	recordsRead.Store(0)
	got, next, err := List(db, Query{Actor: "rare", Action: "device/get"})
	if err != nil || len(got) != 4 || next != 0 {
		t.Fatalf("rare actor: %d records, next %d, %v", len(got), next, err)
	}
	if n := recordsRead.Load(); n != 4 {
		t.Fatalf("the query read %d records to return 4", n)
	}
	recordsRead.Store(0)
	got, next, _ = List(db, Query{Target: "d3", Limit: 10})
	if len(got) != 10 || next == 0 || recordsRead.Load() != 10 {
		t.Fatalf("target page: %d records, next %d, read %d", len(got), next, recordsRead.Load())
	}
}

// TestOpenIndexesAnOldLog: a log written before the indexes (and before
// fields were bounded) is indexed at Open.
func TestOpenIndexesAnOldLog(t *testing.T) {
	db := openDB(t)
	long := strings.Repeat("y", 40_000)
	if err := db.Update(context.Background(), func(tx store.Tx) error {
		for i := 1; i <= 25_000; i++ {
			r := Record{Seq: uint64(i), Time: t0, Actor: "old", Action: "device/get", Target: fmt.Sprint(i % 7), Result: ResultOK}
			if i == 3 {
				r.Target = long
			}
			v, _ := json.Marshal(r)
			if err := tx.Put(bucket, binary.BigEndian.AppendUint64(nil, uint64(i)), v); err != nil {
				return err
			}
			if _, err := tx.NextSequence(bucket); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	l := openLog(t, db, Retention{})
	n, q := 0, Query{Target: "5", Limit: 1000}
	for {
		got, next, err := List(db, q)
		if err != nil {
			t.Fatal(err)
		}
		n += len(got)
		if next == 0 {
			break
		}
		q.Before = next
	}
	if n != 25_000/7 {
		t.Fatalf("old records by target: %d, want %d", n, 25_000/7)
	}
	if got, _, _ := List(db, Query{Target: long}); len(got) != 1 || got[0].Seq != 3 {
		t.Fatalf("the old unbounded target is found by its value: %v", got)
	}
	appendAll(t, db, l, Record{Time: t0, Actor: "new", Action: "device/get", Result: ResultOK})
	if got, _, _ := List(db, Query{Actor: "new"}); len(got) != 1 || got[0].Seq != 25_001 {
		t.Fatalf("new record after the old log: %v", got)
	}
	// Opening again does not index again.
	recordsRead.Store(0)
	openLog(t, db, Retention{})
	if n := recordsRead.Load(); n != 0 {
		t.Fatalf("second open read %d records", n)
	}
}
