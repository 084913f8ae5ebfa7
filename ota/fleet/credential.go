package fleet

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"
)

// Tokens are what devices and gateways present as their MQTT password: 192
// random bits, base64url without padding (32 characters). They are stored
// only as a SHA-256 hash; a fast hash is enough because a token has far more
// entropy than any guess could cover.
const (
	tokenBytes  = 24
	tokenPrefix = "sha256:"
)

// NewToken returns a fresh random device token.
func NewToken() string {
	b := make([]byte, tokenBytes)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go ≥ 1.24)
	return base64.RawURLEncoding.EncodeToString(b)
}

func hashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return tokenPrefix + hex.EncodeToString(sum[:])
}

// Operator passwords are hashed with argon2id (RFC 9106) at the parameters
// OWASP recommends as a minimum (19 MiB, 2 passes, 1 lane), encoded in the
// usual PHC string form.
const (
	argonTime    = 2
	argonMemory  = 19 * 1024
	argonThreads = 1
	argonKeyLen  = 32
	argonSaltLen = 16
	argonPrefix  = "$argon2id$"
	// MinPasswordLen is the shortest operator password accepted.
	MinPasswordLen = 12
)

// hashPassword returns the PHC string of password with a fresh salt.
func hashPassword(password string) string {
	salt := make([]byte, argonSaltLen)
	_, _ = rand.Read(salt)
	key := argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	return fmt.Sprintf("%sv=%d$m=%d,t=%d,p=%d$%s$%s", argonPrefix, argon2.Version, argonMemory, argonTime, argonThreads,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key))
}

// rawTokenPrefix marks a token hash held in memory as its 32 raw bytes
// rather than the 71-character stored form: compactSecret converts records
// as they are loaded, and the stored form is never written from memory
// (updates re-read the record in their transaction).
const rawTokenPrefix = "\x00"

// compactSecret returns the in-memory form of a stored secret.
func compactSecret(stored string) string {
	h, ok := strings.CutPrefix(stored, tokenPrefix)
	if !ok {
		return stored
	}
	raw, err := hex.DecodeString(h)
	if err != nil || len(raw) != sha256.Size {
		return stored
	}
	return rawTokenPrefix + string(raw)
}

// verifySecret reports whether presented matches the stored hash, in
// constant time with respect to the secret's content.
func verifySecret(stored string, presented []byte) bool {
	switch {
	case strings.HasPrefix(stored, rawTokenPrefix) && len(stored) == 1+sha256.Size:
		sum := sha256.Sum256(presented)
		return subtle.ConstantTimeCompare(sum[:], []byte(stored[1:])) == 1
	case strings.HasPrefix(stored, tokenPrefix):
		sum := sha256.Sum256(presented)
		want, err := hex.DecodeString(stored[len(tokenPrefix):])
		return err == nil && subtle.ConstantTimeCompare(sum[:], want) == 1
	case strings.HasPrefix(stored, argonPrefix):
		return verifyArgon(stored, presented)
	default:
		return false
	}
}

func verifyArgon(stored string, presented []byte) bool {
	// $argon2id$v=19$m=19456,t=2,p=1$salt$key
	parts := strings.Split(stored, "$")
	if len(parts) != 6 {
		return false
	}
	var v int
	var m uint32
	var t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[2], "v=%d", &v); err != nil || v != argon2.Version {
		return false
	}
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil {
		return false
	}
	// Refuse parameters that would let a corrupted record exhaust memory.
	if m == 0 || m > 1<<20 || t == 0 || t > 16 || p == 0 {
		return false
	}
	salt, err1 := base64.RawStdEncoding.DecodeString(parts[4])
	want, err2 := base64.RawStdEncoding.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(want) == 0 || len(want) > 64 {
		return false
	}
	got := argon2.IDKey(presented, salt, t, m, p, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1
}

// NewPassword returns a random operator password (128 bits, base64url).
func NewPassword() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
