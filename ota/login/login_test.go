package login

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/clock"
	"github.com/otamq/otamq/ota/store"
)

func open(t *testing.T, path string, clk clock.Clock, max int) (*store.DB, *Store) {
	t.Helper()
	db, err := store.Open(path, &store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(db, &Options{Clock: clk, TTL: time.Hour, MaxPerOperator: max})
	if err != nil {
		t.Fatal(err)
	}
	return db, s
}

func create(t *testing.T, db store.Store, s *Store, op string) (string, Session) {
	t.Helper()
	var token string
	var sess Session
	if err := db.Update(context.Background(), func(tx store.Tx) error {
		var err error
		token, sess, err = s.Create(tx, op, "127.0.0.1:1")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return token, sess
}

func TestSessionsExpireEvictAndPersistHashed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	db, s := open(t, path, clk, 2)
	t1, s1 := create(t, db, s, "alice")
	if got, _, ok := s.Lookup(t1); !ok || got.Handle != s1.Handle || got.Operator != "alice" {
		t.Fatalf("lookup: %+v %v", got, ok)
	}
	if _, _, ok := s.Lookup(t1 + "x"); ok {
		t.Fatal("a wrong token found a session")
	}
	clk.Advance(time.Minute)
	t2, _ := create(t, db, s, "alice")
	_, ended1, _ := s.Lookup(t1)
	clk.Advance(time.Minute)
	t3, s3 := create(t, db, s, "alice") // the third: the oldest goes
	select {
	case <-ended1:
	default:
		t.Fatal("the evicted session was not ended")
	}
	if _, _, ok := s.Lookup(t1); ok {
		t.Fatal("the oldest session survived a login beyond the bound")
	}
	if s.Count("alice") != 2 {
		t.Fatalf("%d sessions, bound 2", s.Count("alice"))
	}
	// Only hashes on disk.
	if err := db.View(context.Background(), func(tx store.Tx) error {
		return tx.Scan(Bucket, nil, false, func(k, v []byte) error {
			for _, tok := range []string{t1, t2, t3} {
				if bytes.Contains(k, []byte(tok)) || bytes.Contains(v, []byte(tok)) {
					t.Errorf("token stored in the clear")
				}
			}
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	// Durable: a reopened store knows the sessions.
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, s = open(t, path, clk, 2)
	defer func() { _ = db.Close() }()
	if got, _, ok := s.Lookup(t3); !ok || got != s3 {
		t.Fatalf("after reopen: %+v %v (want %+v)", got, ok, s3)
	}
	// Deleting the operator's sessions but one.
	if err := db.Update(context.Background(), func(tx store.Tx) error {
		_, err := s.DeleteOperator(tx, "alice", s3.Handle)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := s.Lookup(t2); ok {
		t.Fatal("DeleteOperator kept a session it should end")
	}
	if _, _, ok := s.Lookup(t3); !ok {
		t.Fatal("DeleteOperator ended the kept session")
	}
	// Expiry.
	clk.Advance(time.Hour)
	if _, _, ok := s.Lookup(t3); ok {
		t.Fatal("an expired session was found")
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, s = open(t, path, clk, 2)
	defer func() { _ = db.Close() }()
	if n := s.Count("alice"); n != 0 {
		t.Fatalf("%d expired sessions loaded", n)
	}
}
