// Package store is otamq's durable state: a small transactional key-value
// store over one bbolt file, with a group-commit writer.
//
// # Model
//
// Data lives in named buckets of byte keys and values. The domain packages
// (fleet, audit, and later releases and rollouts) encode their own records;
// store knows nothing about them. That keeps the persistence seam small: a
// different backend (etcd, for a clustered deployment) only has to offer the
// same Tx operations.
//
// Writes go through [DB.Update]. Update hands the function to a single writer
// goroutine that runs every request waiting at that moment in one bbolt
// transaction and commits it with one fsync, so many concurrent callers share
// the cost of a durable commit. When Update returns nil the write is on disk:
// callers acknowledge to clients only after that.
//
// # Caveats
//
//   - A function passed to Update may run more than once: if another function
//     in the same batch fails, the batch is rolled back and run again without
//     it, and the failing function is then run alone so that its error is
//     reported against a transaction that holds only its own effects. Functions
//     must therefore be pure functions of the transaction's contents: no side
//     effects outside the transaction except through [Tx.OnCommit].
//   - A function that returns an error leaves the database exactly as it was.
//   - Byte slices returned by Get and Scan are valid only inside the
//     transaction; copy them to keep them.
//   - Functions must not call Update or UpdateNow themselves (deadlock).
package store
