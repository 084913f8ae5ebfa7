package manifest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
)

// KeyID identifies a signing key: the first 8 bytes of the SHA-256 of its
// public point in uncompressed form (0x04‖X‖Y, 65 bytes). The agent
// computes it the same way (ota_key_id). It prints and marshals as hex.
type KeyID [8]byte

// String returns id in lowercase hex.
func (id KeyID) String() string { return hex.EncodeToString(id[:]) }

// MarshalText writes id in hex.
func (id KeyID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText reads id from hex.
func (id *KeyID) UnmarshalText(b []byte) error {
	v, err := ParseKeyID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

// ParseKeyID reads a key ID written as 16 hex digits.
func ParseKeyID(s string) (KeyID, error) {
	var id KeyID
	if len(s) != 2*len(id) {
		return id, fmt.Errorf("key ID %q: want %d hex digits", s, 2*len(id))
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("key ID %q: %w", s, err)
	}
	return id, nil
}

// KeyIDOf returns the key ID of pub, which must be a valid P-256 key (as
// checkPublic and the parsers here ensure).
func KeyIDOf(pub *ecdsa.PublicKey) KeyID {
	sum := sha256.Sum256(PublicKeyPoint(pub))
	var id KeyID
	copy(id[:], sum[:])
	return id
}

// PublicKeyPoint returns pub as an uncompressed point, 0x04‖X‖Y (65 bytes
// for P-256): the form devices keep their trusted keys in. It returns nil
// for an invalid key.
func PublicKeyPoint(pub *ecdsa.PublicKey) []byte {
	k, err := pub.ECDH()
	if err != nil {
		return nil
	}
	return k.Bytes()
}

// ParsePublicKeyPoint reads an uncompressed P-256 point (65 bytes,
// 0x04‖X‖Y), checking that it is on the curve.
func ParsePublicKeyPoint(b []byte) (*ecdsa.PublicKey, error) {
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), b)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKeyType, err)
	}
	return pub, nil
}

// checkPublic returns k as an ECDSA P-256 public key, or an error wrapping
// ErrKeyType that says what k is instead.
func checkPublic(k any) (*ecdsa.PublicKey, error) {
	pub, ok := k.(*ecdsa.PublicKey)
	if !ok || pub == nil || pub.Curve == nil {
		return nil, fmt.Errorf("%w: the key is %T", ErrKeyType, k)
	}
	if pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("%w: the key is ECDSA on %s", ErrKeyType, pub.Curve.Params().Name)
	}
	if _, err := pub.ECDH(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKeyType, err)
	}
	return pub, nil
}

// Keys finds trusted public keys by key ID. Verify calls it once per
// manifest; implementations used from several goroutines must be safe for
// concurrent use.
type Keys interface {
	Lookup(id KeyID) (*ecdsa.PublicKey, bool)
}

// KeySet is a fixed set of trusted keys. It is safe for concurrent reads.
type KeySet map[KeyID]*ecdsa.PublicKey

var _ Keys = KeySet(nil)

// NewKeySet returns the set of pubs, each checked to be ECDSA P-256.
func NewKeySet(pubs ...*ecdsa.PublicKey) (KeySet, error) {
	s := KeySet{}
	for _, p := range pubs {
		if _, err := checkPublic(p); err != nil {
			return nil, err
		}
		s[KeyIDOf(p)] = p
	}
	return s, nil
}

// Lookup returns the key whose ID is id.
func (s KeySet) Lookup(id KeyID) (*ecdsa.PublicKey, bool) {
	k, ok := s[id]
	return k, ok
}

// GenerateKey returns a new ECDSA P-256 signing key.
func GenerateKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// PEM block types of key files.
const (
	pemPrivate   = "PRIVATE KEY"    // PKCS#8, what WritePrivateKey writes
	pemECPrivate = "EC PRIVATE KEY" // SEC 1, what `openssl ecparam -genkey` writes
	pemPublic    = "PUBLIC KEY"     // SPKI
)

