// Package admin is the operators' API: it decodes a request (resource, verb
// and a JSON body), checks the caller's role and request rate, runs it
// against the domain, records it in the audit log and returns the reply
// that docs/OPERATORS.md ("The admin API") defines: {"ok": true, "result":
// …} or {"ok": false, "error": {"code": …, "message": …}}.
//
// A request that changes state commits its change and its audit record in
// one store transaction, and Handle returns only after that transaction is
// durable: the reply is never ahead of the disk. Anything a request makes
// leave the broker (an offer, a command, a disconnect) happens only after
// its audit record is durable (call.after). A refused request changes
// nothing but the audit log, which records the refusal.
//
// Replies fit the requester: Request.MaxReply bounds the encoded reply; a
// list is cut to the items that fit (its cursor continues after them), and
// anything else that does not fit becomes a too_large error with the size.
// Error messages quote client input only as a bounded prefix.
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
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/otamq/otamq/ota/audit"
	"github.com/otamq/otamq/ota/clock"
	"github.com/otamq/otamq/ota/delivery"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/login"
	"github.com/otamq/otamq/ota/release"
	"github.com/otamq/otamq/ota/rollout"
	"github.com/otamq/otamq/ota/store"
)

// MaxBodySize bounds a JSON request body.
const MaxBodySize = 64 * 1024

// Error codes of a reply.
const (
	CodeBadRequest = "bad_request"
	CodeNotFound   = "not_found"
	CodeExists     = "exists"
	CodeForbidden  = "forbidden"
	// CodeUnauthorized: no valid credentials or session (the HTTP API's
	// login and sessions; MQTT refuses such a client at CONNECT).
	CodeUnauthorized = "unauthorized"
	CodeUnknownVerb  = "unknown_verb"
	CodeTooLarge     = "too_large"
	CodeRateLimited  = "rate_limited"
	CodeUnavailable  = "unavailable"
	CodeInternal     = "internal"
)

// Caller is who sent a request.
type Caller struct {
	// ID is the registered operator or observer (the audit actor).
	ID   string
	Role fleet.Role
	// Session is the client ID of the connection, when it is not ID (an
	// operator session "ID~SUFFIX"). A change to ID's own credentials
	// keeps this connection.
	Session string
	Remote  string
}

// Request is one operator request.
type Request struct {
	Caller   Caller
	Resource string
	Verb     string
	Body     []byte
	// MaxReply bounds the encoded reply in bytes (what the requester's
	// MQTT Maximum Packet Size leaves for the payload). 0: no bound.
	MaxReply int
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
	// RetryAfterMS is set with CodeRateLimited: when the next request of
	// this caller will be accepted.
	RetryAfterMS int64 `json:"retry_after_ms,omitempty"`
	// Size and Limit are set with CodeTooLarge: how large the reply (or
	// request) was, and its bound.
	Size  int `json:"size,omitempty"`
	Limit int `json:"limit,omitempty"`
	// Refused lists, for a batch that was refused as a whole, every item
	// that was wrong and why.
	Refused []Refusal `json:"refused,omitempty"`
	// Candidates are, for a release reference that names none or several,
	// the IDs of releases it might have meant (at most ten).
	Candidates []string `json:"candidates,omitempty"`
	// Problems lists, for a refused rollout spec, everything wrong with
	// it and where.
	Problems []rollout.Problem `json:"problems,omitempty"`
}

