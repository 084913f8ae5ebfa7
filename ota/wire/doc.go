// Package wire holds the device messages of the otamq wire contract
// (docs/PROTOCOL.md): births, heartbeats, events, offers, block requests, blocks,
// block errors and commands, as CBOR maps with small unsigned integer keys.
//
// Decoders take bytes straight from devices, so each one bounds the input
// size before parsing, refuses duplicate keys, indefinite lengths, tags,
// invalid UTF-8 and wrong types for known keys, ignores unknown keys (room for
// later contract versions), and validates the values (lengths, ranges,
// semver) before returning. They never panic; every failure is an error that
// wraps ErrMalformed and names the field.
//
// Encoders use CBOR core deterministic encoding, so the same message always
// has the same bytes (the examples of docs/PROTOCOL.md are tests here).
package wire