// MarshalPrivateKey returns key as a PEM "PRIVATE KEY" block (PKCS#8).
func MarshalPrivateKey(key *ecdsa.PrivateKey) ([]byte, error) {
	if _, err := checkPublic(&key.PublicKey); err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPrivate, Bytes: der}), nil
}

// MarshalPublicKey returns pub as a PEM "PUBLIC KEY" block (SPKI).
func MarshalPublicKey(pub *ecdsa.PublicKey) ([]byte, error) {
	if _, err := checkPublic(pub); err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPublic, Bytes: der}), nil
}

// ParsePrivateKey reads a P-256 private key from PEM: "PRIVATE KEY"
// (PKCS#8) or "EC PRIVATE KEY" (SEC 1). Encrypted keys are not supported.
func ParsePrivateKey(data []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%w: no PEM block", ErrKeyFormat)
	}
	var (
		k   any
		err error
	)
	switch block.Type {
	case pemPrivate:
		k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case pemECPrivate:
		k, err = x509.ParseECPrivateKey(block.Bytes)
	case "ENCRYPTED PRIVATE KEY":
		return nil, fmt.Errorf("%w: encrypted private keys are not supported (keep the key in a 0600 file or an HSM)", ErrKeyFormat)
	case pemPublic:
		return nil, fmt.Errorf("%w: this is a public key; signing needs the private key (.key)", ErrKeyFormat)
	default:
		return nil, fmt.Errorf("%w: PEM block %q, want %q", ErrKeyFormat, block.Type, pemPrivate)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrKeyFormat, block.Type, err)
	}
	priv, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%w: the key is %T", ErrKeyType, k)
	}
	if _, err := checkPublic(&priv.PublicKey); err != nil {
		return nil, err
	}
	return priv, nil
}

// ParsePublicKey reads a P-256 public key from a PEM "PUBLIC KEY" block
// (SPKI).
func ParsePublicKey(data []byte) (*ecdsa.PublicKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%w: no PEM block", ErrKeyFormat)
	}
	switch block.Type {
	case pemPublic:
	case pemPrivate, pemECPrivate, "ENCRYPTED PRIVATE KEY":
		return nil, fmt.Errorf("%w: this is a private key; give the public key (.pub)", ErrKeyFormat)
	default:
		return nil, fmt.Errorf("%w: PEM block %q, want %q", ErrKeyFormat, block.Type, pemPublic)
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrKeyFormat, block.Type, err)
	}
	return checkPublic(k)
}

// LoadPrivateKey reads a private key file (see ParsePrivateKey). Outside
// Windows it refuses a file that group or others may access, as ssh does:
// a signing key that others could have read must be treated as leaked.
func LoadPrivateKey(path string) (*ecdsa.PrivateKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if perm := st.Mode().Perm(); runtime.GOOS != "windows" && perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o, want 0600 (chmod 600 %s)", ErrKeyPermissions, path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return nil, err
	}
	k, err := ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// LoadPublicKey reads a public key file (see ParsePublicKey).
func LoadPublicKey(path string) (*ecdsa.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k, err := ParsePublicKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// WritePrivateKey writes key to a new file at path with mode 0600. It
// refuses to replace an existing file (the error wraps fs.ErrExist): a
// signing key is never overwritten by accident.
func WritePrivateKey(path string, key *ecdsa.PrivateKey) error {
	data, err := MarshalPrivateKey(key)
	if err != nil {
		return err
	}
	return writeNew(path, data, 0o600)
}

// WritePublicKey writes pub to a new file at path with mode 0644, refusing
// to replace an existing file.
func WritePublicKey(path string, pub *ecdsa.PublicKey) error {
	data, err := MarshalPublicKey(pub)
	if err != nil {
		return err
	}
	return writeNew(path, data, 0o644)
}

func writeNew(path string, data []byte, perm fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("refusing to overwrite %s: %w", path, err)
		}
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path) // we created it; leave no half-written key behind
		return err
	}
	return nil
}
