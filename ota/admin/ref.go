package admin

import (
	"fmt"
	"strings"

	"github.com/otamq/otamq/ota/release"
)

// Release references. Wherever a request names a release (release/get,
// offer/create) it may give:
//
//   - its full ID, "VERSION@DIGEST8";
//   - "VERSION@" and any prefix of the image digest (hex) that only one
//     release of that version has;
//   - "VERSION" alone when only one release has that version.
//
// A reference that names no release, or more than one, is refused with the
// candidates (at most maxCandidates of them) in the message and in
// Error.Candidates.

// maxCandidates bounds the releases a refused reference lists.
const maxCandidates = 10

// resolveRelease returns the release ref names.
func (s *Service) resolveRelease(ref string) (release.Release, error) {
	if ref == "" {
		return release.Release{}, fail(CodeBadRequest, "release missing: give an ID, VERSION@DIGEST-PREFIX or VERSION")
	}
	if r, ok := s.cat.Release(ref); ok {
		return r, nil
	}
	version, prefix, hasPrefix := strings.Cut(ref, "@")
	prefix = strings.ToLower(prefix)
	if strings.Trim(prefix, "0123456789abcdef") != "" {
		return release.Release{}, fail(CodeBadRequest, "release %s: after @ comes a prefix of the image's SHA-256 in hex", quote(ref))
	}
	var matches []release.Release
	sameVersion := s.cat.Releases(release.Filter{Version: version})
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
		return release.Release{}, candidates(CodeBadRequest, matches,
			"release %s names %d releases (%s)", quote(ref), len(matches), how)
	case len(sameVersion) > 0:
		return release.Release{}, candidates(CodeNotFound, sameVersion,
			"no release %s; the releases of version %s are", quote(ref), quote(version))
	}
	return release.Release{}, candidates(CodeNotFound, s.cat.Releases(release.Filter{}),
		"no release %s; the newest releases are", quote(ref))
}

// candidates returns an error whose message ends with the first
// maxCandidates of rs.
func candidates(code string, rs []release.Release, format string, args ...any) *Error {
	e := fail(code, format, args...)
	if len(rs) == 0 {
		e.Message += " (none: there is no release yet)"
		return e
	}
	var names []string
	for i, r := range rs {
		if i == maxCandidates {
			break
		}
		e.Candidates = append(e.Candidates, r.ID)
		names = append(names, fmt.Sprintf("%s (%s, sha256 %.16s…)", r.ID, strings.Join(r.Hardware, ","), r.Digest))
	}
	e.Message += ": " + strings.Join(names, "; ")
	if len(rs) > maxCandidates {
		e.Message += fmt.Sprintf("; and %d more", len(rs)-maxCandidates)
	}
	return e
}
