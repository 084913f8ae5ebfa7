package hooks

import (
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// DisconnectGrace is how long a connection the broker ends (revoked,
// rotated, kicked, taken over, shut down) has to take its DISCONNECT
// packet. A client that reads gets it in microseconds; one that stopped
// reading does not, and is cut off when the grace ends.
const DisconnectGrace = 250 * time.Millisecond

// EndConnection ends cl's connection with code and returns within about
// DisconnectGrace, however full the client's socket is.
//
// mochi's Server.DisconnectClient writes the DISCONNECT under the client's
// write lock, which the connection's write loop holds for as long as a
// write to a client that stopped reading is stuck: forever, since mochi's
// own write deadline is pushed out by every packet the client sends. So a
// write deadline is set first (the stuck write fails when it passes and
// the lock comes free), and in case the read loop pushes that deadline out
// again, the connection is stopped outright when the grace ends.
func EndConnection(srv *mqtt.Server, cl *mqtt.Client, code packets.Code) {
	if cl.Net.Conn != nil {
		_ = cl.Net.Conn.SetWriteDeadline(time.Now().Add(DisconnectGrace))
	}
	force := time.AfterFunc(DisconnectGrace, func() { cl.Stop(code) })
	defer force.Stop()
	_ = srv.DisconnectClient(cl, code)
}
