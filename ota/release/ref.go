package release

import (
	"errors"
	"fmt"
	"strings"
)

// Release references. Wherever an operator names a release (release/get,
// offer/create, a rollout's release and upgrade path) the name may be:
//
//   - its full ID, "VERSION@DIGEST8";
//   - "VERSION@" and any prefix of the image digest (hex) that only one
//     release of that version has;
//   - "VERSION" alone when only one release has that version.
//
// A reference that names no release, or more than one, is refused with a
// *RefError listing candidates (at most MaxCandidates).

// MaxCandidates bounds the releases a refused reference lists.
const MaxCandidates = 10

// ErrAmbiguous means a reference names more than one release.
var ErrAmbiguous = errors.New("names more than one release")

// RefError is a reference that names no release (it wraps ErrNotFound) or
// several (ErrAmbiguous), with the releases it might have meant.
type RefError struct {
	Ref string
	// Err is ErrNotFound, ErrAmbiguous or ErrInvalid.
	Err error
	// Why says it in words, for a message.
	Why string
	// Candidates are the releases it might have meant, newest first, at
	// most MaxCandidates; More says how many were left out.
	Candidates []Release
	More       int
}

func (e *RefError) Error() string {
	msg := fmt.Sprintf("release %s: %s", quoteRef(e.Ref), e.Why)
	if len(e.Candidates) == 0 && !errors.Is(e.Err, ErrInvalid) {
		return msg + " (there is no release yet)"
	}
	var names []string
	for _, r := range e.Candidates {
		names = append(names, fmt.Sprintf("%s (%s, sha256 %.16s…)", r.ID, strings.Join(r.Hardware, ","), r.Digest))
	}
	if len(names) > 0 {
		msg += ": " + strings.Join(names, "; ")
	}
	if e.More > 0 {
		msg += fmt.Sprintf("; and %d more", e.More)
	}
	return msg
}

func (e *RefError) Unwrap() error { return e.Err }

// quoteRef quotes a reference, at most 64 bytes of it (references come from
// operators and may be long).
func quoteRef(s string) string {
	if len(s) > 64 {
		return fmt.Sprintf("%q… (%d bytes)", s[:64], len(s))
	}
	return fmt.Sprintf("%q", s)
}

// Resolve returns the release ref names, or a *RefError.
func (c *Catalog) Resolve(ref string) (Release, error) {
	if ref == "" {
		return Release{}, &RefError{Ref: ref, Err: ErrInvalid, Why: "missing: give an ID, VERSION@DIGEST-PREFIX or VERSION"}
	}
	if r, ok := c.Release(ref); ok {
		return r, nil
	}
	version, prefix, hasPrefix := strings.Cut(ref, "@")
	prefix = strings.ToLower(prefix)
	if strings.Trim(prefix, "0123456789abcdef") != "" {
		return Release{}, &RefError{Ref: ref, Err: ErrInvalid, Why: "after @ comes a prefix of the image's SHA-256 in hex"}
	}
	var matches []Release
	sameVersion := c.Releases(Filter{Version: version})
	for _, r := range sameVersion {
		if strings.HasPrefix(r.Digest.String(), prefix) {
			matches = append(matches, r)
		}
	}
	switch {
	case len(matches) == 1:
		return matches[0], nil
	case len(matches) > 1:
		how := "name one with VERSION@DIGEST-PREFIX"
		if hasPrefix {
			how = "give more of the digest"
		}
		return Release{}, refError(ref, ErrAmbiguous, fmt.Sprintf("names %d releases (%s)", len(matches), how), matches)
	case len(sameVersion) > 0:
		return Release{}, refError(ref, ErrNotFound, fmt.Sprintf("no such release; the releases of version %s are", quoteRef(version)), sameVersion)
	}
	return Release{}, refError(ref, ErrNotFound, "no such release; the newest releases are", c.Releases(Filter{}))
}

func refError(ref string, err error, why string, rs []Release) *RefError {
	e := &RefError{Ref: ref, Err: err, Why: why}
	if len(rs) > MaxCandidates {
		e.More = len(rs) - MaxCandidates
		rs = rs[:MaxCandidates]
	}
	e.Candidates = rs
	return e
}
