package admin

import (
	"context"
	"errors"
	"slices"

	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/store"
)

// device/register takes one device ({"id": …, "role": …, attributes}) or a
// batch ({"devices": [{…}, …]}, up to MaxBatch). A batch is all or
// nothing: if any of its devices is refused, none is registered and the
// refusal lists every refused device with its reason (Error.Refused).
// "dry_run": true checks a batch against the registry without registering
// anything. Each registered device has its own audit record; a refused
// batch has one.

// MaxBatch bounds the devices of one device/register request.
const MaxBatch = 1000

type registration struct {
	ID   string           `json:"id"`
	Role fleet.Role       `json:"role,omitempty"`
	Auth fleet.AuthMethod `json:"auth,omitempty"`
	fleet.Attributes
}

type registerRequest struct {
	registration
	Devices []registration `json:"devices,omitempty"`
	DryRun  bool           `json:"dry_run,omitempty"`
}

type deviceResult struct {
	Device fleet.Device `json:"device"`
	// Token is returned once, at registration or rotation, and never
	// stored in clear.
	Token string `json:"token,omitempty"`
}

// registered is one device of a batch's reply.
type registered struct {
	ID    string `json:"id"`
	Token string `json:"token,omitempty"`
}

type batchResult struct {
	Registered []registered `json:"registered"`
	DryRun     bool         `json:"dry_run,omitempty"`
	Count      int          `json:"count"`
}

// errDryRun rolls a dry run's transaction back.
var errDryRun = errors.New("dry run")

func deviceRegister(ctx context.Context, s *Service, c *call) (any, error) {
	var req registerRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	if req.Devices != nil {
		return s.registerBatch(ctx, c, req)
	}
	if req.DryRun {
		return nil, fail(CodeBadRequest, "dry_run is for a batch (devices)")
	}
	r := req.registration
	c.target, c.args = r.ID, r
	token, secret, err := newDeviceSecret(&r)
	if err != nil {
		return nil, err
	}
	// The token is shown once: a reply that cannot reach the requester is
	// refused before anything is registered.
	now := s.now().UTC()
	if err := c.fits(deviceResult{Device: fleet.Device{ID: r.ID, Role: r.Role, Auth: r.Auth, Hardware: r.Hardware, Region: r.Region,
		Connectivity: r.Connectivity, Groups: r.Groups, Tags: r.Tags, Parent: r.Parent, Created: now, Updated: now}, Token: token}); err != nil {
		return nil, err
	}
	var dev fleet.Device
	err = c.commit(func(tx store.Tx) error {
		d, err := s.fleet.Register(tx, fleet.Registration{ID: r.ID, Role: r.Role, Auth: r.Auth, Attributes: r.Attributes}, secret, c.req.Caller.ID)
		dev = d
		return err
	})
	if err != nil {
		return nil, err
	}
	return deviceResult{Device: dev, Token: token}, nil
}

// newDeviceSecret checks r's role and makes its token (none for a
// certificate-only device).
func newDeviceSecret(r *registration) (string, fleet.Secret, error) {
	if r.Role == "" {
		r.Role = fleet.RoleDevice
	}
	if !r.Role.IsDevice() {
		return "", fleet.Secret{}, fail(CodeBadRequest, "device/register takes role device or gateway, not %s (operators: operator/add)", quote(string(r.Role)))
	}
	if r.Auth == "" || r.Auth == fleet.AuthToken {
		token := fleet.NewToken()
		return token, fleet.TokenSecret(token), nil
	}
	return "", fleet.Secret{}, nil
}

// fits refuses, before anything changes, a request whose reply (result)
// could not reach the requester: a reply that carries a secret shown only
// once must not be cut.
func (c *call) fits(result any) error {
	limit := c.req.MaxReply
	if limit <= 0 {
		return nil
	}
	const margin = 64 // timestamps and fields the result gets when it is made
	if n := len(Encode(Response{OK: true, Result: result})) + margin; n > limit {
		e := fail(CodeTooLarge, "the reply would be about %d bytes, more than this client takes (%d), and it carries tokens shown only once: nothing was registered; send fewer devices per request", n, limit)
		e.Size, e.Limit = n, limit
		return e
	}
	return nil
}

