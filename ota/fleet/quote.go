package fleet

import (
	"fmt"
	"strconv"
	"unicode/utf8"
)

// maxQuote bounds the operator input a validation error quotes.
const maxQuote = 64

// quote returns s quoted for an error message: in full if short, else its
// first maxQuote bytes (whole characters) and its length, so that an error
// never repeats unbounded input.
func quote(s string) string {
	if len(s) <= maxQuote {
		return strconv.Quote(s)
	}
	n := maxQuote
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return fmt.Sprintf("%s… (%d bytes)", strconv.Quote(s[:n]), len(s))
}
