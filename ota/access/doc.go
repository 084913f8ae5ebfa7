// Package access is the contract's access policy and topic scheme, with no
// MQTT in it: which topic of which device a client may publish to or read
// (docs/PROTOCOL.md, "Topics"), which admin requests operators and
// observers may send, the configurable rules for topics outside the
// prefix, and what an anonymous client may use. The broker's ACL hook asks
// Policy.Allowed for every subscription, publish and delivery; other
// adapters (an MQTT v5 client of a clustered broker, the HTTP API) would ask
// the same.
package access
