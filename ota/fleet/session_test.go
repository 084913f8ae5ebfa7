package fleet

import (
	"strings"
	"testing"
)

func TestSplitSession(t *testing.T) {
	for id, want := range map[string]string{
		"alice~1":       "alice",
		"alice~a.B-c_9": "alice",
		"alice~" + strings.Repeat("z", MaxSessionSuffixLen): "alice",
	} {
		if got, ok := SplitSession(id); !ok || got != want {
			t.Errorf("SplitSession(%q) = %q, %v", id, got, ok)
		}
	}
	for _, id := range []string{"alice", "alice~", "~x", "alice~a~b", "alice~a+b", "alice~a/b", "admin~x", "a b~x",
		"alice~" + strings.Repeat("z", MaxSessionSuffixLen+1)} {
		if got, ok := SplitSession(id); ok {
			t.Errorf("SplitSession(%q) = %q, true", id, got)
		}
	}
}
