package broker

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"strings"
)

// A SettingError is a problem that the value of one or more settings
// causes: a value Validate refuses, a listener address that cannot be
// bound, a TLS file that cannot be read, a data directory that cannot be
// used. Keys are the configuration file's names of those settings
// ("mqtt.tcp_addr", see config/otamq.example.yaml), so that a caller can say
// what to change; a command-line front end maps them to its flags.
//
// Validate and New return SettingErrors (joined with errors.Join when there
// are several); every other error of New is an internal failure.
type SettingError struct {
	Keys []string
	Err  error
}

// Error is the problem followed by the keys to change, e.g.
// "mqtt listener 127.0.0.1:1883: address already in use (set mqtt.tcp_addr)".
func (e *SettingError) Error() string {
	return e.Err.Error() + " (set " + strings.Join(e.Keys, " and ") + ")"
}

// Unwrap returns the underlying error.
func (e *SettingError) Unwrap() error { return e.Err }

// setting returns a SettingError for err and the keys.
func setting(err error, keys ...string) *SettingError { return &SettingError{Keys: keys, Err: err} }

// sysReason reduces an error from net.Listen or the file system to its
// cause ("address already in use", "no such file or directory"): the
// operation and the path or address are said by the caller's message.
func sysReason(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		err = oe.Err
	}
	var se *os.SyscallError
	if errors.As(err, &se) {
		return se.Err
	}
	var ae *net.AddrError
	if errors.As(err, &ae) {
		return errors.New(ae.Err)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
