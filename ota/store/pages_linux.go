package store

import (
	"fmt"
	"syscall"

	bolt "go.etcd.io/bbolt"
)

// ReleasePages tells the kernel that the process no longer needs the pages
// of the file it has read through bbolt's memory map (MADV_DONTNEED on the
// mapping). Nothing is lost: the mapping is read-only and backed by the
// file, the pages stay in the page cache for the kernel to keep or drop,
// and a later read faults them back in. Call it after reading most of the
// store once, as a broker does at start, so that its resident memory is
// what it holds rather than every page it has read.
//
// It runs inside a read transaction: bbolt remaps (when the file grows)
// only with no read transaction open, so the mapping cannot move while it
// is being advised.
func (db *DB) ReleasePages() error {
	db.mu.RLock()
	defer db.mu.RUnlock()
	if db.closed {
		return ErrClosed
	}
	return db.release()
}

// release is ReleasePages on an open store.
func (db *DB) release() error {
	return db.bolt.View(func(tx *bolt.Tx) error {
		info := db.bolt.Info()
		size := tx.Size() // the file's size now; the mapping is at least as large
		if info.Data == 0 || size <= 0 {
			return nil
		}
		// madvise(2) on the mapping's address, which bbolt gives as a
		// uintptr (the Go heap never holds it).
		if _, _, errno := syscall.Syscall(syscall.SYS_MADVISE, info.Data, uintptr(size), syscall.MADV_DONTNEED); errno != 0 {
			return fmt.Errorf("release the store's pages: %w", errno)
		}
		return nil
	})
}
