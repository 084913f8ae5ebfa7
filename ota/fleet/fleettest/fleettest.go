// Package fleettest opens what the tests of the packages around the
// registry start from: a new store in a test's temporary directory, fsync
// off, and a registry on it.
package fleettest

import (
	"path/filepath"
	"testing"

	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/store"
)

// Open returns a new store, closed when t ends, and a registry opened on
// it with o (nil: the defaults).
func Open(t testing.TB, o *fleet.Options) (*store.DB, *fleet.Registry) {
	t.Helper()
	db, err := store.Open(filepath.Join(t.TempDir(), "otamq.db"), &store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	reg, err := fleet.Open(db, o)
	if err != nil {
		t.Fatal(err)
	}
	return db, reg
}
