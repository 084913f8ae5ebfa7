package admin

import (
	"encoding/json"
	"fmt"

	"github.com/otamq/otamq/ota/fleet"
)

// Encode returns the JSON of resp, as it goes on the wire.
func Encode(resp Response) []byte {
	b, err := json.Marshal(resp)
	if err != nil {
		return []byte(`{"ok":false,"error":{"code":"internal","message":"reply encoding failed"}}`)
	}
	return b
}

// pager is a list result that can be cut to its first n items, its cursor
// then continuing after them.
type pager interface {
	pageLen() int
	cut(n int) any
}

// page is a list result: items under key and the cursor of the next page
// under "next" (its zero value on the last page).
type page[T any] struct {
	key   string
	items []T
	// next is the cursor of the page after this one.
	next any
	// cursor returns the cursor that continues after an item.
	cursor func(T) any
	// extra are more keys of the result.
	extra map[string]any
}

// pageOf returns the page of the first limit of items, whose cursors are
// strings.
func pageOf[T any](items []T, limit int, key string, cursor func(T) any) *page[T] {
	p := &page[T]{key: key, items: items, next: "", cursor: cursor}
	if items == nil {
		p.items = []T{}
	}
	if len(items) > limit {
		p.items, p.next = items[:limit], cursor(items[limit-1])
	}
	return p
}

func (p *page[T]) pageLen() int { return len(p.items) }

func (p *page[T]) cut(n int) any {
	q := *p
	q.items, q.next = p.items[:n], p.cursor(p.items[n-1])
	return &q
}

// MarshalJSON implements json.Marshaler.
func (p *page[T]) MarshalJSON() ([]byte, error) {
	m := make(map[string]any, 2+len(p.extra))
	for k, v := range p.extra {
		m[k] = v
	}
	items := p.items
	if items == nil {
		items = []T{}
	}
	m[p.key], m["next"] = items, p.next
	return json.Marshal(m)
}

// pageRequest is the paging part of a list request.
type pageRequest struct {
	After string `json:"after,omitempty"`
	Limit int    `json:"limit,omitempty"`
}

// limit returns the page size asked for, def if none.
func (r pageRequest) limit(def int) (int, error) {
	if r.Limit < 0 || r.Limit > fleet.MaxListLimit {
		return 0, fail(CodeBadRequest, "limit %d: want 1..%d", r.Limit, fleet.MaxListLimit)
	}
	if r.Limit == 0 {
		return max(1, min(def, fleet.MaxListLimit)), nil
	}
	return r.Limit, nil
}

// fit makes resp fit limit bytes of JSON (0: no limit). A list that is too
// large is cut to as many items as fit, and its cursor continues after
// them; a refused batch keeps as many refusals as fit. Anything else
// becomes a too_large error saying how large the reply was; done says that
// the request changed state, so the message says it was carried out.
func (s *Service) fit(resp Response, limit int, done bool) Response {
	if limit <= 0 {
		return resp
	}
	size := len(Encode(resp))
	if size <= limit {
		return resp
	}
	if p, ok := resp.Result.(pager); ok && resp.OK {
		if n := largest(p.pageLen(), func(n int) bool { return len(Encode(Response{OK: true, Result: p.cut(n)})) <= limit }); n > 0 {
			return Response{OK: true, Result: p.cut(n)}
		}
	}
	if e := resp.Error; e != nil && len(e.Refused) > 1 {
		keep := func(n int) *Error {
			c := *e
			c.Refused = e.Refused[:n]
			c.Message = fmt.Sprintf("%s (the first %d of %d refusals; the reply cannot hold more)", e.Message, n, len(e.Refused))
			return &c
		}
		if n := largest(len(e.Refused), func(n int) bool { return len(Encode(Response{Error: keep(n)})) <= limit }); n > 0 {
			return Response{Error: keep(n)}
		}
	}
	e := &Error{Code: CodeTooLarge, Size: size, Limit: limit}
	switch {
	case resp.OK && done:
		e.Message = fmt.Sprintf("the request was carried out, but its reply is %d bytes and this client takes replies of at most %d (its Maximum Packet Size less the reply's topic and properties)", size, limit)
	case resp.OK:
		e.Message = fmt.Sprintf("the reply is %d bytes and this client takes replies of at most %d (its Maximum Packet Size less the reply's topic and properties): ask for less", size, limit)
	default:
		e.Message = fmt.Sprintf("the request was refused (%s), and the refusal is %d bytes, more than this client takes (%d)", resp.Error.Code, size, limit)
	}
	if len(Encode(Response{Error: e})) > limit {
		// A very small client: the short form. (If even that does not
		// fit, the adapter sends nothing.)
		switch {
		case resp.OK && done:
			e.Message = "carried out; reply too large"
		case resp.OK:
			e.Message = "reply too large"
		default:
			e.Message = "refused: " + resp.Error.Code
		}
	}
	return Response{Error: e}
}

// largest returns the largest n in 1..total-1 for which ok holds, given
// that ok is monotonic (true up to some n, false after) and false for
// total; 0 if it holds for none.
func largest(total int, ok func(n int) bool) int {
	lo, hi := 0, total // ok(lo) is true (or lo is 0), ok(hi) false
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if ok(mid) {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo
}
