// Package storetest is the conformance suite of store.Store: what every
// implementation must do for the domain to be correct on it. The bbolt
// store runs it in its own tests; a new implementation (a replicated store
// for several brokers) runs it the same way:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) store.Store { return openMine(t) })
//	}
//
// open must return a new, empty store each time; Run closes it.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/store"
)

// Run runs the suite against stores made by open.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	for _, c := range []struct {
		name string
		fn   func(*testing.T, store.Store)
	}{
		{"PutGetDelete", putGetDelete},
		{"Scan", scan},
		{"NextSequenceAndCount", nextSequenceAndCount},
		{"FailedUpdateChangesNothing", failedUpdateChangesNothing},
		{"OnCommit", onCommit},
		{"ConcurrentUpdatesAllCommitted", concurrentUpdates},
		{"FailureIsolated", failureIsolated},
		{"UpdatesAreSerial", updatesAreSerial},
		{"ViewIsConsistent", viewIsConsistent},
		{"CancelledContext", cancelledContext},
		{"PanicIsError", panicIsError},
		{"Closed", closed},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := open(t)
			c.fn(t, s)
			_ = s.Close()
		})
	}
}

var ctx = context.Background()

func put(t *testing.T, s store.Store, bucket, key, value string) {
	t.Helper()
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.Put(bucket, []byte(key), []byte(value)) }); err != nil {
		t.Fatal(err)
	}
}

