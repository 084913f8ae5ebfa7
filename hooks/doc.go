// Package hooks adapts mochi-mqtt's hook interface to the otamq domain
// (package ota/...). Each hook is a thin translator: it reads what it needs
// from the MQTT packet or client, calls the domain with plain values, and
// turns the answer back into MQTT (a reason code, a reply, a publish).
//
// The hooks, in the order the broker registers them:
//
//   - Auth: authenticates every CONNECT against the fleet registry (tokens,
//     operator passwords, mTLS certificates) and refuses with CONNACK "not
//     authorized" (0x87 on v5, 5 on v3).
//   - ACL: default deny; devices only their own topics, gateways also their
//     children's, operators the admin topics and their own reply topics,
//     observers fleet events and admin reads; configurable rules for topics
//     outside the prefix.
//   - Device: connect, disconnect, Last Will, birth and heartbeat become
//     device status; malformed payloads are refused and counted.
//   - Admin: operator requests on the admin topics are queued to a worker
//     pool, run by ota/admin, and answered on the request's response topic.
//   - Publishes: the one hook providing OnPublish; it hands each inbound
//     publish to Device (births, heartbeats, events, block requests), then
//     to Admin (requests), by pointer, since mochi copies the packet into
//     and out of every hook that provides OnPublish. A message Device
//     consumed goes back marked Ignore, not as an error.
//
// Events publishes fleet events on the fleet events topic and disconnects
// revoked clients; it runs its own goroutine.
//
// # Rules every hook follows
//
//   - Hooks run on the client's read goroutine: they decode and update
//     memory, nothing slower. Anything that waits for the disk (admin
//     requests) moves to a worker.
//   - Publishes made by otamq itself come from an inline client and re-enter
//     OnPublish: every OnPublish returns early for cl.Net.Inline.
//   - No hook holds a lock of its own while publishing through the server.
//   - Hooks never grant what they do not own: only ACL answers OnACLCheck,
//     only Auth answers OnConnectAuthenticate (mochi ORs them).
package hooks
