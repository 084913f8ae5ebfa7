package httpapi

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"mime"
	"net/http"
	"time"

	"github.com/otamq/otamq/ota/admin"
	"github.com/otamq/otamq/ota/fleet"
)

// loginRequest is POST /api/v1/login's body.
type loginRequest struct {
	ID       string `json:"id"`
	Password string `json:"password"`
}

// sessionView is what login and GET /api/v1/session return.
type sessionView struct {
	// Token is returned by login only.
	Token     string     `json:"token,omitempty"`
	Operator  string     `json:"operator"`
	Role      fleet.Role `json:"role"`
	Handle    string     `json:"handle"`
	Expires   time.Time  `json:"expires"`
	CSRFToken string     `json:"csrf_token"`
}

// login checks an operator's or observer's password (admin.Login: the
// throttle of MQTT logins, the audit) and returns a session token, also
// set as the session cookie. Every refusal is answered after the same
// delay, so that its time does not tell an unknown ID from a wrong
// password.
func (a *API) login(w http.ResponseWriter, r *http.Request, _ *caller) {
	start := time.Now()
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/json" {
		// A cross-site form cannot send JSON without a preflight: no
		// login CSRF.
		writeError(w, &admin.Error{Code: codeMediaType, Message: "login takes a JSON body: {\"id\": …, \"password\": …}"})
		return
	}
	raw, aerr := readBody(w, r, 4096)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	var req loginRequest
	if err := decodeStrict(raw, &req); err != nil {
		writeError(w, &admin.Error{Code: admin.CodeBadRequest, Message: "login body: " + err.Error()})
		return
	}
	res, aerr := a.svc.Login(r.Context(), admin.LoginRequest{ID: req.ID, Password: req.Password, Remote: r.RemoteAddr})
	if aerr != nil {
		a.log.Info("http login refused", "id", fleet.Quote(req.ID), "remote", r.RemoteAddr, "code", aerr.Code)
		delay := a.o.RefusalDelay
		if a.o.Fleet != nil {
			delay = max(delay, a.o.Fleet.PasswordCheckTime()*5/4)
		}
		t := time.NewTimer(time.Until(start.Add(delay)))
		select {
		case <-t.C:
		case <-r.Context().Done():
		}
		t.Stop()
		writeError(w, aerr)
		return
	}
	s := res.Session
	http.SetCookie(w, &http.Cookie{
		Name: CookieName, Value: res.Token, Path: "/api/", Expires: s.Expires, MaxAge: int(time.Until(s.Expires).Seconds()),
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode,
	})
	writeResponse(w, admin.Response{OK: true, Result: sessionView{Token: res.Token, Operator: s.Operator, Role: res.Role,
		Handle: s.Handle, Expires: s.Expires, CSRFToken: s.CSRF}})
}

// logout ends the session the request presents, and clears the cookie.
func (a *API) logout(w http.ResponseWriter, r *http.Request, c *caller) {
	if aerr := a.svc.Logout(r.Context(), c.Caller, c.token); aerr != nil {
		writeError(w, aerr)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: "/api/", MaxAge: -1,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	writeResponse(w, admin.Response{OK: true, Result: map[string]any{"logged_out": c.session.Handle}})
}

// session tells who the request's session is, and its CSRF token (a
// console reloaded in the browser has only the cookie, which its script
// cannot read).
func (a *API) session(w http.ResponseWriter, _ *http.Request, c *caller) {
	s := c.session
	writeResponse(w, admin.Response{OK: true, Result: sessionView{Operator: c.ID, Role: c.Role, Handle: s.Handle,
		Expires: s.Expires, CSRFToken: s.CSRF}})
}

//go:embed openapi.yaml
var openapiYAML []byte

// OpenAPI returns the API's OpenAPI description.
func OpenAPI() []byte { return openapiYAML }

func (a *API) openapi(w http.ResponseWriter, _ *http.Request, _ *caller) {
	w.Header().Set("Content-Type", "application/yaml")
	_, _ = w.Write(openapiYAML)
}

var errTrailing = errors.New("data after the JSON object")

// decodeStrict decodes one JSON object into v: unknown fields, wrong
// types and trailing data are errors.
func decodeStrict(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errTrailing
	}
	return nil
}
