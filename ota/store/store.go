package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// SchemaVersion is the layout version this build writes. Open refuses files
// with a higher version and upgrades lower ones in place.
const SchemaVersion = 1

// Defaults for Options.
const (
	DefaultMaxBatch    = 512
	DefaultOpenTimeout = 5 * time.Second
)

const (
	metaBucket = "meta"
	schemaKey  = "schema"
)

// Options configure Open. The zero value means all defaults.
type Options struct {
	// MaxBatch is the most Update calls committed in one transaction.
	// Default DefaultMaxBatch.
	MaxBatch int
	// OpenTimeout bounds the wait for the file lock held by another process.
	// Default DefaultOpenTimeout.
	OpenTimeout time.Duration
	// NoSync skips fsync on commit. Only for tests and benchmarks that
	// measure something else; a crash loses acknowledged writes.
	NoSync bool
	// Logger receives batch failures. Default slog.Default().
	Logger *slog.Logger

	// releaseInterval is the least time between two releases of the
	// mapped pages after writes; 0 releaseInterval, negative none (tests).
	releaseInterval time.Duration
}

// DB is the bbolt store, the default Store. Its methods may be called
// concurrently.
type DB struct {
	bolt *bolt.DB
	log  *slog.Logger
	max  int

	// mu guards closed and serialises Close against new requests.
	mu     sync.RWMutex
	closed bool

	reqs chan *request
	done chan struct{} // closed when the writer goroutine has exited

	// The writer's: page writes and time at the last release of the
	// mapped pages, and how long until the next may be.
	releasedAt      atomic.Int64 // written by the writer only; atomic for tests
	releasedTime    time.Time
	releaseInterval time.Duration
	releases        atomic.Int64 // releases the writer made, for tests
}

type request struct {
	fn  func(Tx) error
	err chan error // buffered, capacity 1
}

