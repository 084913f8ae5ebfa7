package store

import "errors"

var (
	// ErrClosed is returned by Update and View after Close.
	ErrClosed = errors.New("store: closed")
	// ErrSchemaTooNew means the file was written by a newer otamq whose
	// schema this build does not understand.
	ErrSchemaTooNew = errors.New("store: database schema is newer than this build")
	// ErrPanic wraps a panic raised by a transaction function.
	ErrPanic = errors.New("store: transaction function panicked")
)
