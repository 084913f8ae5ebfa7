package fleet

import "errors"

var (
	// ErrNotFound means no client is registered under the ID.
	ErrNotFound = errors.New("not registered")
	// ErrExists means the ID is already registered.
	ErrExists = errors.New("already registered")
	// ErrInvalid wraps every validation failure of operator input.
	ErrInvalid = errors.New("invalid")
	// ErrRevoked means the client's credentials were revoked.
	ErrRevoked = errors.New("revoked")
	// ErrBadCredentials means the token, password or certificate does not
	// match the registration.
	ErrBadCredentials = errors.New("bad credentials")
	// ErrIdentityMismatch means the MQTT username or the certificate's common
	// name differs from the client ID.
	ErrIdentityMismatch = errors.New("identity mismatch")
	// ErrThrottled means a password check was refused unchecked because of
	// earlier failures (the error is a *ThrottledError).
	ErrThrottled = errors.New("login throttled")
)
