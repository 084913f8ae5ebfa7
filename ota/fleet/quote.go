package fleet

import (
	"fmt"
	"strconv"
	"unicode/utf8"
)

// MaxQuote bounds the client input an error message quotes.
const MaxQuote = 64

// Quote returns s quoted for an error message: in full if short, else its
// first MaxQuote bytes (whole characters) and its length, so that an error
// never repeats unbounded input. Every message of otamq's domain that
// echoes client input (fleet validation, the admin API) goes through it.
func Quote(s string) string {
	if len(s) <= MaxQuote {
		return strconv.Quote(s)
	}
	n := MaxQuote
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return fmt.Sprintf("%s… (%d bytes)", strconv.Quote(s[:n]), len(s))
}
