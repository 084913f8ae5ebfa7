// Package faultproxy is a TCP proxy for tests that puts a bad network
// between MQTT clients and a broker: it cuts connections, stalls them,
// delays and throttles what they carry, and corrupts payloads, on purpose
// and reproducibly.
//
// # Model
//
// A Proxy listens on a loopback port and forwards every connection it
// accepts to one target address. Each connection is a pair of copies:
// client to target, passed through (after any stall and delay), and target
// to client, where the faults act. Faults are set on the Proxy and apply
// from then on to every connection, open or new:
//
//   - SetCutEvery(n): a connection is closed (both sides, like a broken
//     link) after about n bytes went to the client. Each connection draws
//     its own cut point in [3n/4, 5n/4) from the seeded source, so a run
//     with the same seed cuts at the same places.
//   - Stall(d): nothing moves, in either direction, on any connection for d.
//   - SetDelay(d): every chunk waits d before it is forwarded.
//   - SetThrottle(r): at most r bytes per second go to the client, on each
//     connection.
//   - SetFlip(f): the last byte of every f.Every-th MQTT PUBLISH to the
//     client whose topic ends with f.TopicSuffix is inverted (at most
//     f.Limit times). The last byte of an otamq block message is image
//     data (key 4 is last), so the packet stays well-formed MQTT and CBOR
//     and only the image is corrupted.
//   - SetDown(true): every connection is closed and new ones are closed
//     as soon as they are accepted, until SetDown(false).
//   - CutAll(): closes the open connections once.
//
// To find PUBLISH packets the proxy frames the target-to-client stream by
// MQTT's fixed header (packet type and remaining length, the same in MQTT
// 3.1.1 and 5) and reads the topic; it does not otherwise parse MQTT.
//
// # Caveats
//
// The proxy is for tests on loopback. Timing faults (stall, delay,
// throttle) shape when bytes move; tests should wait for outcomes with a
// deadline, never assert durations. Close stops the listener, closes every
// connection and waits for all the proxy's goroutines.
package faultproxy
