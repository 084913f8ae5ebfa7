package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"
)

func open(t *testing.T) *DB {
	t.Helper()
	db, err := Open(filepath.Join(t.TempDir(), "otamq.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func get(t *testing.T, db *DB, bucket, key string) []byte {
	t.Helper()
	var out []byte
	if err := db.View(func(tx *Tx) error {
		if v := tx.Get(bucket, []byte(key)); v != nil {
			out = append([]byte{}, v...)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestUpdateConcurrentWritersAllCommitted(t *testing.T) {
	db := open(t)
	const n = 300
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- db.Update(context.Background(), func(tx *Tx) error {
				return tx.Put("k", fmt.Appendf(nil, "%04d", i), []byte("v"))
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
	var count int
	_ = db.View(func(tx *Tx) error { count = tx.Count("k"); return nil })
	if count != n {
		t.Fatalf("committed %d keys, want %d", count, n)
	}
}

// A failing function in a batch must not take the others down with it, and
// must leave no trace of its own writes.
func TestUpdateFailureIsolated(t *testing.T) {
	db := open(t)
	errBoom := errors.New("boom")
	var wg sync.WaitGroup
	results := make([]error, 50)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = db.Update(context.Background(), func(tx *Tx) error {
				if err := tx.Put("k", fmt.Appendf(nil, "%02d", i), []byte("v")); err != nil {
					return err
				}
				if i%7 == 0 {
					return errBoom
				}
				return nil
			})
		}()
	}
	wg.Wait()
	for i, err := range results {
		v := get(t, db, "k", fmt.Sprintf("%02d", i))
		if i%7 == 0 {
			if !errors.Is(err, errBoom) {
				t.Errorf("writer %d: err = %v, want boom", i, err)
			}
			if v != nil {
				t.Errorf("writer %d failed but its write is stored", i)
			}
			continue
		}
		if err != nil || string(v) != "v" {
			t.Errorf("writer %d: err = %v, value %q", i, err, v)
		}
	}
}

// Two writers racing for the same key inside one batch: the second sees the
// first's write, exactly as if they had run one after the other.
func TestUpdateSeesEarlierWritesOfBatch(t *testing.T) {
	db := open(t)
	errExists := errors.New("exists")
	create := func(tx *Tx) error {
		if tx.Get("k", []byte("id")) != nil {
			return errExists
		}
		return tx.Put("k", []byte("id"), []byte("x"))
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var ok, exists int
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := db.Update(context.Background(), create)
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
		t.Fatalf("ok=%d exists=%d, want 1 and 19", ok, exists)
	}
}

func TestUpdatePanicBecomesError(t *testing.T) {
	db := open(t)
	err := db.Update(context.Background(), func(tx *Tx) error {
		_ = tx.Put("k", []byte("a"), []byte("b"))
		panic("bad")
	})
	if !errors.Is(err, ErrPanic) {
		t.Fatalf("err = %v, want ErrPanic", err)
	}
	if get(t, db, "k", "a") != nil {
		t.Fatal("write of panicking function was kept")
	}
	// The writer survived.
	if err := db.Update(context.Background(), func(tx *Tx) error { return tx.Put("k", []byte("c"), []byte("d")) }); err != nil {
		t.Fatal(err)
	}
}

func TestOnCommitRunsOnlyAfterCommit(t *testing.T) {
	db := open(t)
	var ran []string
	_ = db.Update(context.Background(), func(tx *Tx) error {
		tx.OnCommit(func() { ran = append(ran, "ok") })
		return nil
	})
	_ = db.Update(context.Background(), func(tx *Tx) error {
		tx.OnCommit(func() { ran = append(ran, "failed") })
		return errors.New("no")
	})
	if len(ran) != 1 || ran[0] != "ok" {
		t.Fatalf("commit handlers ran: %v", ran)
	}
}

func TestUpdateCancelledContext(t *testing.T) {
	db := open(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// With a cancelled context Update may still win the race to enqueue;
	// either outcome is fine, but a returned error must be ctx's.
	err := db.Update(ctx, func(tx *Tx) error { return tx.Put("k", []byte("a"), []byte("b")) })
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if err != nil && get(t, db, "k", "a") != nil {
		t.Fatal("cancelled update was written")
	}
}

func TestClosedDB(t *testing.T) {
	db, err := Open(filepath.Join(t.TempDir(), "x.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := db.Update(context.Background(), func(*Tx) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("Update after Close: %v", err)
	}
	if err := db.View(func(*Tx) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("View after Close: %v", err)
	}
}

func TestReopenKeepsData(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	db, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(context.Background(), func(tx *Tx) error { return tx.Put("k", []byte("a"), []byte("b")) }); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	db, err = Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if v := get(t, db, "k", "a"); string(v) != "b" {
		t.Fatalf("after reopen: %q", v)
	}
}

func TestSchemaTooNewRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	b, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = b.Update(func(tx *bolt.Tx) error {
		bk, _ := tx.CreateBucketIfNotExists([]byte(metaBucket))
		return bk.Put([]byte(schemaKey), binary.BigEndian.AppendUint32(nil, SchemaVersion+1))
	})
	_ = b.Close()
	if _, err := Open(path, nil); !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("err = %v, want ErrSchemaTooNew", err)
	}
}

func TestScan(t *testing.T) {
	db := open(t)
	_ = db.Update(context.Background(), func(tx *Tx) error {
		for _, k := range []string{"a", "c", "e", "g"} {
			if err := tx.Put("s", []byte(k), nil); err != nil {
				return err
			}
		}
		return nil
	})
	cases := []struct {
		from    string
		reverse bool
		want    string
	}{
		{"", false, "aceg"},
		{"", true, "geca"},
		{"c", false, "ceg"},
		{"d", false, "eg"},
		{"d", true, "ca"},
		{"e", true, "eca"},
		{"z", true, "geca"},
		{"z", false, ""},
	}
	for _, c := range cases {
		var got string
		_ = db.View(func(tx *Tx) error {
			return tx.Scan("s", []byte(c.from), c.reverse, func(k, _ []byte) error {
				got += string(k)
				return nil
			})
		})
		if got != c.want {
			t.Errorf("Scan(from=%q, reverse=%v) = %q, want %q", c.from, c.reverse, got, c.want)
		}
	}
	var got string
	_ = db.View(func(tx *Tx) error {
		return tx.Scan("s", nil, false, func(k, _ []byte) error {
			got += string(k)
			if len(got) == 2 {
				return ErrStop
			}
			return nil
		})
	})
	if got != "ac" {
		t.Errorf("ErrStop: scanned %q", got)
	}
}
