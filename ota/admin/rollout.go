package admin

import (
	"context"
	"errors"

	"github.com/otamq/otamq/ota/rollout"
)

// The rollout/* verbs (docs/ROLLOUTS.md).

func (s *Service) rolloutHandlers() map[string]handler {
	return map[string]handler{
		"rollout/create":  {run: rolloutCreate},
		"rollout/plan":    {readOnly: true, run: rolloutPlan},
		"rollout/approve": {run: rolloutSimple((*rollout.Engine).Approve)},
		"rollout/start":   {run: rolloutSimple((*rollout.Engine).Start)},
		"rollout/resume":  {run: rolloutSimple((*rollout.Engine).Resume)},
		"rollout/pause":   {run: rolloutPause},
		"rollout/abort":   {run: rolloutAbort},
		"rollout/get":     {readOnly: true, run: rolloutGet},
		"rollout/list":    {readOnly: true, run: rolloutList},
		"rollout/devices": {readOnly: true, run: rolloutDevices},
	}
}

// classifyRollout maps the engine's errors; nil when err is none of them.
func classifyRollout(err error) *Error {
	var se *rollout.SpecError
	switch {
	case errors.As(err, &se):
		return &Error{Code: CodeBadRequest, Message: se.Error(), Problems: se.Problems}
	case errors.Is(err, rollout.ErrSpec):
		return &Error{Code: CodeBadRequest, Message: err.Error()}
	case errors.Is(err, rollout.ErrNotFound):
		return &Error{Code: CodeNotFound, Message: err.Error()}
	case errors.Is(err, rollout.ErrState):
		return &Error{Code: CodeConflict, Message: err.Error()}
	case errors.Is(err, rollout.ErrForbidden):
		return &Error{Code: CodeForbidden, Message: err.Error()}
	}
	return nil
}

type rolloutSpecRequest struct {
	// YAML is the rollout's spec (docs/ROLLOUTS.md).
	YAML string `json:"yaml"`
	// ID names an existing rollout (rollout/plan only).
	ID string `json:"id,omitempty"`
}

func rolloutCreate(_ context.Context, s *Service, c *call) (any, error) {
	var req rolloutSpecRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	c.args = req
	if req.ID != "" {
		return nil, fail(CodeBadRequest, "rollout/create takes the spec (yaml); an ID goes into the spec as id")
	}
	v, p, err := s.rollouts.Create(c.req.Caller.ID, []byte(req.YAML), rollout.Committer(c.commit))
	if err != nil {
		return nil, err
	}
	c.target = v.ID
	return map[string]any{"rollout": v, "plan": p}, nil
}

func rolloutPlan(_ context.Context, s *Service, c *call) (any, error) {
	var req rolloutSpecRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	c.args = req
	switch {
	case req.ID != "" && req.YAML != "":
		return nil, fail(CodeBadRequest, "give the spec (yaml) or the ID of a rollout, not both")
	case req.ID != "":
		c.target = req.ID
		return s.rollouts.PlanOf(req.ID)
	}
	return s.rollouts.PlanSpec([]byte(req.YAML))
}

type rolloutIDRequest struct {
	ID     string `json:"id"`
	Reason string `json:"reason,omitempty"`
}

func (r *rolloutIDRequest) check() error {
	if r.ID == "" {
		return fail(CodeBadRequest, "id: missing: the rollout's ID")
	}
	if len(r.Reason) > 256 {
		return fail(CodeBadRequest, "reason: %d bytes, limit 256", len(r.Reason))
	}
	return nil
}

// rolloutIDReq decodes and checks the request of a verb that names one
// rollout, and records it for the audit.
func rolloutIDReq(c *call) (rolloutIDRequest, error) {
	var req rolloutIDRequest
	if err := decode(c.req.Body, &req); err != nil {
		return req, err
	}
	c.args, c.target = req, req.ID
	return req, req.check()
}

func rolloutSimple(op func(e *rollout.Engine, actor, id string, commit rollout.Committer) (*rollout.View, error)) func(context.Context, *Service, *call) (any, error) {
	return func(_ context.Context, s *Service, c *call) (any, error) {
		req, err := rolloutIDReq(c)
		if err != nil {
			return nil, err
		}
		if req.Reason != "" {
			return nil, fail(CodeBadRequest, "reason: only pause and abort take one")
		}
		return op(s.rollouts, c.req.Caller.ID, req.ID, rollout.Committer(c.commit))
	}
}

func rolloutPause(_ context.Context, s *Service, c *call) (any, error) {
	req, err := rolloutIDReq(c)
	if err != nil {
		return nil, err
	}
	return s.rollouts.Pause(c.req.Caller.ID, req.ID, req.Reason, rollout.Committer(c.commit))
}

func rolloutAbort(_ context.Context, s *Service, c *call) (any, error) {
	req, err := rolloutIDReq(c)
	if err != nil {
		return nil, err
	}
	return s.rollouts.Abort(c.req.Caller.ID, req.ID, req.Reason, rollout.Committer(c.commit))
}

func rolloutGet(_ context.Context, s *Service, c *call) (any, error) {
	req, err := rolloutIDReq(c)
	if err != nil {
		return nil, err
	}
	return s.rollouts.Get(req.ID)
}

type rolloutListRequest struct {
	State string `json:"state,omitempty"`
	pageRequest
}

func rolloutList(_ context.Context, s *Service, c *call) (any, error) {
	var req rolloutListRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	c.args = req
	if req.State != "" && !contains(rollout.RolloutStates, req.State) {
		return nil, fail(CodeBadRequest, "state %s: want one of %v", quote(req.State), rollout.RolloutStates)
	}
	limit, err := req.limit(100)
	if err != nil {
		return nil, err
	}
	vs, next, err := s.rollouts.List(rollout.ListFilter{State: req.State, After: req.After, Limit: limit})
	if err != nil {
		return nil, err
	}
	return &page[rollout.View]{key: "rollouts", items: vs, next: next, cursor: func(v rollout.View) any { return v.ID }}, nil
}

type rolloutDevicesRequest struct {
	ID    string `json:"id"`
	State string `json:"state,omitempty"`
	Wave  string `json:"wave,omitempty"`
	pageRequest
}

func rolloutDevices(_ context.Context, s *Service, c *call) (any, error) {
	var req rolloutDevicesRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	c.args, c.target = req, req.ID
	if req.ID == "" {
		return nil, fail(CodeBadRequest, "id: missing: the rollout's ID")
	}
	if _, ok := rollout.ParseState(req.State); req.State != "" && !ok {
		return nil, fail(CodeBadRequest, "state %s: want one of %v", quote(req.State), rollout.States())
	}
	limit, err := req.limit(100)
	if err != nil {
		return nil, err
	}
	ds, next, err := s.rollouts.Devices(req.ID, rollout.DeviceFilter{State: req.State, Wave: req.Wave, After: req.After, Limit: limit})
	if err != nil {
		return nil, err
	}
	return &page[rollout.DeviceView]{key: "devices", items: ds, next: next, cursor: func(d rollout.DeviceView) any { return d.Device }}, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
