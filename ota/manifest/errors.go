package manifest

import "errors"

// Errors callers tell apart with errors.Is. Each is wrapped with the detail
// (which field, which key ID, how many bytes).
var (
	// ErrMalformed: the bytes are not a signed manifest of this contract
	// (CBOR, COSE structure or payload values).
	ErrMalformed = errors.New("malformed manifest")
	// ErrUnknownKey: the manifest is signed by a key that is not trusted.
	ErrUnknownKey = errors.New("manifest signed by an unknown key")
	// ErrBadSignature: the signature does not match the received bytes under
	// the key its key ID names (changed after signing, or a forged key ID).
	ErrBadSignature = errors.New("bad manifest signature")
	// ErrSizeMismatch: an image's size differs from the manifest's.
	ErrSizeMismatch = errors.New("image size mismatch")
	// ErrDigestMismatch: an image's SHA-256 differs from the manifest's.
	ErrDigestMismatch = errors.New("image digest mismatch")

	// ErrKeyFormat: a key file is not the expected PEM block or its contents
	// do not parse.
	ErrKeyFormat = errors.New("bad key file")
	// ErrKeyType: a key is not ECDSA on P-256, the only algorithm (ES256)
	// devices verify.
	ErrKeyType = errors.New("not an ECDSA P-256 key")
	// ErrKeyPermissions: a private key file is readable or writable by group
	// or others.
	ErrKeyPermissions = errors.New("private key file is accessible to others")

	// ErrBuild: a build description is invalid.
	ErrBuild = errors.New("invalid build description")
)
