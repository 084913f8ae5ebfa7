// Package manifest holds release manifests (docs/PROTOCOL.md, "Manifests"): their payload,
// the COSE_Sign1 envelope that signs it, signing keys and key files, and the
// build description `otactl sign` reads.
//
// # Model
//
// A release is an image plus a signed manifest. The manifest payload is a
// CBOR map with integer keys 1 to 11 (format, sequence, version, build ID,
// target hardware, minimum bootloader, image size, image digest, secure
// version, kind, components), encoded with core deterministic encoding, so
// the same Manifest always has the same bytes. It is signed offline, on the
// operator's machine or by an HSM (Sign takes any crypto.Signer with a
// P-256 key), as a tagged COSE_Sign1 (tag 18) with the protected header
// {1: -7} (ES256, bytes a10126), the unprotected header {4: key ID}, an
// empty external AAD and a raw 64-byte r‖s signature.
//
// A key ID is the first 8 bytes of the SHA-256 of the public key's
// uncompressed point (0x04‖X‖Y, 65 bytes), as the device agent computes it.
//
// The broker never signs. It verifies an uploaded manifest against its
// trusted keys (Verify, with a Keys lookup by key ID) and keeps the bytes
// exactly as received (Signed.Raw): what devices get is what the operator
// signed, and signatures are always checked over the received bytes, never
// over a re-encoding.
//
// # Untrusted input
//
// Parse and Verify take bytes from operators' uploads. They bound the size
// (wire.MaxManifestSize) before parsing; refuse duplicate map keys,
// indefinite lengths, tags other than the leading COSE tag, invalid UTF-8,
// deep nesting and long arrays; accept nothing but the one protected header
// and an 8-byte key ID; and validate every payload field. Payload keys may
// come in any order and unknown keys above 11 are ignored, as on devices.
// Errors wrap one of ErrMalformed, ErrUnknownKey and ErrBadSignature;
// CheckImage reports ErrSizeMismatch or ErrDigestMismatch.
//
// # Key files
//
// Private keys are PEM PKCS#8 ("PRIVATE KEY"), written with mode 0600 and
// never over an existing file; LoadPrivateKey refuses a file others may
// read. Public keys are PEM SPKI ("PUBLIC KEY").
package manifest
