package store

import (
	"context"
	"encoding/binary"
	"errors"
	"path/filepath"
	"testing"

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
