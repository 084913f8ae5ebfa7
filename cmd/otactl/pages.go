package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
)

// collect calls a list verb and follows its cursor: it sends req, appends
// the items under key, and sends req again with cursor (the request field)
// set to the reply's "next", until want items are collected (0: all) or
// the reply's "next" is empty. A page may hold fewer items than asked for:
// the broker cuts pages to what the client can receive. It reports whether
// more items remain.
func collect[T any](ctx context.Context, e *env, action string, req map[string]any, key, cursor string, want int) ([]T, bool, error) {
	if req == nil {
		req = map[string]any{}
	}
	out := []T{}
	for {
		if want > 0 {
			req["limit"] = min(want-len(out), 1000)
		}
		var page map[string]json.RawMessage
		if err := e.call(ctx, action, req, &page); err != nil {
			return nil, false, err
		}
		var items []T
		if raw, ok := page[key]; ok {
			if err := json.Unmarshal(raw, &items); err != nil {
				return nil, false, fmt.Errorf("%s: decode %s: %w", action, key, err)
			}
		}
		out = append(out, items...)
		next := page["next"]
		if len(next) == 0 || bytes.Equal(next, []byte(`""`)) || bytes.Equal(next, []byte("0")) || bytes.Equal(next, []byte("null")) {
			return out, false, nil
		}
		if want > 0 && len(out) >= want {
			return out, true, nil
		}
		if len(items) == 0 {
			return nil, false, fmt.Errorf("%s: the broker returned an empty page with a cursor", action)
		}
		req[cursor] = next
	}
}
