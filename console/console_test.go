package console

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, method, path string) *http.Response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec.Result()
}

// TestHandler: the page at /, its assets by name with the security
// headers, and nothing else.
func TestHandler(t *testing.T) {
	h := Handler()
	r := get(t, h, "GET", "/")
	body, _ := io.ReadAll(r.Body)
	if r.StatusCode != 200 || !strings.HasPrefix(r.Header.Get("Content-Type"), "text/html") ||
		!strings.Contains(string(body), `<script type="module" src="app.js">`) {
		t.Fatalf("GET /: %d %s\n%s", r.StatusCode, r.Header.Get("Content-Type"), body)
	}
	for _, k := range []string{"Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options", "Cache-Control"} {
		if r.Header.Get(k) == "" {
			t.Errorf("GET / has no %s", k)
		}
	}
	if csp := r.Header.Get("Content-Security-Policy"); strings.Contains(csp, "unsafe") || !strings.Contains(csp, "connect-src 'self'") {
		t.Errorf("CSP %q", csp)
	}
	err := fs.WalkDir(Files(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || p == "index.html" {
			return err
		}
		r := get(t, h, "GET", "/"+p)
		want := map[string]string{".js": "text/javascript", ".css": "text/css"}[p[strings.LastIndex(p, "."):]]
		if r.StatusCode != 200 || want == "" || !strings.HasPrefix(r.Header.Get("Content-Type"), want) {
			t.Errorf("GET /%s: %d %s, want 200 %s", p, r.StatusCode, r.Header.Get("Content-Type"), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		method, path string
		status       int
	}{
		{"GET", "/nothing.js", 404},
		{"GET", "/api/v2/devices", 404},
		{"GET", "/static/app.js", 404},
		{"GET", "/../console.go", 404},
		{"GET", "/index.html", 301},
		{"POST", "/", 405},
		{"DELETE", "/app.js", 405},
	} {
		if r := get(t, h, c.method, c.path); r.StatusCode != c.status {
			t.Errorf("%s %s: %d, want %d", c.method, c.path, r.StatusCode, c.status)
		}
	}
}

// TestNoExternalFetch: the assets name no other origin (the page fetches
// nothing from anywhere but the broker), and every module they import is
// embedded.
func TestNoExternalFetch(t *testing.T) {
	url := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}`)
	imp := regexp.MustCompile(`(?m)^import .* from "\./([^"]+)";$`)
	files := Files()
	err := fs.WalkDir(files, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(files, p)
		if err != nil {
			return err
		}
		// The SVG namespace is a name, not a fetch.
		text := strings.ReplaceAll(string(b), `"http://www.w3.org/2000/svg"`, "")
		if m := url.FindString(text); m != "" {
			t.Errorf("%s names another origin: %s", p, m)
		}
		for _, m := range imp.FindAllStringSubmatch(text, -1) {
			if _, err := fs.Stat(files, m[1]); err != nil {
				t.Errorf("%s imports %s, which is not embedded", p, m[1])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