// Refusal is one refused item of a batch.
type Refusal struct {
	// Index is the item's position in the batch, from 0.
	Index   int    `json:"index"`
	ID      string `json:"id,omitempty"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func fail(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// quote quotes client input for a message, bounded (fleet.Quote).
func quote(s string) string { return fleet.Quote(s) }

// maxMessage bounds a reply's error message, whatever the domain put in it.
const maxMessage = 1024

// Disconnector ends the connections of a client whose credentials were
// revoked or replaced. It must not block for long.
type Disconnector interface {
	// Disconnect ends every connection of client id: the one with client
	// ID id and each operator session of id (ID~SUFFIX), except the
	// connection whose client ID is keep (empty: none).
	Disconnect(id, keep string)
}

// Defaults of Options.
const (
	DefaultRate  = 100 // requests per second and caller
	DefaultBurst = 200
)

// Options configure New. The zero value means all defaults.
type Options struct {
	Logger *slog.Logger
	// Clock is the time. Default clock.System().
	Clock clock.Clock
	// Disconnector is told about revoked clients. Default: nobody.
	Disconnector Disconnector
	// Catalog and Delivery enable the key, release, offer and command
	// verbs. Default: those verbs do not exist.
	Catalog  *release.Catalog
	Delivery *delivery.Service
	// Rollouts enables the rollout verbs, and keeps manual offers away
	// from the devices a rollout holds. Default: no rollout verbs.
	Rollouts *rollout.Engine
	// Rate is how many requests per second one caller (operator or
	// observer, all its sessions together) may send, with bursts of
	// Burst; beyond it requests are refused with CodeRateLimited and
	// the time to wait. Default DefaultRate and DefaultBurst; a negative
	// Rate: no limit.
	Rate  float64
	Burst int
	// Audit bounds the audit log. Default: audit.DefaultMaxRecords records,
	// none older than audit.DefaultMaxAge.
	Audit audit.Retention
	// Sessions enables Login and the HTTP API's sessions: revoking an
	// operator, or changing its password, ends them in the same
	// transaction. Default: no login.
	Sessions *login.Store
}

// Service handles admin requests. Its methods are safe for concurrent use.
type Service struct {
	db       store.Store
	fleet    *fleet.Registry
	log      *slog.Logger
	now      func() time.Time
	kick     Disconnector
	cat      *release.Catalog
	dlv      *delivery.Service
	rollouts *rollout.Engine
	audit    *audit.Log
	limit    *limiter
	sessions *login.Store
	handlers map[string]handler
	// ops serialises the changes that could leave no operator (revoking
	// one), so that two concurrent ones cannot both pass the check.
	ops chan struct{}
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
	commit    func(fn func(tx store.Tx) error) error
	committed bool // commit wrote the change and the audit record
	// unaudited is set by a handler whose request another request's
	// record covers: the parts of an upload between its beginning and its
	// end.
	unaudited bool
	// after are the request's effects outside the store (offers,
	// commands, disconnects): run in order once the request's audit
	// record is durable, before the reply is built.
	after []func()
}

type nopDisconnector struct{}

func (nopDisconnector) Disconnect(string, string) {}

// New returns a service over db and reg. It opens the audit log, which
// indexes a log written by an older version first.
func New(db store.Store, reg *fleet.Registry, opts *Options) (*Service, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Clock == nil {
		o.Clock = clock.System()
	}
	if o.Disconnector == nil {
		o.Disconnector = nopDisconnector{}
	}
	if o.Rate == 0 {
		o.Rate = DefaultRate
	}
	if o.Burst <= 0 {
		o.Burst = DefaultBurst
	}
	log, err := audit.Open(context.Background(), db, o.Audit)
	if err != nil {
		return nil, err
	}
	s := &Service{db: db, fleet: reg, log: o.Logger, now: o.Clock.Now, kick: o.Disconnector, cat: o.Catalog, dlv: o.Delivery,
		rollouts: o.Rollouts, audit: log, limit: newLimiter(o.Rate, o.Burst), sessions: o.Sessions, ops: make(chan struct{}, 1)}
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
	if s.rollouts != nil {
		for a, h := range s.rolloutHandlers() {
			s.handlers[a] = h
		}
	}
	return s, nil
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
// audit record, are durable, and its effects outside the store have been
// started. The second result is the error code ("" on success), for
// metrics.
func (s *Service) Handle(ctx context.Context, req Request) (Response, string) {
	now := s.now()
	if aerr, refused := s.limit.admit(req.Caller.ID, req.Action(), now); aerr != nil {
		return s.fit(Response{Error: aerr}, req.MaxReply, false), aerr.Code
	} else if refused != nil {
		s.recordRefusals(ctx, req.Caller, refused)
	}
	c := &call{req: &req}
	result, err := s.handle(ctx, c)
	if err == nil && !c.committed && !c.unaudited {
		// A read (or a request that changed no state): its audit record
		// alone. If even that cannot be written the request fails, because
		// every request must be on the record, and none of its effects
		// happen.
		if err = s.db.Update(ctx, func(tx store.Tx) error { return s.appendAudit(tx, c, nil) }); err != nil {
			s.log.Error("audit write failed", "action", clip(req.Action()), "actor", req.Caller.ID, "err", err)
			err = fail(CodeUnavailable, "audit log unavailable: %v", err)
		}
	}
	if err != nil {
		aerr, ok := err.(*Error)
		if !ok {
			aerr = classify(err)
		}
		if len(aerr.Message) > maxMessage {
			aerr.Message, _ = audit.Bound(aerr.Message, maxMessage)
		}
		if !c.unaudited {
			// The refused request changed nothing; only its audit record
			// is written.
			if werr := s.db.Update(ctx, func(tx store.Tx) error { return s.appendAudit(tx, c, aerr) }); werr != nil {
				s.log.Error("audit write failed", "action", clip(req.Action()), "actor", req.Caller.ID, "err", werr)
			}
		}
		return s.fit(Response{Error: aerr}, req.MaxReply, false), aerr.Code
	}
	for _, f := range c.after {
		f()
	}
	return s.fit(Response{OK: true, Result: result}, req.MaxReply, c.committed), ""
}

// clip bounds client input written to the broker's log.
func clip(s string) string {
	s, _ = audit.Bound(s, 128)
	return s
}

// appendAudit writes the audit record of c, with its error if it failed.
func (s *Service) appendAudit(tx store.Tx, c *call, aerr *Error) error {
	req := c.req
	rec := audit.Record{
		Time: s.now().UTC(), Actor: req.Caller.ID, Role: string(req.Caller.Role), Remote: req.Caller.Remote,
		Action: req.Action(), Target: c.target, Result: audit.ResultOK,
	}
	if req.Caller.Session != req.Caller.ID {
		rec.Session = req.Caller.Session
	}
	if aerr != nil {
		rec.Result, rec.Error = aerr.Code, aerr.Message
	}
	if c.args != nil {
		b, err := json.Marshal(c.args)
		if err != nil {
			return fmt.Errorf("audit args of %s: %w", clip(req.Action()), err)
		}
		rec.Args = b // audit bounds it
	}
	return s.audit.Append(tx, rec)
}

func (s *Service) handle(ctx context.Context, c *call) (any, error) {
	req := c.req
	h, ok := s.handlers[req.Action()]
	if !ok {
		return nil, fail(CodeUnknownVerb, "unknown request %s; known: %v", quote(req.Action()), s.Actions())
	}
	if err := authorize(req.Caller, req.Action(), h); err != nil {
		return nil, err
	}
	limit := MaxBodySize
	if h.binary {
		limit = maxUploadBody
	}
	if len(req.Body) > limit {
		e := fail(CodeTooLarge, "request body is %d bytes, limit %d", len(req.Body), limit)
		e.Size, e.Limit = len(req.Body), limit
		return nil, e
	}
	if !h.readOnly {
		c.commit = func(fn func(tx store.Tx) error) error {
			err := s.db.Update(ctx, func(tx store.Tx) error {
				if err := fn(tx); err != nil {
					return err
				}
				if c.unaudited {
					return nil
				}
				return s.appendAudit(tx, c, nil)
			})
			c.committed = err == nil
			return err
		}
	}
	return h.run(ctx, s, c)
}

// authorize checks that caller's role may run action (handler h).
func authorize(caller Caller, action string, h handler) *Error {
	switch caller.Role {
	case fleet.RoleOperator:
	case fleet.RoleObserver:
		if !h.readOnly {
			return fail(CodeForbidden, "%s is an observer: %s needs an operator", quote(caller.ID), action)
		}
	default:
		return fail(CodeForbidden, "%s is a %s, not an operator", quote(caller.ID), quote(string(caller.Role)))
	}
	return nil
}

// Authorize reports whether caller may send action, as Handle would judge
// it, without running it (an adapter checks before it reads a large body).
func (s *Service) Authorize(caller Caller, action string) *Error {
	h, ok := s.handlers[action]
	if !ok {
		return fail(CodeUnknownVerb, "unknown request %s", quote(action))
	}
	return authorize(caller, action, h)
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
		return fail(CodeBadRequest, "request body: %s", decodeMessage(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return fail(CodeBadRequest, "request body: data after the JSON object")
	}
	return nil
}

// decodeMessage is a JSON decoding error's message with the input it quotes
// (an unknown field's whole name) bounded.
func decodeMessage(err error) string {
	msg := err.Error()
	const unknown = "json: unknown field "
	if rest, ok := strings.CutPrefix(msg, unknown); ok {
		if name, uerr := strconv.Unquote(rest); uerr == nil {
			return unknown + quote(name)
		}
	}
	if len(msg) <= 2*fleet.MaxQuote {
		return msg
	}
	n := 2 * fleet.MaxQuote
	for n > 0 && !utf8.RuneStart(msg[n]) {
		n--
	}
	return fmt.Sprintf("%s… (%d bytes)", msg[:n], len(msg))
}

// classify maps a domain error to a reply error.
func classify(err error) *Error {
	if e := classifyRelease(err); e != nil {
		return e
	}
	if e := classifyRollout(err); e != nil {
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
	var req pageRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	limit, err := req.limit(len(s.handlers))
	if err != nil {
		return nil, err
	}
	var actions []string
	for _, a := range s.Actions() {
		if a > req.After {
			actions = append(actions, a)
		}
	}
	return pageOf(actions, limit, "actions", func(a string) any { return a }), nil
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
	if req.Limit < 0 || req.Limit > audit.MaxLimit {
		return nil, fail(CodeBadRequest, "limit %d: want 1..%d", req.Limit, audit.MaxLimit)
	}
	recs, next, err := audit.List(s.db, audit.Query{Actor: req.Actor, Action: req.Action, Target: req.Target, Before: req.Before, Limit: req.Limit})
	if err != nil {
		return nil, err
	}
	// "next" is the cursor of the following page ("before"), 0 on the last.
	return &page[audit.Record]{key: "records", items: recs, cursor: func(r audit.Record) any { return r.Seq }, next: next}, nil
}
