package audit

import (
	"crypto/sha256"
	"fmt"
	"unicode/utf8"
)

// Bounds of a record's fields, in bytes. A record is at most about 4.5 KiB
// of JSON whatever the request was.
const (
	MaxActorLen  = 256
	MaxRoleLen   = 64
	MaxRemoteLen = 256
	MaxActionLen = 256
	MaxTargetLen = 512
	MaxErrorLen  = 1024
	// MaxArgsLen bounds the JSON of the arguments; a truncated value is
	// stored as a JSON string of at most MaxArgsLen+2 bytes.
	MaxArgsLen = 2048
)

// Bound returns s unchanged if it is at most limit bytes. Otherwise it
// returns the longest prefix of s of whole UTF-8 characters that leaves room
// for a marker, followed by the marker "…[truncated: N bytes, sha256 HEX]"
// with the length and the SHA-256 of the whole of s, and reports true. The
// result is at most limit bytes (the marker alone when limit is smaller
// than it), and Bound of a bounded value returns it unchanged.
func Bound(s string, limit int) (string, bool) {
	if len(s) <= limit {
		return s, false
	}
	sum := sha256.Sum256([]byte(s))
	marker := fmt.Sprintf("…[truncated: %d bytes, sha256 %x]", len(s), sum)
	n := max(0, limit-len(marker))
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + marker, true
}

// field bounds one string field of a record: invalid UTF-8 becomes U+FFFD
// per byte first, as the JSON encoding would do (so the index key and the
// stored value agree), then Bound.
func field(s string, limit int) (string, bool) {
	if !utf8.ValidString(s) {
		s = string([]rune(s))
	}
	return Bound(s, limit)
}

// bound cuts every field of r to its bound and lists the cut fields in
// r.Truncated.
func bound(r *Record) {
	r.Truncated = nil
	for _, f := range []struct {
		name  string
		v     *string
		limit int
	}{
		{"actor", &r.Actor, MaxActorLen},
		{"role", &r.Role, MaxRoleLen},
		{"remote", &r.Remote, MaxRemoteLen},
		{"session", &r.Session, MaxActorLen},
		{"action", &r.Action, MaxActionLen},
		{"target", &r.Target, MaxTargetLen},
		{"result", &r.Result, MaxRoleLen},
		{"error", &r.Error, MaxErrorLen},
	} {
		var cut bool
		if *f.v, cut = field(*f.v, f.limit); cut {
			r.Truncated = append(r.Truncated, f.name)
		}
	}
	if len(r.Args) > MaxArgsLen {
		// Half the room: re-encoding the JSON text as a JSON string at
		// most doubles it (quotes and backslashes are escaped; the text is
		// valid UTF-8 and HTML characters are not escaped).
		s, _ := field(string(r.Args), MaxArgsLen/2)
		r.Args = jsonString(s)
		r.Truncated = append(r.Truncated, "args")
	}
}
