package httpapi

import (
	"net/http"

	"github.com/otamq/otamq/ota/admin"
)

// statusOf maps the admin error codes to HTTP status codes (docs/API.md has
// the table). A code missing here is a 500: TestEveryCodeHasAStatus keeps
// the table complete.
var statusOf = map[string]int{
	admin.CodeBadRequest:     http.StatusBadRequest,
	admin.CodeUnauthorized:   http.StatusUnauthorized,
	admin.CodeForbidden:      http.StatusForbidden,
	admin.CodeNotFound:       http.StatusNotFound,
	admin.CodeUnknownVerb:    http.StatusNotFound,
	admin.CodeExists:         http.StatusConflict,
	admin.CodeConflict:       http.StatusConflict,
	admin.CodeWrongOffset:    http.StatusConflict,
	admin.CodeTooLarge:       http.StatusRequestEntityTooLarge,
	admin.CodeRateLimited:    http.StatusTooManyRequests,
	admin.CodeBadManifest:    http.StatusBadRequest,
	admin.CodeUnknownKey:     http.StatusUnprocessableEntity,
	admin.CodeBadSignature:   http.StatusUnprocessableEntity,
	admin.CodeKeyRevoked:     http.StatusUnprocessableEntity,
	admin.CodeDigestMismatch: http.StatusUnprocessableEntity,
	admin.CodeSizeMismatch:   http.StatusUnprocessableEntity,
	admin.CodeUnavailable:    http.StatusServiceUnavailable,
	admin.CodeInternal:       http.StatusInternalServerError,
	codeMethod:               http.StatusMethodNotAllowed,
	codeMediaType:            http.StatusUnsupportedMediaType,
}

// Codes of this adapter's own refusals, besides the admin layer's.
const (
	// codeMethod: the path exists, the method does not.
	codeMethod = "method_not_allowed"
	// codeMediaType: a body of a content type the route does not take.
	codeMediaType = "unsupported_media_type"
)

// httpStatus returns the status of an error code.
func httpStatus(code string) int {
	if s, ok := statusOf[code]; ok {
		return s
	}
	return http.StatusInternalServerError
}
