package test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/otamq/otamq/httpapi"
	"github.com/otamq/otamq/ota/admin"
)

// apiClient talks to a broker's HTTP API with Go's HTTP client, as a
// script (bearer token) or as a browser (the session cookie and, for
// requests that change state, the CSRF token).
type apiClient struct {
	t      testing.TB
	base   string
	hc     *http.Client
	token  string
	cookie *http.Cookie
	csrf   string
}

// apiReply is the admin reply's shape.
type apiReply struct {
	OK     bool            `json:"ok"`
	Result json.RawMessage `json:"result"`
	Error  *admin.Error    `json:"error"`
	status int
	header http.Header
}

func (b *tb) apiBase() string { return "http://" + b.HTTPAddr() }

// anonymous returns a client without a session.
func (b *tb) anonymous() *apiClient {
	return &apiClient{t: b.t, base: b.apiBase(), hc: &http.Client{Timeout: 30 * time.Second}}
}

// apiLogin logs id in and returns a bearer client.
func (b *tb) apiLogin(id, password string) *apiClient {
	b.t.Helper()
	c := b.anonymous()
	c.login(id, password)
	return c
}

// session is POST /api/v1/login's result.
type sessionResult struct {
	Token     string    `json:"token"`
	Operator  string    `json:"operator"`
	Role      string    `json:"role"`
	Handle    string    `json:"handle"`
	Expires   time.Time `json:"expires"`
	CSRFToken string    `json:"csrf_token"`
}

// login logs in; it fails the test if refused.
func (c *apiClient) login(id, password string) sessionResult {
	c.t.Helper()
	r := c.do("POST", "/api/v1/login", map[string]any{"id": id, "password": password})
	if !r.OK || r.status != 200 {
		c.t.Fatalf("login %s: %d %+v", id, r.status, r.Error)
	}
	var s sessionResult
	r.into(c.t, &s)
	c.token, c.csrf = s.Token, s.CSRFToken
	for _, ck := range (&http.Response{Header: r.header}).Cookies() {
		if ck.Name == httpapi.CookieName {
			c.cookie = ck
		}
	}
	return s
}

// asBrowser returns a copy that presents the cookie instead of the token,
// with the CSRF token if withCSRF.
func (c *apiClient) asBrowser(withCSRF bool) *apiClient {
	d := *c
	d.token = ""
	if !withCSRF {
		d.csrf = ""
	}
	return &d
}

func (r apiReply) into(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Result, v); err != nil {
		t.Fatalf("decode result %s: %v", r.Result, err)
	}
}

// do sends a JSON body (nil: none) and decodes the reply.
func (c *apiClient) do(method, path string, body any) apiReply {
	c.t.Helper()
	var raw []byte
	ctype := ""
	if body != nil {
		switch v := body.(type) {
		case []byte:
			raw = v
		default:
			var err error
			if raw, err = json.Marshal(v); err != nil {
				c.t.Fatal(err)
			}
		}
		ctype = "application/json"
	}
	return c.raw(method, path, ctype, raw)
}

// raw sends body as ctype.
func (c *apiClient) raw(method, path, ctype string, body []byte) apiReply {
	c.t.Helper()
	req, err := http.NewRequest(method, c.base+path, bytes.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	return c.send(req)
}

func (c *apiClient) send(req *http.Request) apiReply {
	c.t.Helper()
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	} else if c.cookie != nil {
		req.AddCookie(&http.Cookie{Name: c.cookie.Name, Value: c.cookie.Value})
		if c.csrf != "" {
			req.Header.Set(httpapi.CSRFHeader, c.csrf)
		}
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatalf("%s %s: read: %v", req.Method, req.URL.Path, err)
	}
	r := apiReply{status: resp.StatusCode, header: resp.Header}
	if err := json.Unmarshal(b, &r); err != nil {
		c.t.Fatalf("%s %s: %d, not an admin reply: %q", req.Method, req.URL.Path, resp.StatusCode, b)
	}
	if r.OK != (resp.StatusCode == 200) {
		c.t.Fatalf("%s %s: status %d with ok=%v", req.Method, req.URL.Path, resp.StatusCode, r.OK)
	}
	return r
}

// ok sends and fails the test unless the reply is ok; it decodes the
// result into out (if not nil).
func (c *apiClient) ok(method, path string, body, out any) {
	c.t.Helper()
	r := c.do(method, path, body)
	if !r.OK {
		c.t.Fatalf("%s %s: %d %+v", method, path, r.status, r.Error)
	}
	if out != nil {
		r.into(c.t, out)
	}
}

// refused sends and checks the status and error code.
func (c *apiClient) refused(method, path string, body any, status int, code string) *admin.Error {
	c.t.Helper()
	r := c.do(method, path, body)
	checkRefused(c.t, method+" "+path, r, status, code)
	return r.Error
}

func checkRefused(t testing.TB, what string, r apiReply, status int, code string) {
	t.Helper()
	if r.OK || r.Error == nil || r.status != status || r.Error.Code != code || r.Error.Message == "" {
		t.Fatalf("%s: got %d %+v, want %d %s with a message", what, r.status, r.Error, status, code)
	}
}

// multipartUpload is the body of POST /api/v1/releases.
func multipartUpload(t testing.TB, parts ...[2]any) (string, []byte) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, p := range parts {
		w, err := mw.CreateFormFile(p[0].(string), p[0].(string)+".bin")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = w.Write(p[1].([]byte))
	}
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
	return mw.FormDataContentType(), buf.Bytes()
}

// uploadRelease uploads f through POST /api/v1/releases.
func (c *apiClient) uploadRelease(f firmware) apiReply {
	c.t.Helper()
	ct, body := multipartUpload(c.t, [2]any{"manifest", f.signed}, [2]any{"image", f.image})
	return c.raw("POST", "/api/v1/releases", ct, body)
}

// snapshot is the stored state the API shows an operator, for checking
// that a refused request changed none of it.
func (c *apiClient) snapshot() string {
	c.t.Helper()
	var sb strings.Builder
	for _, p := range []string{"/api/v1/devices", "/api/v1/operators", "/api/v1/keys", "/api/v1/releases", "/api/v1/uploads",
		"/api/v1/offers", "/api/v1/rollouts"} {
		r := c.do("GET", p, nil)
		if !r.OK {
			c.t.Fatalf("snapshot %s: %+v", p, r.Error)
		}
		fmt.Fprintf(&sb, "%s %s\n", p, r.Result)
	}
	return sb.String()
}

// tlsHTTPClient trusts p's CA.
func tlsHTTPClient(p *pki) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(p.cert)
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}
