package admin

import (
	"errors"

	"github.com/otamq/otamq/ota/release"
)

// resolveRelease returns the release ref names (release.Catalog.Resolve),
// or a reply error with the candidates.
func (s *Service) resolveRelease(ref string) (release.Release, error) {
	r, err := s.cat.Resolve(ref)
	if err == nil {
		return r, nil
	}
	return release.Release{}, refFailure(err)
}

// refFailure maps a release reference error to a reply error.
func refFailure(err error) *Error {
	var re *release.RefError
	if !errors.As(err, &re) {
		return classify(err)
	}
	code := CodeNotFound
	if !errors.Is(re.Err, release.ErrNotFound) {
		code = CodeBadRequest
	}
	e := &Error{Code: code, Message: re.Error()}
	for _, r := range re.Candidates {
		e.Candidates = append(e.Candidates, r.ID)
	}
	return e
}
