package store

import (
	"context"
	"encoding/binary"
	"errors"
	"path/filepath"
	"runtime"
	"testing"
	"weak"

	bolt "go.etcd.io/bbolt"
)

func get(t *testing.T, db *DB, bucket, key string) []byte {
	t.Helper()
	var out []byte
	if err := db.View(context.Background(), func(tx Tx) error {
		if v := tx.Get(bucket, []byte(key)); v != nil {
			out = append([]byte{}, v...)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestReopenKeepsData(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	db, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(context.Background(), func(tx Tx) error { return tx.Put("k", []byte("a"), []byte("b")) }); err != nil {
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

// A committed request is not kept reachable by the writer: what its
// function captured (a status flush's encoded records, for every device)
// can be collected at once, not when a batch as large comes along. The
// writer's batch slice used to hold the last requests until overwritten.
func TestCommittedRequestsNotRetained(t *testing.T) {
	db, err := Open(filepath.Join(t.TempDir(), "x.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	w := update(t, db)
	for i := 0; i < 20 && w.Value() != nil; i++ {
		runtime.GC()
	}
	if w.Value() != nil {
		t.Fatal("the function of a committed request is still reachable")
	}
}

// update commits a request whose function holds 1 MiB, and returns a weak
// pointer to it.
func update(t *testing.T, db *DB) weak.Pointer[byte] {
	big := make([]byte, 1<<20)
	w := weak.Make(&big[0])
	if err := db.Update(context.Background(), func(tx Tx) error {
		return tx.Put("b", []byte("k"), big[:16])
	}); err != nil {
		t.Fatal(err)
	}
	return w
}
