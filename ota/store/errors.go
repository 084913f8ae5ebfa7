package store

import "errors"

var (
	// ErrClosed is returned by Update and View after Close.
	ErrClosed = errors.New("store: closed")
	// ErrSchemaTooNew means the file was written by a newer otamq whose
	// schema this build does not understand.
	ErrSchemaTooNew = errors.New("store: database schema is newer than this build")
	// ErrLocked means another process holds the database file's lock (an
	// otamq already running on the same data directory) for longer than
	// Options.OpenTimeout.
	ErrLocked = errors.New("store: database file is locked by another process")
	// ErrPanic wraps a panic raised by a transaction function.
	ErrPanic = errors.New("store: transaction function panicked")
)
