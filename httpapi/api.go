package httpapi

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/otamq/otamq/ota/admin"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/login"
)

// Defaults of Options.
const (
	DefaultMaxStreams     = 64
	DefaultMaxInflight    = 64
	DefaultStreamQueue    = 256
	DefaultHeartbeat      = 15 * time.Second
	DefaultRequestTimeout = 30 * time.Second
	DefaultUploadTimeout  = 30 * time.Minute
	DefaultRefusalDelay   = 200 * time.Millisecond
)

// CookieName is the session cookie's name.
const CookieName = "otamq_session"

// CSRFHeader carries a cookie session's CSRF token.
const CSRFHeader = "X-CSRF-Token"

// Recorder counts API requests (the broker's Prometheus metrics; the same
// counters as the MQTT adapter's).
type Recorder interface {
	AdminRequest(action, result string)
	UploadRejected(reason string)
}

type nopRecorder struct{}

func (nopRecorder) AdminRequest(string, string) {}
func (nopRecorder) UploadRejected(string)       {}

// Options configure New. Service is required.
type Options struct {
	Service *admin.Service
	// Fleet tells how long a password check takes now, so that every
	// refused login is answered after the same delay. Default: the delay
	// alone.
	Fleet    *fleet.Registry
	Recorder Recorder
	Logger   *slog.Logger
	// MaxImageSize bounds an upload's image (the catalog's bound; the
	// body of a multipart upload may be this plus the manifest).
	MaxImageSize uint64
	// MaxStreams bounds the open event streams; more are refused 503.
	// Default DefaultMaxStreams.
	MaxStreams int
	// MaxInflight bounds the requests under way at once (event streams
	// apart, MaxStreams bounds those); more are refused 503 at once.
	// Default DefaultMaxInflight.
	MaxInflight int
	// StreamQueue is how many events may wait for one stream; a stream
	// further behind is ended. Default DefaultStreamQueue.
	StreamQueue int
	// Heartbeat is the period of the comment lines that keep a stream
	// open through proxies. Default DefaultHeartbeat.
	Heartbeat time.Duration
	// RequestTimeout bounds reading a request's body and writing its
	// response (each write of an event stream). Default
	// DefaultRequestTimeout.
	RequestTimeout time.Duration
	// UploadTimeout bounds a multipart upload. Default
	// DefaultUploadTimeout.
	UploadTimeout time.Duration
	// RefusalDelay is the least time before a refused login is answered.
	// Default DefaultRefusalDelay.
	RefusalDelay time.Duration
}

// API serves /api/v1/. Its methods are safe for concurrent use.
type API struct {
	o    Options
	svc  *admin.Service
	log  *slog.Logger
	rec  Recorder
	hub  *hub
	mux  *http.ServeMux
	acts []string // admin actions, sorted, for bounded metric labels

	// mu guards closed; inflight counts the requests under way, which
	// Close waits for.
	mu       sync.RWMutex
	closed   bool
	inflight sync.WaitGroup
	stop     chan struct{} // closed by Close: event streams end
	// slots bounds the requests under way, event streams apart.
	slots chan struct{}
}