func (s *Service) registerBatch(ctx context.Context, c *call, req registerRequest) (any, error) {
	n := len(req.Devices)
	c.args = map[string]any{"devices": n, "dry_run": req.DryRun}
	if req.ID != "" || req.Role != "" || req.Auth != "" || req.Hardware != "" || req.Region != "" || req.Connectivity != "" ||
		req.Groups != nil || req.Tags != nil || req.Parent != "" {
		return nil, fail(CodeBadRequest, "a request carries one device (id, …) or a batch (devices), not both")
	}
	if n == 0 || n > MaxBatch {
		return nil, fail(CodeBadRequest, "a batch of %d devices: want 1..%d", n, MaxBatch)
	}
	regs := make([]registration, n)
	copy(regs, req.Devices)
	tokens := make([]string, n)
	secrets := make([]fleet.Secret, n)
	var refused []Refusal
	refuse := func(i int, err error) {
		e, ok := err.(*Error)
		if !ok {
			e = classify(err)
		}
		msg := e.Message
		if len(msg) > 256 {
			msg = msg[:256] + "…"
		}
		id := regs[i].ID
		if len(id) > fleet.MaxIDLen {
			id = id[:fleet.MaxIDLen] + "…"
		}
		refused = append(refused, Refusal{Index: i, ID: id, Code: e.Code, Message: msg})
	}
	pre := map[int]bool{} // refused before the registry is asked
	for i := range regs {
		var err error
		if tokens[i], secrets[i], err = newDeviceSecret(&regs[i]); err != nil {
			refuse(i, err)
			pre[i] = true
		}
	}
	early := slices.Clone(refused)
	res := &batchResult{Registered: make([]registered, n), DryRun: req.DryRun, Count: n}
	for i, r := range regs {
		res.Registered[i] = registered{ID: r.ID, Token: tokens[i]}
	}
	if req.DryRun {
		res.Registered = []registered{}
	} else if err := c.fits(res); err != nil {
		return nil, err
	}
	actor := c.req.Caller.ID
	register := func(tx store.Tx) error {
		refused = append(refused[:0], early...) // the function may run more than once
		for i, r := range regs {
			if pre[i] {
				continue
			}
			if _, err := s.fleet.Register(tx, fleet.Registration{ID: r.ID, Role: r.Role, Auth: r.Auth, Attributes: r.Attributes}, secrets[i], actor); err != nil {
				refuse(i, err)
			}
		}
		if len(refused) > 0 {
			slices.SortFunc(refused, func(a, b Refusal) int { return a.Index - b.Index })
			return errRefusedBatch
		}
		if req.DryRun {
			return errDryRun
		}
		// One audit record per device, in the transaction that registers
		// it.
		for i, r := range regs {
			one := &call{req: c.req, target: r.ID, args: map[string]any{"registration": r, "batch": n, "index": i}}
			if err := s.appendAudit(tx, one, nil); err != nil {
				return err
			}
		}
		return nil
	}
	if req.DryRun {
		// Checked in a transaction that is rolled back; its audit record
		// is the request's own (written as for a read).
		if err := s.db.Update(ctx, register); err != nil && !errors.Is(err, errDryRun) {
			if errors.Is(err, errRefusedBatch) {
				return nil, batchRefused(refused, n, true)
			}
			return nil, err
		}
		return res, nil
	}
	c.unaudited = true // each device's record is written with it
	if err := c.commit(register); err != nil {
		if errors.Is(err, errRefusedBatch) {
			c.unaudited = false // the refused batch's own record
			return nil, batchRefused(refused, n, false)
		}
		c.unaudited = false
		return nil, err
	}
	return res, nil
}

var errRefusedBatch = errors.New("batch refused")

func batchRefused(refused []Refusal, n int, dryRun bool) *Error {
	what := "none of them was registered"
	if dryRun {
		what = "dry run: nothing was registered either way"
	}
	e := fail(CodeBadRequest, "%d of the batch's %d devices refused; %s", len(refused), n, what)
	if len(refused) == 1 {
		e.Code = refused[0].Code
	}
	e.Refused = refused
	return e
}
