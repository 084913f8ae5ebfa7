package admin

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/otamq/otamq/ota/store"
)

// limiter is a token bucket per caller: Rate requests per second, bursts of
// Burst. A refused request costs no disk write: refusals are counted and
// written as one audit record ("admin/rate_limited") before the caller's
// next accepted request, so a flood leaves at most one such record per
// accepted request.
type limiter struct {
	rate, burst float64 // rate <= 0: no limit

	mu      sync.Mutex // guards callers
	callers map[string]*bucket
}

type bucket struct {
	tokens  float64
	last    time.Time
	refused *refusals // since the caller's last accepted request
}

// refusals are the requests of one caller refused in a row.
type refusals struct {
	Count   int            `json:"refused"`
	First   time.Time      `json:"first"`
	Last    time.Time      `json:"last"`
	Actions map[string]int `json:"actions"`
}

// maxRefusalActions bounds the distinct actions a refusals record names;
// the rest are counted under "other".
const maxRefusalActions = 8

// maxCallers is the size beyond which idle callers' buckets are dropped.
const maxCallers = 4096

func newLimiter(rate float64, burst int) *limiter {
	return &limiter{rate: rate, burst: float64(burst), callers: map[string]*bucket{}}
}

// admit takes a token of caller id. It returns the refusal if there is
// none, or else the caller's refusals since its last accepted request (nil
// if none).
func (l *limiter) admit(id, action string, now time.Time) (*Error, *refusals) {
	if l.rate <= 0 {
		return nil, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.callers[id]
	if b == nil {
		if len(l.callers) >= maxCallers {
			l.sweep(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.callers[id] = b
	}
	if dt := now.Sub(b.last).Seconds(); dt > 0 {
		b.tokens = math.Min(l.burst, b.tokens+dt*l.rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		r := b.refused
		b.refused = nil
		return nil, r
	}
	wait := time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
	ms := max(1, wait.Milliseconds()+1)
	r := b.refused
	if r == nil {
		r = &refusals{First: now, Actions: map[string]int{}}
		b.refused = r
	}
	r.Count++
	r.Last = now
	if _, ok := r.Actions[action]; ok || len(r.Actions) < maxRefusalActions {
		r.Actions[action]++
	} else {
		r.Actions["other"]++
	}
	e := fail(CodeRateLimited, "more than %g admin requests per second (bursts of %g) from %s; retry in %d ms",
		l.rate, l.burst, quote(id), ms)
	e.RetryAfterMS = ms
	return e, nil
}

// sweep drops the buckets of callers that are full and have no refusals to
// record (they are as if new).
func (l *limiter) sweep(now time.Time) {
	for id, b := range l.callers {
		if b.refused == nil && b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.callers, id)
		}
	}
}

// recordRefusals writes the audit record of a caller's refused requests.
func (s *Service) recordRefusals(ctx context.Context, c Caller, r *refusals) {
	req := Request{Caller: c, Resource: "admin", Verb: "rate_limited"}
	cl := &call{req: &req, args: r}
	msg := fmt.Sprintf("%d request(s) refused as rate limited from %s to %s", r.Count,
		r.First.UTC().Format(time.RFC3339Nano), r.Last.UTC().Format(time.RFC3339Nano))
	err := s.db.Update(ctx, func(tx store.Tx) error {
		return s.appendAudit(tx, cl, &Error{Code: CodeRateLimited, Message: msg})
	})
	if err != nil {
		s.log.Error("audit write failed", "action", "admin/rate_limited", "actor", clip(c.ID), "refused", r.Count, "err", err)
	}
}
