// Package console is the operators' web console: a single page of plain
// HTML, CSS and JavaScript modules embedded in the binary, served by the
// broker's HTTP listener at / beside /api/v1. It holds no logic of its
// own on the server: the page talks only to the HTTP API (httpapi), with
// the session cookie and the CSRF header the API defines, and fetches
// nothing from anywhere else.
package console

import (
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strings"
)

//go:embed static
var static embed.FS

// csp allows the page's own scripts, styles and API only: no inline
// script, nothing from another origin, no framing.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Files returns the console's files (index.html, *.js, *.css), for tests.
func Files() fs.FS {
	sub, _ := fs.Sub(static, "static")
	return sub
}

// Handler serves the console: index.html at /, its assets by name, 404
// for anything else (the page routes with the URL's fragment, so no other
// path is the page).
func Handler() http.Handler {
	files := Files()
	fsrv := http.FileServerFS(files)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "the console takes GET", http.StatusMethodNotAllowed)
			return
		}
		name := strings.TrimPrefix(path.Clean(r.URL.Path), "/")
		if name == "" {
			name = "index.html"
		}
		if name == "index.html" && r.URL.Path != "/" {
			// FileServer redirects /index.html to /; the page is /.
			http.Redirect(w, r, "/", http.StatusMovedPermanently)
			return
		}
		if st, err := fs.Stat(files, name); err != nil || st.IsDir() {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		// A new binary serves new files: revalidate each time.
		h.Set("Cache-Control", "no-cache")
		if name == "index.html" {
			r2 := r.Clone(r.Context())
			r2.URL.Path = "/"
			fsrv.ServeHTTP(w, r2)
			return
		}
		fsrv.ServeHTTP(w, r)
	})
}