// New returns the API and starts its event hub; Close stops it. The API
// must be subscribed to the event feed (OnEvent) before events flow.
func New(o Options) *API {
	if o.Recorder == nil {
		o.Recorder = nopRecorder{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MaxStreams <= 0 {
		o.MaxStreams = DefaultMaxStreams
	}
	if o.MaxInflight <= 0 {
		o.MaxInflight = DefaultMaxInflight
	}
	if o.StreamQueue <= 0 {
		o.StreamQueue = DefaultStreamQueue
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = DefaultHeartbeat
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.UploadTimeout <= 0 {
		o.UploadTimeout = DefaultUploadTimeout
	}
	if o.RefusalDelay <= 0 {
		o.RefusalDelay = DefaultRefusalDelay
	}
	a := &API{o: o, svc: o.Service, log: o.Logger, rec: o.Recorder, acts: o.Service.Actions(), stop: make(chan struct{}),
		slots: make(chan struct{}, o.MaxInflight)}
	a.hub = newHub(o.MaxStreams, o.StreamQueue, o.Logger)
	a.mux = a.buildMux()
	return a
}

// Handler returns the handler of /api/v1/ (the broker mounts it beside
// /metrics and /healthz).
func (a *API) Handler() http.Handler { return a.mux }

// Close refuses new requests (503), ends the event streams and waits for
// the requests under way.
func (a *API) Close() {
	a.mu.Lock()
	if !a.closed {
		a.closed = true
		close(a.stop)
	}
	a.mu.Unlock()
	a.inflight.Wait()
	a.hub.close()
}

// caller is an authenticated request's identity.
type caller struct {
	admin.Caller
	session login.Session
	token   string
	cookie  bool
	ended   <-chan struct{}
}

func (a *API) buildMux() *http.ServeMux {
	mux := http.NewServeMux()
	byPath := map[string][]*route{}
	var paths []string
	for i := range routes {
		r := &routes[i]
		if _, ok := byPath[r.path]; !ok {
			paths = append(paths, r.path)
		}
		byPath[r.path] = append(byPath[r.path], r)
	}
	for _, p := range paths {
		rs := byPath[p]
		mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) { a.serve(w, r, rs) })
	}
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) { a.serve(w, r, nil) })
	return mux
}

