// Package delivery takes releases to devices: it keeps each device's current
// offer, serves image blocks to the devices (and gateways) an image is
// offered to, sends commands, and records what devices report about their
// updates in a bounded per-device timeline.
//
// # Model
//
// An offer assigns one release to one device under a rollout ID. Offers are
// stored (bucket "offers", one per device) and sent on the device's manifest
// topic when they are made and again every time the device subscribes to it,
// so devices never depend on retained messages or persistent sessions.
// Cancelling removes the offer and sends the empty offer.
//
// Block requests are answered from the offered image only: a device may fetch
// the image of its current offer and nothing else (a gateway acts for its
// children through their topics). Each answer reads just the requested range.
// Block size is capped by the configured maximum and by what the requesting
// client can receive; the window by the configured maximum. Each device has a
// token bucket of bytes, and all devices share one; a request they cannot
// cover is answered "rate limited" with the time after which it would be.
//
// Events from devices are appended to the device's timeline (durable before
// the device's PUBACK). The entries of the broker's offers and cancels are
// carried by the device's offer record and written into the timeline with
// its next event, or when a ninth would pile up (deferred.go). Readers get
// the newest TimelineLength entries; the store keeps up to a quarter more
// and trims back to TimelineLength at once, with a per-device count so
// that an append never counts the entries. An event naming a rollout the
// device was never offered is refused.
//
// The package speaks to devices through the Sender interface, implemented by
// the MQTT hooks; it never sees a topic or a connection.
package delivery
