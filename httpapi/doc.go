// Package httpapi is the HTTP adapter of the admin API (ota/admin), beside
// the MQTT one (hooks.Admin): the same verbs, roles, validation, rate limit
// and audit, as /api/v1/... resources with JSON in and out in the admin
// replies' shapes ({"ok": true, "result": …} or {"ok": false, "error":
// {"code": …, "message": …}}), each error code mapped to an HTTP status
// (docs/API.md). It holds no policy: ota/admin decides, and this package
// translates a request into an admin.Request (path and query parameters
// become the request body's fields) and the reply into a response.
//
// Every route is in one table (routes.go), which registers them and which
// the OpenAPI test walks (openapi.yaml, served at /api/v1/openapi.yaml).
//
// Authentication: POST /api/v1/login with an operator's or observer's ID
// and password returns a session token, as JSON for scripts
// (Authorization: Bearer TOKEN) and as a cookie for a browser (HttpOnly,
// SameSite=Strict, Secure over TLS). A request with the cookie that
// changes state (any method but GET and HEAD) must carry the session's
// CSRF token in the X-CSRF-Token header; a cross-site page can neither
// read that token nor set the header without a CORS preflight, which this
// API never grants. Everything but /api/v1/login answers anonymous
// requests 401.
//
// GET /api/v1/events streams the fleet events and rollout summaries (what
// dm/fleet/events and dm/fleet/rollouts/ID carry) as Server-Sent Events.
// It is best effort: each stream has a bounded queue, a stream that falls
// behind is ended, and the broker never waits for one.
//
// Bounds: request bodies (413), the requests under way and the event
// streams (503), each request's read and write time; the admin layer
// bounds requests per caller and sessions per operator.
package httpapi
