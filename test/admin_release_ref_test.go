package test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/otamq/otamq/cmd/otactl/rpc"
)

// TestReleaseReferences: a release may be named by its ID, VERSION@ and a
// unique digest prefix, or VERSION alone when only one release has it;
// a reference that names none or several lists the candidates. It holds for
// the admin API and for otactl.
func TestReleaseReferences(t *testing.T) {
	b := startBroker(t)
	key, pub := newKey(t)
	b.trustKey(pub)
	v2a := b.release(makeFirmware(t, key, "2.0.0", []string{"esp32-v2"}, 3000))
	v2b := b.release(makeFirmware(t, key, "2.0.0", []string{"esp32-v3"}, 3000))
	v3 := b.release(makeFirmware(t, key, "3.0.0", []string{"esp32-v2"}, 3000))
	// The shortest prefix that tells the two 2.0.0 releases apart.
	da, db := v2a.Digest.String(), v2b.Digest.String()
	n := 1
	for da[:n] == db[:n] {
		n++
	}
	get := func(ref string) (string, error) {
		var res struct {
			Release struct{ ID string } `json:"release"`
		}
		err := b.admin().Call(context.Background(), "release/get", map[string]any{"id": ref}, &res)
		return res.Release.ID, err
	}
	for ref, want := range map[string]string{
		v3.ID:                                v3.ID,
		"3.0.0":                              v3.ID,
		"3.0.0@":                             v3.ID,
		"2.0.0@" + da[:n]:                    v2a.ID,
		"2.0.0@" + db[:n]:                    v2b.ID,
		"2.0.0@" + strings.ToUpper(db[:n+2]): v2b.ID,
		"2.0.0@" + da:                        v2a.ID,
		v2b.ID:                               v2b.ID,
	} {
		if got, err := get(ref); err != nil || got != want {
			t.Errorf("%s: %s, %v; want %s", ref, got, err, want)
		}
	}
	for ref, want := range map[string]struct {
		code       string
		candidates []string
	}{
		"2.0.0":                            {"bad_request", []string{v2a.ID, v2b.ID}},
		"2.0.0@":                           {"bad_request", []string{v2a.ID, v2b.ID}},
		"2.0.0@" + da[:n-1]:                {"bad_request", []string{v2a.ID, v2b.ID}},
		"2.0.0@zz":                         {"bad_request", nil},
		"3.0.0@" + strings.Repeat("0", 64): {"not_found", []string{v3.ID}},
		"9.9.9":                            {"not_found", []string{v3.ID, v2a.ID, v2b.ID}},
	} {
		_, err := get(ref)
		var re *rpc.RemoteError
		if !errors.As(err, &re) || re.Code != want.code {
			t.Errorf("%s: %v, want %s", ref, err, want.code)
			continue
		}
		for _, c := range want.candidates {
			if !strings.Contains(re.Message, c) || !strings.Contains(strings.Join(re.Candidates, " "), c) {
				t.Errorf("%s: the refusal does not name %s: %s %v", ref, c, re.Message, re.Candidates)
			}
		}
	}
	// offer/create takes the same references; so does otactl.
	b.register("d1", "device", "", map[string]any{"hardware": "esp32-v3"})
	out, errOut, code := b.otactl("", "offer", "create", "2.0.0@"+db[:n], "d1")
	if code != 0 || !strings.Contains(out, "d1") {
		t.Fatalf("offer create by prefix: exit %d\n%s%s", code, out, errOut)
	}
	if of, ok := b.Delivery().Current("d1"); !ok || of.Release != v2b.ID {
		t.Fatalf("d1 was offered %+v", of)
	}
	out, errOut, code = b.otactl("", "release", "get", "3.0.0")
	if code != 0 || !strings.Contains(out, v3.ID) {
		t.Fatalf("release get VERSION: exit %d\n%s%s", code, out, errOut)
	}
	_, errOut, code = b.otactl("", "release", "get", "2.0.0")
	if code != 1 || !strings.Contains(errOut, v2a.ID) || !strings.Contains(errOut, v2b.ID) {
		t.Fatalf("ambiguous release get: exit %d\n%s", code, errOut)
	}
}
