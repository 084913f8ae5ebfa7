package store_test

import (
	"path/filepath"
	"testing"

	"github.com/otamq/otamq/ota/store"
	"github.com/otamq/otamq/ota/store/storetest"
)

// TestConformance runs the Store conformance suite against the bbolt store.
func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		db, err := store.Open(filepath.Join(t.TempDir(), "otamq.db"), nil)
		if err != nil {
			t.Fatal(err)
		}
		return db
	})
}