// serve authenticates r and runs the route of its method among rs.
func (a *API) serve(w http.ResponseWriter, r *http.Request, rs []*route) {
	a.mu.RLock()
	if a.closed {
		a.mu.RUnlock()
		writeError(w, &admin.Error{Code: admin.CodeUnavailable, Message: "the broker is stopping"})
		return
	}
	a.inflight.Add(1)
	a.mu.RUnlock()
	defer a.inflight.Done()

	var rt *route
	for _, x := range rs {
		if x.method == r.Method || r.Method == http.MethodHead && x.method == http.MethodGet {
			rt = x
		}
	}
	if rt != nil && rt.public {
		a.deadlines(w, rt)
		rt.own(a, w, r, nil)
		return
	}
	c, aerr := a.authenticate(r)
	if aerr != nil {
		if aerr.Code == admin.CodeUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer realm="otamq"`)
		}
		refuseUnread(w, r)
		writeError(w, aerr)
		return
	}
	switch {
	case rs == nil:
		writeError(w, &admin.Error{Code: admin.CodeNotFound, Message: fmt.Sprintf("no resource %s", fleet.Quote(r.URL.Path))})
		return
	case rt == nil:
		var allow []string
		for _, x := range rs {
			allow = append(allow, x.method)
		}
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeError(w, &admin.Error{Code: codeMethod, Message: fmt.Sprintf("%s takes %s, not %s", r.URL.Path, strings.Join(allow, ", "), fleet.Quote(r.Method))})
		return
	}
	if c.cookie && !safeMethod(r.Method) {
		got := r.Header.Get(CSRFHeader)
		if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(c.session.CSRF)) != 1 {
			writeError(w, &admin.Error{Code: admin.CodeForbidden,
				Message: "a request with the session cookie that changes state needs the session's CSRF token in the " + CSRFHeader + " header"})
			return
		}
	}
	// Slots are taken by authenticated requests only (a flood of
	// anonymous ones or of logins takes none: logins are bounded by the
	// password-check throttle), event streams apart.
	if rt.path != "/api/v1/events" {
		select {
		case a.slots <- struct{}{}:
			defer func() { <-a.slots }()
		default:
			refuseUnread(w, r)
			writeError(w, &admin.Error{Code: admin.CodeUnavailable, Message: fmt.Sprintf("the broker has %d HTTP API requests under way; try again", cap(a.slots))})
			return
		}
	}
	a.deadlines(w, rt)
	if rt.own != nil {
		rt.own(a, w, r, c)
		return
	}
	body, aerr := requestBody(w, r, rt)
	if aerr != nil {
		a.rec.AdminRequest(a.label(rt.action), aerr.Code)
		writeError(w, aerr)
		return
	}
	res, verb, _ := strings.Cut(rt.action, "/")
	a.run(w, r, admin.Request{Caller: c.Caller, Resource: res, Verb: verb, Body: body})
}

// run hands req to the admin service and writes its reply.
func (a *API) run(w http.ResponseWriter, r *http.Request, req admin.Request) admin.Response {
	resp, code := a.svc.Handle(r.Context(), req)
	result := "ok"
	if code != "" {
		result = code
	}
	a.rec.AdminRequest(a.label(req.Action()), result)
	writeResponse(w, resp)
	return resp
}

// deadlines bounds reading r's body and writing the response; an upload
// has longer. An event stream has neither: it sets a deadline for each
// write, and a read deadline would end it (net/http cancels a request's
// context when the connection's background read fails).
func (a *API) deadlines(w http.ResponseWriter, rt *route) {
	if rt.path == "/api/v1/events" {
		return
	}
	rc := http.NewResponseController(w)
	d := a.o.RequestTimeout
	if rt.path == "/api/v1/releases" && rt.method == http.MethodPost {
		d = a.o.UploadTimeout
	}
	_ = rc.SetReadDeadline(time.Now().Add(d))
	_ = rc.SetWriteDeadline(time.Now().Add(d))
}

func safeMethod(m string) bool { return m == http.MethodGet || m == http.MethodHead }

// label bounds the action label of the metric to known actions.
func (a *API) label(action string) string {
	if _, ok := slices.BinarySearch(a.acts, action); ok {
		return action
	}
	return "unknown"
}

// authenticate returns the session r presents: a bearer token, or else
// the session cookie.
func (a *API) authenticate(r *http.Request) (*caller, *admin.Error) {
	c := &caller{}
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
			return nil, &admin.Error{Code: admin.CodeUnauthorized, Message: "Authorization: want Bearer TOKEN (POST /api/v1/login returns one)"}
		}
		c.token = strings.TrimSpace(tok)
	} else if ck, err := r.Cookie(CookieName); err == nil && ck.Value != "" {
		c.token, c.cookie = ck.Value, true
	} else {
		return nil, &admin.Error{Code: admin.CodeUnauthorized, Message: "log in first: POST /api/v1/login, then send Authorization: Bearer TOKEN (or the session cookie)"}
	}
	cl, sess, ended, aerr := a.svc.SessionCaller(c.token, r.RemoteAddr)
	if aerr != nil {
		return nil, aerr
	}
	c.Caller, c.session, c.ended = cl, sess, ended
	return c, nil
}

// requestBody builds the JSON body of an admin verb from r: its JSON body
// (or YAML spec), its path wildcards and its query parameters, each under
// its own name. The admin layer decodes the result strictly.
func requestBody(w http.ResponseWriter, r *http.Request, rt *route) ([]byte, *admin.Error) {
	raw, aerr := readBody(w, r, admin.MaxBodySize)
	if aerr != nil {
		return nil, aerr
	}
	fields := map[string]json.RawMessage{}
	if len(bytes.TrimSpace(raw)) > 0 {
		ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		switch {
		case ct == "application/json":
			if err := json.Unmarshal(raw, &fields); err != nil || fields == nil {
				msg := "want a JSON object"
				if err != nil {
					msg = jsonMessage(err)
				}
				return nil, &admin.Error{Code: admin.CodeBadRequest, Message: "request body: " + msg}
			}
		case rt.yaml && (ct == "application/yaml" || ct == "application/x-yaml" || ct == "text/yaml"):
			if !utf8.Valid(raw) {
				return nil, &admin.Error{Code: admin.CodeBadRequest, Message: "request body: the YAML is not UTF-8"}
			}
			b, _ := json.Marshal(string(raw))
			fields["yaml"] = b
		default:
			want := "application/json"
			if rt.yaml {
				want += " or application/yaml"
			}
			return nil, &admin.Error{Code: codeMediaType, Message: fmt.Sprintf("request body of type %s: want %s", fleet.Quote(ct), want)}
		}
	}
	for _, name := range wildcards(rt.path) {
		pv := r.PathValue(name)
		if !utf8.ValidString(pv) {
			return nil, &admin.Error{Code: admin.CodeBadRequest, Message: fmt.Sprintf("%s in the path: not UTF-8", name)}
		}
		v, _ := json.Marshal(pv)
		if old, ok := fields[name]; ok && !bytes.Equal(bytes.TrimSpace(old), v) {
			return nil, &admin.Error{Code: admin.CodeBadRequest, Message: fmt.Sprintf("%s: given in the path and, differently, in the body", name)}
		}
		fields[name] = v
	}
	query := r.URL.Query()
	if len(query) > 0 && len(rt.query) == 0 {
		return nil, &admin.Error{Code: admin.CodeBadRequest, Message: fmt.Sprintf("%s %s takes no query parameters", rt.method, rt.path)}
	}
	for name, vs := range query {
		i := slices.IndexFunc(rt.query, func(p param) bool { return p.name == name })
		if i < 0 {
			names := make([]string, len(rt.query))
			for j, p := range rt.query {
				names[j] = p.name
			}
			return nil, &admin.Error{Code: admin.CodeBadRequest, Message: fmt.Sprintf("unknown query parameter %s; this list takes %s", fleet.Quote(name), strings.Join(names, ", "))}
		}
		if len(vs) != 1 {
			return nil, &admin.Error{Code: admin.CodeBadRequest, Message: fmt.Sprintf("query parameter %s given %d times", name, len(vs))}
		}
		if _, ok := fields[name]; ok {
			return nil, &admin.Error{Code: admin.CodeBadRequest, Message: fmt.Sprintf("%s: given twice", name)}
		}
		if !utf8.ValidString(vs[0]) {
			return nil, &admin.Error{Code: admin.CodeBadRequest, Message: fmt.Sprintf("query parameter %s: not UTF-8", name)}
		}
		var v any = vs[0]
		switch rt.query[i].typ {
		case pInt:
			n, err := strconv.ParseInt(vs[0], 10, 64)
			if err != nil {
				return nil, &admin.Error{Code: admin.CodeBadRequest, Message: fmt.Sprintf("query parameter %s: %s is not an integer", name, fleet.Quote(vs[0]))}
			}
			v = n
		case pBool:
			b, err := strconv.ParseBool(vs[0])
			if err != nil {
				return nil, &admin.Error{Code: admin.CodeBadRequest, Message: fmt.Sprintf("query parameter %s: %s is not true or false", name, fleet.Quote(vs[0]))}
			}
			v = b
		}
		fields[name], _ = json.Marshal(v)
	}
	if len(fields) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(fields)
	if err != nil {
		return nil, &admin.Error{Code: admin.CodeInternal, Message: err.Error()}
	}
	return b, nil
}

// jsonMessage is a JSON syntax error's message, bounded.
func jsonMessage(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("%s (at byte %d)", se.Error(), se.Offset)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return "want a JSON object"
	}
	msg := err.Error()
	if len(msg) > 256 {
		msg = msg[:256] + "…"
	}
	return msg
}

// readBody reads r's body, up to limit bytes (more: too_large, 413).
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, *admin.Error) {
	if r.ContentLength > limit {
		return nil, tooLarge(r.ContentLength, limit)
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return nil, tooLarge(0, limit)
	case err != nil:
		return nil, &admin.Error{Code: admin.CodeBadRequest, Message: fmt.Sprintf("request body: %v", err)}
	}
	return b, nil
}

func tooLarge(size, limit int64) *admin.Error {
	e := &admin.Error{Code: admin.CodeTooLarge, Limit: int(limit), Size: int(size)}
	if size > 0 {
		e.Message = fmt.Sprintf("request body is %d bytes, limit %d", size, limit)
	} else {
		e.Message = fmt.Sprintf("request body is over the limit of %d bytes", limit)
	}
	return e
}

// writeResponse writes an admin reply with the status of its error code.
func writeResponse(w http.ResponseWriter, resp admin.Response) {
	status := http.StatusOK
	if !resp.OK && resp.Error != nil {
		status = httpStatus(resp.Error.Code)
		if resp.Error.RetryAfterMS > 0 {
			w.Header().Set("Retry-After", strconv.FormatInt((resp.Error.RetryAfterMS+999)/1000, 10))
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(admin.Encode(resp))
}

func writeError(w http.ResponseWriter, e *admin.Error) { writeResponse(w, admin.Response{Error: e}) }

// refuseUnread makes the refusal of r, whose body is not read, close the
// connection. Otherwise net/http reads up to 256 KiB of the body before it
// sends the reply: an upload refused at once would learn it only when that
// much of it was sent, or never if it stalls.
func refuseUnread(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength != 0 {
		w.Header().Set("Connection", "close")
	}
}
