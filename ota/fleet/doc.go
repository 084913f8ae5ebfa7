// Package fleet is the registry of everything that may connect to otamq:
// devices, gateways, operators and observers, with their credentials, the
// attributes operators give them (hardware, region, groups, tags, parent
// gateway) and the state the devices report (online, last seen, firmware,
// slot, boot reason, health).
//
// # Model
//
// Every registered client is an entry in memory, loaded from the store at
// start. An entry has two halves with different durability:
//
//   - Device: identity, role, attributes and credential hash. It changes only
//     through operator requests, inside a store transaction (Register, Update,
//     Revoke...), and the in-memory copy is swapped when that transaction
//     commits. Callers add their audit record to the same transaction.
//   - Status: what the device says about itself and what the broker sees of
//     its connection. It changes on every connect, birth and heartbeat, in
//     memory only; Flush writes all changed statuses in one transaction every
//     few seconds, so a heartbeat never costs an fsync.
//
// Connections are numbered: Connected returns a generation, and Disconnected
// and WillFired for an older generation are ignored. That is how a session
// takeover (the old connection's disconnect arriving after the new one's
// connect) never marks a device offline.
//
// A gateway's child has no connection: it is online through the session of
// its gateway that relays its messages (Relayed), unreachable when that
// session ends, offline when it is moved, revoked or not heard from for
// Options.ChildTimeout (gateway.go). Children returns a gateway's children,
// kept in an index that follows every registration change.
//
// Lookups, authentication and health updates are safe for concurrent use and
// cheap enough for a client's read goroutine: a map read under a read lock and
// a per-entry mutex. The fleet knows nothing of MQTT.
package fleet
