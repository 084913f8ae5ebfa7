package store

import (
	"context"
	"errors"
)

// Store is where the domain keeps its state: named buckets of byte keys and
// values, changed in transactions. DB (bbolt, one file, group commit) is the
// default; another implementation (a replicated store for several brokers)
// must pass the conformance suite in package storetest, and keep the
// contract below.
type Store interface {
	// Update runs fn in a read-write transaction and returns once it is
	// durably committed, or fn failed (then nothing of it is stored). fn
	// may run more than once (see the package documentation): it must be
	// a function of the transaction's contents, with no effect outside
	// the transaction but through Tx.OnCommit. If ctx ends before fn is
	// taken up, Update returns ctx.Err() and fn never runs; once taken up,
	// Update never reports a write as failed that may have been committed.
	Update(ctx context.Context, fn func(Tx) error) error
	// View runs fn in a read-only transaction that sees one consistent
	// state; Views may run concurrently with each other and with Update.
	View(ctx context.Context, fn func(Tx) error) error
	// Close waits for the Updates under way and releases the store; later
	// calls return ErrClosed.
	Close() error
}

// Tx is a transaction of a Store, valid only during the function it was
// handed to. Byte slices it returns are valid only in the transaction.
type Tx interface {
	// Get returns the value at key in bucket, or nil if either is missing.
	Get(bucket string, key []byte) []byte
	// Put stores value at key in bucket, creating the bucket on first use.
	Put(bucket string, key, value []byte) error
	// Delete removes key from bucket; a missing key or bucket is no error.
	Delete(bucket string, key []byte) error
	// NextSequence returns the next value of bucket's counter (first 1).
	NextSequence(bucket string) (uint64, error)
	// Count returns the number of keys in bucket.
	Count(bucket string) int
	// Scan calls fn for the keys of bucket in byte order from the first
	// key >= from (or, reverse, <= from; an empty from is the first or last
	// key). ErrStop from fn ends the scan with a nil error.
	Scan(bucket string, from []byte, reverse bool, fn func(k, v []byte) error) error
	// OnCommit registers fn to run after the transaction commits, in
	// registration order, before Update returns (never for a View, or a
	// transaction that fails). fn must be quick and must not use the
	// Store.
	OnCommit(fn func())
}

var _ Store = (*DB)(nil)

// ErrStop may be returned by a Scan callback to end the scan early without
// an error.
var ErrStop = errors.New("store: stop scan")
