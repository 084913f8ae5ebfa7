// Package sim simulates a fleet of devices that speak otamq's device
// contract (docs/PROTOCOL.md) the way agent-c does, thousands of them in one
// process: the engine of cmd/devsim, and a library for tests and benchmarks
// that need a fleet in-process.
//
// # Model
//
// Each simulated device is agent-c's state machine (agent-c/src/core/agent.c)
// translated to Go, over a simulated board modelled as agent-c's POSIX port
// does: two application slots under ESP-IDF's otadata rules (a new image
// boots pending-verify; a reset before it is confirmed boots the other
// slot; a rollback after the confirmation makes the old image new again),
// two slots per configuration kind, the agent's persisted state record and
// its kv copy of the events not yet acknowledged, both surviving resets,
// and RAM state (the event queue, the request in flight) that a reset
// loses. A reboot is the end of the MQTT connection without a DISCONNECT
// (the device's process is gone), a pause of Timing.Boot, and a new
// connection whose birth reports the new slot, version and boot reason.
//
// What a device sends, and when, follows the agent: a birth after every
// connect (all its keys, the replay guard included) and after a commit,
// then its subscriptions (ota/blk, ota/manifest, cmd), its queued events
// one at a time, each until its PUBACK, and a heartbeat; heartbeats every
// Timing.Heartbeat and at every change of OTA state, with the download
// offset while downloading; on an offer the checks in the agent's order
// (signature over the received bytes with a trusted key, hardware, minimum
// bootloader, kind, version policy, replay guard, secure version), then
// windowed block requests from the first missing offset within the
// broker's window, the image hashed as it arrives and its digest checked
// (and fetched again after a mismatch); events with the contract's codes,
// error codes and the agent's detail texts, in its order. Images are not
// kept, only hashed: a simulated device costs a few kilobytes, most of
// them the MQTT client's.
//
// # Profiles
//
// A profile says how a device misbehaves (Profile). Most misbehaviours
// belong to the image a device updates to: it fails its health check, it
// crash-loops, it never boots, it boots and says nothing. Images whose
// first bytes are agent-c's simulated image header (agent-c/README.md)
// behave as the header says, whatever the device's profile, so a test can
// ship a genuinely bad release to a healthy fleet.
//
// # Concurrency
//
// A device is driven by three things: messages from its MQTT client's
// goroutines, one timer (the earliest of its deadlines) and connection
// attempts, each in a goroutine of its own that ends with the attempt. One
// mutex per device serialises them, as the agent's single task does. Nothing
// blocks on the network under that mutex except writes to the socket: the
// CONNECT, the SUBSCRIBEs and a graceful DISCONNECT run outside it. Every
// goroutine is owned by the Fleet, and Fleet.Stop waits for all of them.
//
// # Time
//
// Deadlines use the Fleet's clock (Config.Now, default time.Now) and real
// timers; tests shorten Timing instead of faking time.
package sim
