// Package admin is the operators' API: it decodes a request (resource, verb
// and a JSON body), checks the caller's role, runs it against the domain,
// records it in the audit log and returns the reply that docs/OPERATORS.md ("The admin API")
// defines: {"ok": true, "result": …} or {"ok": false, "error": {"code": …,
// "message": …}}.
//
// A request that changes state commits its change and its audit record in
// one store transaction, and Handle returns only after that transaction is
// durable: the reply is never ahead of the disk. A refused request changes
// nothing but the audit log, which records the refusal.
//
// The package knows nothing of MQTT; hooks/admin carries requests in and
// replies out.
package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"time"

	"github.com/otamq/otamq/ota/audit"
	"github.com/otamq/otamq/ota/delivery"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/release"
	"github.com/otamq/otamq/ota/store"
)

// MaxBodySize bounds a JSON request body.
const MaxBodySize = 64 * 1024

// Error codes of a reply.
const (
	CodeBadRequest  = "bad_request"
	CodeNotFound    = "not_found"
	CodeExists      = "exists"
	CodeForbidden   = "forbidden"
	CodeUnknownVerb = "unknown_verb"
	CodeTooLarge    = "too_large"
	CodeUnavailable = "unavailable"
	CodeInternal    = "internal"
)

// Caller is who sent a request.
type Caller struct {
	ID     string
	Role   fleet.Role
	Remote string
}

// Request is one operator request.
type Request struct {
	Caller   Caller
	Resource string
	Verb     string
	Body     []byte
}

// Action returns "resource/verb".
func (r *Request) Action() string { return r.Resource + "/" + r.Verb }

// Response is the reply to a request.
type Response struct {
	OK     bool   `json:"ok"`
	Result any    `json:"result,omitempty"`
	Error  *Error `json:"error,omitempty"`
}

// Error is a refused request's reason.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func fail(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Disconnector disconnects a client, e.g. one whose credentials were just
// revoked. It must not block.
type Disconnector interface {
	Disconnect(id string)
}

// Options configure New. The zero value means all defaults.
type Options struct {
	Logger *slog.Logger
	Now    func() time.Time
	// Disconnector is told about revoked clients. Default: nobody.
	Disconnector Disconnector
	// Catalog and Delivery enable the key, release, offer and command
	// verbs. Default: those verbs do not exist.
	Catalog  *release.Catalog
	Delivery *delivery.Service
}

// Service handles admin requests. Its methods are safe for concurrent use.
type Service struct {
	db       *store.DB
	fleet    *fleet.Registry
	log      *slog.Logger
	now      func() time.Time
	kick     Disconnector
	cat      *release.Catalog
	dlv      *delivery.Service
	handlers map[string]handler
}

// handler runs one verb. A handler that changes state does so through
// call.commit, which adds the audit record to the same transaction.
type handler struct {
	// readOnly handlers are open to observers and run outside a write
	// transaction.
	readOnly bool
	// binary handlers take a CBOR body (release/upload) of up to
	// maxUploadBody bytes instead of JSON.
	binary bool
	run    func(ctx context.Context, s *Service, c *call) (any, error)
}

// call is one request in flight.
type call struct {
	req    *Request
	target string
	args   any // the decoded request, for the audit record (secrets removed)
	// commit runs fn and the audit record in one durable transaction.
	commit    func(fn func(tx *store.Tx) error) error
	committed bool     // commit wrote the change and the audit record
	after     []func() // run after a successful reply is decided
}

type nopDisconnector struct{}

func (nopDisconnector) Disconnect(string) {}

// New returns a service over db and reg.
func New(db *store.DB, reg *fleet.Registry, opts *Options) *Service {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Disconnector == nil {
		o.Disconnector = nopDisconnector{}
	}
	s := &Service{db: db, fleet: reg, log: o.Logger, now: o.Now, kick: o.Disconnector, cat: o.Catalog, dlv: o.Delivery}
	s.handlers = map[string]handler{
		"device/register": {run: deviceRegister},
		"device/get":      {readOnly: true, run: deviceGet},
		"device/list":     {readOnly: true, run: deviceList},
		"device/update":   {run: deviceUpdate},
		"device/revoke":   {run: deviceRevoke},
		"operator/add":    {run: operatorAdd},
		"operator/list":   {readOnly: true, run: operatorList},
		"operator/update": {run: operatorUpdate},
		"operator/revoke": {run: operatorRevoke},
		"audit/list":      {readOnly: true, run: auditList},
		"verbs/list":      {readOnly: true, run: verbsList},
	}
	for a, h := range s.releaseHandlers() {
		s.handlers[a] = h
	}
	return s
}

// Actions returns every "resource/verb" the service knows, sorted.
func (s *Service) Actions() []string {
	out := make([]string, 0, len(s.handlers))
	for a := range s.handlers {
		out = append(out, a)
	}
	sort.Strings(out)
	return out
}

// ReadOnly reports whether action exists and is open to observers.
func (s *Service) ReadOnly(action string) bool {
	h, ok := s.handlers[action]
	return ok && h.readOnly
}

