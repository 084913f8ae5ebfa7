package httpapi

import (
	"net/http"
	"strings"
)

// ptype is the JSON type a query parameter becomes in the request body.
type ptype int

const (
	pString ptype = iota
	pInt
	pBool
)

// param is a query parameter of a GET route: the field of the admin
// request it sets.
type param struct {
	name string
	typ  ptype
}

// route is one method and path of the API. A route with an action is the
// admin verb of that name: its path wildcards ({id}) and query parameters
// become fields of the request's JSON body under their own names. A route
// with a handler is the adapter's own (login, the event stream, the
// multipart upload).
type route struct {
	method, path string
	action       string
	query        []param
	// yaml routes also take their spec as a raw YAML body
	// (Content-Type: application/yaml), as {"yaml": body}.
	yaml bool
	// public routes need no session.
	public bool
	own    func(a *API, w http.ResponseWriter, r *http.Request, c *caller)
}

// q parses the query parameters of a route: "name", "name:int" or
// "name:bool".
func q(specs ...string) []param {
	ps := make([]param, 0, len(specs))
	for _, s := range specs {
		name, typ, _ := strings.Cut(s, ":")
		p := param{name: name}
		switch typ {
		case "int":
			p.typ = pInt
		case "bool":
			p.typ = pBool
		}
		ps = append(ps, p)
	}
	return ps
}

// paging are the query parameters of the lists that page with "after".
var paging = []string{"after", "limit:int"}

// fleetFilters are device/list's filters (operator/list takes the same).
var fleetFilters = append([]string{"role", "hardware", "region", "connectivity", "group", "tag", "parent", "firmware",
	"online:bool", "revoked:bool"}, paging...)

// routes is every route of the API: the mux is built from it, and the
// OpenAPI test compares it with openapi.yaml.
var routes = []route{
	{method: "POST", path: "/api/v1/login", public: true, own: (*API).login},
	{method: "POST", path: "/api/v1/logout", own: (*API).logout},
	{method: "GET", path: "/api/v1/session", own: (*API).session},
	{method: "GET", path: "/api/v1/events", own: (*API).events},
	{method: "GET", path: "/api/v1/openapi.yaml", own: (*API).openapi},
	{method: "GET", path: "/api/v1/verbs", action: "verbs/list", query: q(paging...)},

	{method: "GET", path: "/api/v1/devices", action: "device/list", query: q(fleetFilters...)},
	{method: "POST", path: "/api/v1/devices", action: "device/register"},
	{method: "GET", path: "/api/v1/devices/{id}", action: "device/get"},
	{method: "PATCH", path: "/api/v1/devices/{id}", action: "device/update"},
	{method: "POST", path: "/api/v1/devices/{id}/revoke", action: "device/revoke"},
	{method: "GET", path: "/api/v1/devices/{id}/timeline", action: "device/timeline", query: q("before", "limit:int")},

	{method: "GET", path: "/api/v1/operators", action: "operator/list", query: q(fleetFilters...)},
	{method: "POST", path: "/api/v1/operators", action: "operator/add"},
	{method: "PATCH", path: "/api/v1/operators/{id}", action: "operator/update"},
	{method: "POST", path: "/api/v1/operators/{id}/revoke", action: "operator/revoke"},

	{method: "GET", path: "/api/v1/keys", action: "key/list", query: q(paging...)},
	{method: "POST", path: "/api/v1/keys", action: "key/add"},
	{method: "POST", path: "/api/v1/keys/{kid}/revoke", action: "key/revoke"},

	{method: "GET", path: "/api/v1/releases", action: "release/list", query: q("version", "hardware", "after", "limit:int")},
	{method: "POST", path: "/api/v1/releases", own: (*API).releaseCreate},
	{method: "POST", path: "/api/v1/releases/upload", own: (*API).releaseUpload},
	{method: "GET", path: "/api/v1/releases/{id}", action: "release/get"},
	{method: "GET", path: "/api/v1/uploads", action: "release/uploads", query: q(paging...)},
	{method: "DELETE", path: "/api/v1/uploads/{id}", action: "release/abort"},

	{method: "GET", path: "/api/v1/offers", action: "offer/list", query: q("device", "after", "limit:int")},
	{method: "POST", path: "/api/v1/offers", action: "offer/create"},
	{method: "POST", path: "/api/v1/offers/cancel", action: "offer/cancel"},
	{method: "POST", path: "/api/v1/commands", action: "command/send"},

	{method: "GET", path: "/api/v1/rollouts", action: "rollout/list", query: q("state", "after", "limit:int")},
	{method: "POST", path: "/api/v1/rollouts", action: "rollout/create", yaml: true},
	{method: "POST", path: "/api/v1/rollouts/plan", action: "rollout/plan", yaml: true},
	{method: "GET", path: "/api/v1/rollouts/{id}", action: "rollout/get"},
	{method: "GET", path: "/api/v1/rollouts/{id}/plan", action: "rollout/plan"},
	{method: "GET", path: "/api/v1/rollouts/{id}/devices", action: "rollout/devices", query: q("state", "wave", "after", "limit:int")},
	{method: "POST", path: "/api/v1/rollouts/{id}/approve", action: "rollout/approve"},
	{method: "POST", path: "/api/v1/rollouts/{id}/start", action: "rollout/start"},
	{method: "POST", path: "/api/v1/rollouts/{id}/pause", action: "rollout/pause"},
	{method: "POST", path: "/api/v1/rollouts/{id}/resume", action: "rollout/resume"},
	{method: "POST", path: "/api/v1/rollouts/{id}/abort", action: "rollout/abort"},

	{method: "GET", path: "/api/v1/audit", action: "audit/list", query: q("actor", "action", "target", "before:int", "limit:int")},
}

// Route is a method and path of the API, for tests and documentation.
type Route struct {
	Method, Path string
	// Action is the admin verb the route runs ("" for the adapter's own).
	Action string
	Public bool
}

// Routes returns every route, in the table's order.
func Routes() []Route {
	out := make([]Route, len(routes))
	for i, r := range routes {
		out[i] = Route{Method: r.method, Path: r.path, Action: r.action, Public: r.public}
	}
	return out
}

// wildcards returns the {names} of a path pattern.
func wildcards(path string) []string {
	var out []string
	for _, seg := range strings.Split(path, "/") {
		if strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}") {
			out = append(out, seg[1:len(seg)-1])
		}
	}
	return out
}