// Open opens (creating if needed) the bbolt file at path, checks its schema
// version and starts the group-commit writer. The directory is created with
// mode 0700 if it does not exist.
func Open(path string, opts *Options) (*DB, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = DefaultMaxBatch
	}
	if o.OpenTimeout <= 0 {
		o.OpenTimeout = DefaultOpenTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	b, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:      o.OpenTimeout,
		NoSync:       o.NoSync,
		FreelistType: bolt.FreelistMapType,
	})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("open store %s: %w", path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if err := checkSchema(b); err != nil {
		_ = b.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	db := &DB{
		bolt: b,
		log:  o.Logger,
		max:  o.MaxBatch,
		reqs: make(chan *request, o.MaxBatch),
		done: make(chan struct{}),

		releaseInterval: o.releaseInterval,
	}
	switch {
	case db.releaseInterval == 0:
		db.releaseInterval = releaseInterval
	case db.releaseInterval < 0:
		db.releaseInterval = 0
	}
	go db.writer()
	return db, nil
}

func checkSchema(b *bolt.DB) error {
	return b.Update(func(tx *bolt.Tx) error {
		bk, err := tx.CreateBucketIfNotExists([]byte(metaBucket))
		if err != nil {
			return err
		}
		v := bk.Get([]byte(schemaKey))
		if v == nil {
			return bk.Put([]byte(schemaKey), binary.BigEndian.AppendUint32(nil, SchemaVersion))
		}
		if len(v) != 4 {
			return fmt.Errorf("schema version record is %d bytes, want 4", len(v))
		}
		if got := binary.BigEndian.Uint32(v); got > SchemaVersion {
			return fmt.Errorf("%w: file has %d, this build supports up to %d", ErrSchemaTooNew, got, SchemaVersion)
		}
		return nil
	})
}

// Path returns the file name of the database.
func (db *DB) Path() string { return db.bolt.Path() }

// Update runs fn in a read-write transaction shared with other concurrent
// Update calls and returns once that transaction is durably committed (or fn
// failed). fn may run more than once; see the package documentation.
//
// If ctx ends before the writer has taken the request, Update returns
// ctx.Err() and fn never runs. Once taken, Update waits for the commit: it
// never reports a write as failed that may have reached the disk.
func (db *DB) Update(ctx context.Context, fn func(Tx) error) error {
	r := &request{fn: fn, err: make(chan error, 1)}
	db.mu.RLock()
	if db.closed {
		db.mu.RUnlock()
		return ErrClosed
	}
	select {
	case db.reqs <- r:
	case <-ctx.Done():
		db.mu.RUnlock()
		return ctx.Err()
	}
	db.mu.RUnlock()
	return <-r.err
}

// UpdateNow runs fn in its own read-write transaction with its own fsync,
// bypassing the group-commit writer. It exists as the baseline that
// benchmarks compare Update against; production code uses Update.
func (db *DB) UpdateNow(fn func(Tx) error) error {
	db.mu.RLock()
	defer db.mu.RUnlock()
	if db.closed {
		return ErrClosed
	}
	return db.bolt.Update(func(btx *bolt.Tx) error { return call(fn, &boltTx{b: btx}) })
}

// View runs fn in a read-only transaction. Views run concurrently with each
// other and with the writer. ctx is not consulted by bbolt (a read of the
// local file does not wait on anything a context could end).
func (db *DB) View(_ context.Context, fn func(Tx) error) error {
	db.mu.RLock()
	defer db.mu.RUnlock()
	if db.closed {
		return ErrClosed
	}
	return db.bolt.View(func(btx *bolt.Tx) error { return call(fn, &boltTx{b: btx}) })
}

// Close waits for every accepted Update to commit, stops the writer and
// closes the file. Later calls return ErrClosed.
func (db *DB) Close() error {
	db.mu.Lock()
	if db.closed {
		db.mu.Unlock()
		return ErrClosed
	}
	db.closed = true
	close(db.reqs)
	db.mu.Unlock()
	<-db.done
	return db.bolt.Close()
}

// writer is the group-commit goroutine: it takes one request, gathers every
// other request already waiting (up to MaxBatch), and commits them together.
//
// A release of the mapped pages that releaseInterval held back (see
// afterWrites) is made once the interval is over, even if no write comes
// then: otherwise the pages of a burst's last writes would stay resident
// until the next burst.
func (db *DB) writer() {
	defer close(db.done)
	batch := make([]*request, 0, db.max)
	held := time.NewTimer(time.Hour)
	held.Stop()
	defer held.Stop()
	// release makes a release of the mapped pages that is due, or sets
	// the timer for one held back (Reset of a running timer moves it: the
	// time is counted from the last release, so it stays the same).
	release := func() {
		if d, ok := db.afterWrites(); ok {
			held.Reset(d)
		}
	}
	for {
		var r *request
		select {
		case req, ok := <-db.reqs:
			if !ok {
				return
			}
			r = req
		case <-held.C:
			release() // or again later: a batch made the release meanwhile, and more pages came since
			continue
		}
		batch = append(batch[:0], r)
	gather:
		for len(batch) < db.max {
			select {
			case r, ok := <-db.reqs:
				if !ok {
					break gather
				}
				batch = append(batch, r)
			default:
				break gather
			}
		}
		db.commit(batch)
		// The requests are done: their functions (and whatever those
		// hold, such as a status flush's encoded records) must not stay
		// reachable until a batch as large comes along.
		clear(batch)
		release()
	}
}

// commit runs batch in one transaction. If one function fails, the
// transaction is rolled back, the rest are committed again without it, and
// the failing one is then run alone so its error reflects only its own work.
// releaseEvery is how many page writes since the last release of the
// mapped pages make the writer release them again (1 MiB of 4 KiB pages).
// A write transaction reads, through the map, the pages it then writes
// anew elsewhere in the file: after a bulk write (a status flush after the
// whole fleet reconnected, a rollout's offers) the process would keep
// resident old pages that are free now, until bbolt next remaps.
// At most one release a releaseInterval: under a steady stream of large
// writes each release makes the next transactions fault the pages they
// read back in.
const (
	releaseEvery    = 256
	releaseInterval = time.Second
)

// afterWrites releases the mapped pages once releaseEvery pages have been
// written since the last time, and the last release is releaseInterval
// ago. Otherwise it reports whether such a release is held back by the
// interval, and for how long (at least a millisecond). Only the writer
// goroutine calls it, after each batch and when its timer fires.
func (db *DB) afterWrites() (time.Duration, bool) {
	st := db.bolt.Stats()
	w := st.TxStats.GetWrite()
	if w-db.releasedAt.Load() < releaseEvery {
		return 0, false
	}
	if wait := db.releaseInterval - time.Since(db.releasedTime); wait > 0 {
		return max(time.Millisecond, wait), true
	}
	db.releasedAt.Store(w)
	db.releasedTime = time.Now()
	db.releases.Add(1)
	if err := db.release(); err != nil {
		db.log.Warn("store pages not released", "err", err)
	}
	return 0, false
}

func (db *DB) commit(batch []*request) {
	for len(batch) > 0 {
		failed := -1
		err := db.bolt.Update(func(btx *bolt.Tx) error {
			tx := &boltTx{b: btx}
			for i, r := range batch {
				if err := call(r.fn, tx); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		switch {
		case err == nil:
			for _, r := range batch {
				r.err <- nil
			}
			return
		case failed < 0 || len(batch) == 1:
			// The commit itself failed (disk full, I/O error), or the only
			// function failed: everyone in the batch gets the error.
			if failed < 0 {
				db.log.Error("store commit failed", "err", err, "batch", len(batch))
			}
			for _, r := range batch {
				r.err <- err
			}
			return
		}
		bad := batch[failed]
		rest := make([]*request, 0, len(batch)-1)
		rest = append(rest, batch[:failed]...)
		rest = append(rest, batch[failed+1:]...)
		db.commit(rest)
		batch = []*request{bad}
	}
}

// call runs fn, turning a panic into an error so that one bad function
// cannot take down the writer goroutine.
func call(fn func(Tx) error, tx Tx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %v", ErrPanic, p)
		}
	}()
	return fn(tx)
}

// boltTx is a Tx of the bbolt store.
type boltTx struct {
	b *bolt.Tx
	// cursors are the Gets' cursors, one a bucket: bbolt's Bucket.Get
	// makes a cursor for each call and grows its stack level by level
	// (three allocations a lookup, and a write transaction of a rollout's
	// offers makes thousands), where a cursor's Seek reuses its own.
	cursors map[string]*bolt.Cursor
}

var _ Tx = (*boltTx)(nil)

// Get returns the value at key in bucket, or nil if either is missing.
//
// A Seek starts from the bucket's root, as Bucket.Get does, so the
// cursor may have been moved or invalidated by writes since its last use.
func (tx *boltTx) Get(bucket string, key []byte) []byte {
	c := tx.cursors[bucket]
	if c == nil {
		bk := tx.b.Bucket([]byte(bucket))
		if bk == nil {
			return nil
		}
		c = bk.Cursor()
		if tx.cursors == nil {
			tx.cursors = make(map[string]*bolt.Cursor)
		}
		tx.cursors[bucket] = c
	}
	// A nested bucket's key comes back with a nil value, as Get returns.
	if k, v := c.Seek(key); bytes.Equal(k, key) {
		return v
	}
	return nil
}

// fillPercent is how full bbolt fills a page before it splits it. Its
// default, 0.5, leaves pages half empty when keys arrive in order (audit
// records, batch registrations); the store is read far more than written
// and is read whole into memory at start, so denser pages are worth the
// occasional extra split.
const fillPercent = 0.9

// Put stores value at key in bucket, creating the bucket on first use.
func (tx *boltTx) Put(bucket string, key, value []byte) error {
	bk, err := tx.b.CreateBucketIfNotExists([]byte(bucket))
	if err != nil {
		return fmt.Errorf("bucket %s: %w", bucket, err)
	}
	bk.FillPercent = fillPercent
	return bk.Put(key, value)
}

// Delete removes key from bucket. A missing key or bucket is not an error.
func (tx *boltTx) Delete(bucket string, key []byte) error {
	bk := tx.b.Bucket([]byte(bucket))
	if bk == nil {
		return nil
	}
	return bk.Delete(key)
}

// NextSequence returns the next value of bucket's monotonic counter (first
// value 1), creating the bucket on first use.
func (tx *boltTx) NextSequence(bucket string) (uint64, error) {
	bk, err := tx.b.CreateBucketIfNotExists([]byte(bucket))
	if err != nil {
		return 0, fmt.Errorf("bucket %s: %w", bucket, err)
	}
	return bk.NextSequence()
}

// Count returns the number of keys in bucket.
func (tx *boltTx) Count(bucket string) int {
	bk := tx.b.Bucket([]byte(bucket))
	if bk == nil {
		return 0
	}
	return bk.Stats().KeyN
}

// Scan calls fn for the keys of bucket in byte order, starting at the first
// key >= from (or <= from when reverse is set; an empty from means the first
// or last key). Returning ErrStop ends the scan with a nil error.
func (tx *boltTx) Scan(bucket string, from []byte, reverse bool, fn func(k, v []byte) error) error {
	bk := tx.b.Bucket([]byte(bucket))
	if bk == nil {
		return nil
	}
	c := bk.Cursor()
	var k, v []byte
	switch {
	case len(from) == 0 && !reverse:
		k, v = c.First()
	case len(from) == 0:
		k, v = c.Last()
	default:
		k, v = c.Seek(from)
		if reverse {
			if k == nil {
				k, v = c.Last()
			} else if string(k) > string(from) {
				k, v = c.Prev()
			}
		}
	}
	for ; k != nil; k, v = step(c, reverse) {
		if err := fn(k, v); err != nil {
			if errors.Is(err, ErrStop) {
				return nil
			}
			return err
		}
	}
	return nil
}

func step(c *bolt.Cursor, reverse bool) ([]byte, []byte) {
	if reverse {
		return c.Prev()
	}
	return c.Next()
}

// OnCommit registers fn to run after the transaction commits successfully,
// in registration order, on the writer goroutine, before Update returns. It
// is the place to apply a committed change to in-memory state, so that
// memory and disk change in the same order. fn must be quick and must not
// call back into the DB.
func (tx *boltTx) OnCommit(fn func()) { tx.b.OnCommit(fn) }