func get(t *testing.T, s store.Store, bucket, key string) (string, bool) {
	t.Helper()
	var v []byte
	if err := s.View(ctx, func(tx store.Tx) error {
		if b := tx.Get(bucket, []byte(key)); b != nil {
			v = append([]byte{}, b...)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return string(v), v != nil
}

func putGetDelete(t *testing.T, s store.Store) {
	if _, ok := get(t, s, "b", "k"); ok {
		t.Fatal("a new store has a value")
	}
	put(t, s, "b", "k", "v1")
	put(t, s, "b", "k", "v2")
	put(t, s, "other", "k", "x")
	if v, _ := get(t, s, "b", "k"); v != "v2" {
		t.Fatalf("got %q, want the last value v2", v)
	}
	if err := s.Update(ctx, func(tx store.Tx) error {
		if err := tx.Delete("b", []byte("k")); err != nil {
			return err
		}
		if err := tx.Delete("b", []byte("missing")); err != nil {
			return fmt.Errorf("deleting a missing key: %w", err)
		}
		return tx.Delete("no bucket", []byte("k"))
	}); err != nil {
		t.Fatal(err)
	}
	if _, ok := get(t, s, "b", "k"); ok {
		t.Fatal("deleted key still there")
	}
	if v, _ := get(t, s, "other", "k"); v != "x" {
		t.Fatal("buckets are not separate")
	}
	// A write is visible to the rest of its own transaction.
	if err := s.Update(ctx, func(tx store.Tx) error {
		if err := tx.Put("b", []byte("k"), []byte("v3")); err != nil {
			return err
		}
		if string(tx.Get("b", []byte("k"))) != "v3" {
			return errors.New("own write not visible")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Reads between many writes and deletions of one transaction (a
	// rollout's batch reads and writes thousands of keys of one bucket)
	// see each write, and only exact keys: in a bucket written in one
	// transaction (all in memory), and in one committed before, whose keys
	// are on many pages.
	if err := s.Update(ctx, func(tx store.Tx) error {
		for i := range 3000 {
			k := []byte(fmt.Sprintf("c%05d", i))
			if err := tx.Put("b", k, bytes.Repeat([]byte{'x'}, 40)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(ctx, func(tx store.Tx) error {
		if err := rewrite(tx, "c", 3, true); err != nil {
			return err
		}
		if err := rewrite(tx, "m", 2, false); err != nil {
			return err
		}
		for _, k := range []string{"m", "m00000x", "m99999", "zzz"} {
			if v := tx.Get("b", []byte(k)); v != nil {
				return fmt.Errorf("missing key %s reads %q", k, v)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// rewrite writes 3000 keys prefix00000... of bucket "b" in tx, deleting
// the key before every every-th one after its write, and reads them all
// back. Each key is read before its write: with committed, it holds the
// 40 bytes written before, and the key just after it (its own with "x"
// added, between two committed keys) is missing; otherwise it is missing.
func rewrite(tx store.Tx, prefix string, every int, committed bool) error {
	key := func(i int) []byte { return []byte(fmt.Sprintf("%s%05d", prefix, i)) }
	for i := range 3000 {
		k := key(i)
		switch v := tx.Get("b", k); {
		case committed && len(v) != 40:
			return fmt.Errorf("committed %s reads %q", k, v)
		case !committed && v != nil:
			return fmt.Errorf("%s before its write: %q", k, v)
		}
		if committed {
			if v := tx.Get("b", append(k, 'x')); v != nil {
				return fmt.Errorf("missing key %sx, between two committed ones, reads %q", k, v)
			}
		}
		if err := tx.Put("b", k, []byte(fmt.Sprintf("v%d", i))); err != nil {
			return err
		}
		if i%every == every-1 {
			if err := tx.Delete("b", key(i-1)); err != nil {
				return err
			}
		}
	}
	for i := range 3000 {
		k := key(i)
		switch v, deleted := tx.Get("b", k), i%every == every-2; {
		case deleted && v != nil:
			return fmt.Errorf("deleted %s reads %q", k, v)
		case !deleted && string(v) != fmt.Sprintf("v%d", i):
			return fmt.Errorf("%s reads %q, want v%d", k, v, i)
		}
	}
	return nil
}

func scan(t *testing.T, s store.Store) {
	keys := []string{"a1", "a2", "b1", "b2", "c"}
	for _, k := range []string{"b1", "a2", "c", "a1", "b2"} {
		put(t, s, "s", k, "v"+k)
	}
	collect := func(from string, reverse bool, stopAfter int) []string {
		var out []string
		if err := s.View(ctx, func(tx store.Tx) error {
			return tx.Scan("s", []byte(from), reverse, func(k, v []byte) error {
				if string(v) != "v"+string(k) {
					return fmt.Errorf("value of %s is %s", k, v)
				}
				out = append(out, string(k))
				if len(out) == stopAfter {
					return store.ErrStop
				}
				return nil
			})
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	check := func(name string, got, want []string) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: %v, want %v", name, got, want)
		}
	}
	check("all", collect("", false, 0), keys)
	check("reverse", collect("", true, 0), []string{"c", "b2", "b1", "a2", "a1"})
	check("from b", collect("b", false, 0), []string{"b1", "b2", "c"})
	check("from b, reverse", collect("b", true, 0), []string{"a2", "a1"})
	check("from b1, reverse", collect("b1", true, 0), []string{"b1", "a2", "a1"})
	check("from z, reverse", collect("z", true, 0), []string{"c", "b2", "b1", "a2", "a1"})
	check("from z", collect("z", false, 0), nil)
	check("stop", collect("", false, 2), []string{"a1", "a2"})
	if err := s.View(ctx, func(tx store.Tx) error {
		return tx.Scan("no such bucket", nil, false, func(k, v []byte) error { return errors.New("called") })
	}); err != nil {
		t.Fatalf("scan of a missing bucket: %v", err)
	}
	boom := errors.New("boom")
	if err := s.View(ctx, func(tx store.Tx) error {
		return tx.Scan("s", nil, false, func(k, v []byte) error { return boom })
	}); !errors.Is(err, boom) {
		t.Fatalf("an error from the callback: %v", err)
	}
}

func nextSequenceAndCount(t *testing.T, s store.Store) {
	var seqs []uint64
	for range 3 {
		if err := s.Update(ctx, func(tx store.Tx) error {
			n, err := tx.NextSequence("q")
			if err != nil {
				return err
			}
			seqs = append(seqs, n)
			return tx.Put("q", fmt.Appendf(nil, "%d", n), []byte("x"))
		}); err != nil {
			t.Fatal(err)
		}
	}
	if fmt.Sprint(seqs) != "[1 2 3]" {
		t.Fatalf("sequences %v, want [1 2 3]", seqs)
	}
	if err := s.View(ctx, func(tx store.Tx) error {
		if n := tx.Count("q"); n != 3 {
			return fmt.Errorf("count %d, want 3", n)
		}
		if n := tx.Count("none"); n != 0 {
			return fmt.Errorf("count of a missing bucket %d", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func failedUpdateChangesNothing(t *testing.T, s store.Store) {
	put(t, s, "b", "keep", "old")
	boom := errors.New("boom")
	err := s.Update(ctx, func(tx store.Tx) error {
		_ = tx.Put("b", []byte("keep"), []byte("new"))
		_ = tx.Put("b", []byte("added"), []byte("x"))
		_ = tx.Delete("b", []byte("keep"))
		_, _ = tx.NextSequence("b")
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update returned %v, want the function's error", err)
	}
	if v, _ := get(t, s, "b", "keep"); v != "old" {
		t.Fatalf("a failed update changed a value to %q", v)
	}
	if _, ok := get(t, s, "b", "added"); ok {
		t.Fatal("a failed update added a key")
	}
	var seq uint64
	_ = s.Update(ctx, func(tx store.Tx) error {
		var err error
		seq, err = tx.NextSequence("b")
		return err
	})
	if seq != 1 {
		t.Fatalf("sequence after a failed update: %d, want 1", seq)
	}
}

func onCommit(t *testing.T, s store.Store) {
	var mu sync.Mutex
	var order []string
	note := func(x string) func() { return func() { mu.Lock(); order = append(order, x); mu.Unlock() } }
	if err := s.Update(ctx, func(tx store.Tx) error {
		tx.OnCommit(note("first"))
		tx.OnCommit(note("second"))
		return tx.Put("b", []byte("k"), []byte("v"))
	}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	got := fmt.Sprint(order)
	mu.Unlock()
	if got != "[first second]" {
		t.Fatalf("OnCommit ran %s by the time Update returned, want [first second]", got)
	}
	_ = s.Update(ctx, func(tx store.Tx) error {
		tx.OnCommit(note("failed"))
		return errors.New("fail")
	})
	_ = s.View(ctx, func(tx store.Tx) error {
		tx.OnCommit(note("view"))
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(order) != "[first second]" {
		t.Fatalf("OnCommit ran for a failed update or a view: %v", order)
	}
}

func concurrentUpdates(t *testing.T, s store.Store) {
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- s.Update(ctx, func(tx store.Tx) error {
				return tx.Put("c", fmt.Appendf(nil, "%04d", i), []byte("v"))
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := s.View(ctx, func(tx store.Tx) error {
		if c := tx.Count("c"); c != n {
			return fmt.Errorf("%d of %d acknowledged writes stored", c, n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// failureIsolated: an Update that fails does not fail others running at
// the same time (with a group commit they may share a transaction).
func failureIsolated(t *testing.T, s store.Store) {
	const n = 50
	var wg sync.WaitGroup
	results := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = s.Update(ctx, func(tx store.Tx) error {
				if err := tx.Put("f", fmt.Appendf(nil, "%02d", i), []byte("v")); err != nil {
					return err
				}
				if i%7 == 0 {
					return fmt.Errorf("refused %d", i)
				}
				return nil
			})
		}()
	}
	wg.Wait()
	for i, err := range results {
		_, stored := get(t, s, "f", fmt.Sprintf("%02d", i))
		switch {
		case i%7 == 0 && (err == nil || stored):
			t.Errorf("update %d should have failed alone: err %v, stored %v", i, err, stored)
		case i%7 != 0 && (err != nil || !stored):
			t.Errorf("update %d should have committed: err %v, stored %v", i, err, stored)
		}
	}
}

// viewIsConsistent: a View sees one state, however many Updates commit
// while it runs.
func viewIsConsistent(t *testing.T, s store.Store) {
	put(t, s, "v", "a", "0")
	put(t, s, "v", "b", "0")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			v := fmt.Appendf(nil, "%d", i)
			_ = s.Update(ctx, func(tx store.Tx) error {
				if err := tx.Put("v", []byte("a"), v); err != nil {
					return err
				}
				return tx.Put("v", []byte("b"), v)
			})
		}
	}()
	deadline := time.Now().Add(200 * time.Millisecond)
	for time.Now().Before(deadline) {
		if err := s.View(ctx, func(tx store.Tx) error {
			a := string(tx.Get("v", []byte("a")))
			time.Sleep(time.Millisecond) // let writers commit meanwhile
			b := string(tx.Get("v", []byte("b")))
			if a != b {
				return fmt.Errorf("a view saw a=%s and b=%s, written together", a, b)
			}
			return nil
		}); err != nil {
			close(stop)
			wg.Wait()
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
}

func cancelledContext(t *testing.T, s store.Store) {
	c, cancel := context.WithCancel(ctx)
	cancel()
	ran := false
	err := s.Update(c, func(tx store.Tx) error { ran = true; return tx.Put("x", []byte("k"), []byte("v")) })
	if err == nil && !ran {
		t.Fatal("a cancelled update reported success without running")
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled update: %v", err)
	}
	if _, stored := get(t, s, "x", "k"); stored != (err == nil) {
		t.Fatalf("a cancelled update: err %v, stored %v", err, stored)
	}
}

func panicIsError(t *testing.T, s store.Store) {
	err := s.Update(ctx, func(tx store.Tx) error {
		_ = tx.Put("p", []byte("k"), []byte("v"))
		panic("boom")
	})
	if !errors.Is(err, store.ErrPanic) {
		t.Fatalf("a panicking function: %v, want ErrPanic", err)
	}
	if _, stored := get(t, s, "p", "k"); stored {
		t.Fatal("a panicking function's write was stored")
	}
	put(t, s, "p", "after", "v") // the store still works
}

func closed(t *testing.T, s store.Store) {
	put(t, s, "b", "k", "v")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(ctx, func(tx store.Tx) error { return nil }); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Update after Close: %v", err)
	}
	if err := s.View(ctx, func(tx store.Tx) error { return nil }); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("View after Close: %v", err)
	}
}

// updatesAreSerial: concurrent Updates behave as if they ran one after the
// other, each seeing the ones before (even when a group commit puts them in
// one transaction): of 20 racing to create one key, exactly one does.
func updatesAreSerial(t *testing.T, s store.Store) {
	errExists := errors.New("exists")
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, exists := 0, 0
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.Update(ctx, func(tx store.Tx) error {
				if tx.Get("u", []byte("id")) != nil {
					return errExists
				}
				return tx.Put("u", []byte("id"), []byte("x"))
			})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.Is(err, errExists):
				exists++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if ok != 1 || exists != 19 {
		t.Fatalf("%d created, %d found it existing; want 1 and 19", ok, exists)
	}
}