// Handle runs req and returns its reply once everything it changed, and its
// audit record, are durable. The second result is the error code ("" on
// success), for metrics.
func (s *Service) Handle(ctx context.Context, req Request) (Response, string) {
	c := &call{req: &req}
	result, err := s.handle(ctx, c)
	if err == nil && !c.committed {
		// A read (or a request that changed no state): its audit record
		// alone. If even that cannot be written the request fails, because
		// every request must be on the record.
		if err = s.db.Update(ctx, func(tx *store.Tx) error { return s.appendAudit(tx, c, nil) }); err != nil {
			s.log.Error("audit write failed", "action", req.Action(), "actor", req.Caller.ID, "err", err)
			err = fail(CodeUnavailable, "audit log unavailable: %v", err)
		}
	}
	if err != nil {
		aerr, ok := err.(*Error)
		if !ok {
			aerr = classify(err)
		}
		// The refused request changed nothing; only its audit record is
		// written.
		if werr := s.db.Update(ctx, func(tx *store.Tx) error { return s.appendAudit(tx, c, aerr) }); werr != nil {
			s.log.Error("audit write failed", "action", req.Action(), "actor", req.Caller.ID, "err", werr)
		}
		return Response{OK: false, Error: aerr}, aerr.Code
	}
	for _, f := range c.after {
		f()
	}
	return Response{OK: true, Result: result}, ""
}

// appendAudit writes the audit record of c, with its error if it failed.
func (s *Service) appendAudit(tx *store.Tx, c *call, aerr *Error) error {
	req := c.req
	rec := audit.Record{
		Time: s.now().UTC(), Actor: req.Caller.ID, Role: string(req.Caller.Role), Remote: req.Caller.Remote,
		Action: req.Action(), Target: c.target, Result: audit.ResultOK,
	}
	if aerr != nil {
		rec.Result, rec.Error = aerr.Code, aerr.Message
	}
	if c.args != nil {
		if b, err := json.Marshal(c.args); err == nil && len(b) <= maxAuditArgs {
			rec.Args = b
		}
	}
	return audit.Append(tx, rec)
}

// maxAuditArgs bounds the request arguments kept in an audit record.
const maxAuditArgs = 4096

func (s *Service) handle(ctx context.Context, c *call) (any, error) {
	req := c.req
	h, ok := s.handlers[req.Action()]
	if !ok {
		return nil, fail(CodeUnknownVerb, "unknown request %q; known: %v", req.Action(), s.Actions())
	}
	switch req.Caller.Role {
	case fleet.RoleOperator:
	case fleet.RoleObserver:
		if !h.readOnly {
			return nil, fail(CodeForbidden, "%s is an observer: %s needs an operator", req.Caller.ID, req.Action())
		}
	default:
		return nil, fail(CodeForbidden, "%s is a %s, not an operator", req.Caller.ID, req.Caller.Role)
	}
	limit := MaxBodySize
	if h.binary {
		limit = maxUploadBody
	}
	if len(req.Body) > limit {
		return nil, fail(CodeTooLarge, "request body is %d bytes, limit %d", len(req.Body), limit)
	}
	if !h.readOnly {
		c.commit = func(fn func(tx *store.Tx) error) error {
			err := s.db.Update(ctx, func(tx *store.Tx) error {
				if err := fn(tx); err != nil {
					return err
				}
				return s.appendAudit(tx, c, nil)
			})
			c.committed = err == nil
			return err
		}
	}
	return h.run(ctx, s, c)
}

// decode parses body strictly into v: unknown fields, trailing data and
// wrong types are errors. An empty body is an empty object.
func decode(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		body = []byte("{}")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fail(CodeBadRequest, "request body: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fail(CodeBadRequest, "request body: data after the JSON object")
	}
	return nil
}

// classify maps a domain error to a reply error.
func classify(err error) *Error {
	if e := classifyRelease(err); e != nil {
		return e
	}
	switch {
	case errors.Is(err, fleet.ErrInvalid):
		return &Error{Code: CodeBadRequest, Message: err.Error()}
	case errors.Is(err, fleet.ErrNotFound):
		return &Error{Code: CodeNotFound, Message: err.Error()}
	case errors.Is(err, fleet.ErrExists):
		return &Error{Code: CodeExists, Message: err.Error()}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded), errors.Is(err, store.ErrClosed):
		return &Error{Code: CodeUnavailable, Message: err.Error()}
	default:
		return &Error{Code: CodeInternal, Message: err.Error()}
	}
}

func verbsList(_ context.Context, s *Service, c *call) (any, error) {
	var req struct{}
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	return map[string]any{"actions": s.Actions()}, nil
}

type auditRequest struct {
	Actor  string `json:"actor,omitempty"`
	Action string `json:"action,omitempty"`
	Target string `json:"target,omitempty"`
	Before uint64 `json:"before,omitempty"`
	Limit  int    `json:"limit,omitempty"`
}

func auditList(_ context.Context, s *Service, c *call) (any, error) {
	var req auditRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	c.args = req
	if req.Limit < 0 || req.Limit > 1000 {
		return nil, fail(CodeBadRequest, "limit %d: want 1..1000", req.Limit)
	}
	recs, next, err := audit.List(s.db, audit.Query{Actor: req.Actor, Action: req.Action, Target: req.Target, Before: req.Before, Limit: req.Limit})
	if err != nil {
		return nil, err
	}
	if recs == nil {
		recs = []audit.Record{}
	}
	return map[string]any{"records": recs, "next": next}, nil
}
