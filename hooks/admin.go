package hooks

import (
	"bytes"
	"context"
	"log/slog"
	"slices"
	"sync"
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otamq/otamq/ota/access"
	"github.com/otamq/otamq/ota/admin"
	"github.com/otamq/otamq/ota/fleet"
)

// Admin carries operator requests from the admin topics to ota/admin and
// the replies back, as MQTT v5 request/response (docs/OPERATORS.md, "The admin API").
//
// OnPublish runs on the operator's read goroutine, so it only checks the
// request's shape and queues it; a pool of workers runs the requests (which
// wait for a durable commit) and publishes each reply to the request's
// Response Topic with its Correlation Data.
type Admin struct {
	mqtt.HookBase
	srv    *mqtt.Server
	inline *mqtt.Client
	topics access.Topics
	fleet  *fleet.Registry
	svc    *admin.Service
	rec    Recorder
	log    *slog.Logger
	known  []string // actions, sorted, for bounded metric labels

	// mu guards closed against jobs being closed under a sender.
	mu     sync.RWMutex
	closed bool
	jobs   chan job
	wg     sync.WaitGroup
}

type job struct {
	req     admin.Request
	reply   string
	corr    []byte
	version byte
	// maxPacket is the requester's Maximum Packet Size (0: none).
	maxPacket uint32
}

// replyOverhead bounds what a reply PUBLISH adds to its payload: fixed
// header, topic, packet ID, properties (Correlation Data, Content Type) and
// room for what mochi may add on the way out (a topic alias, subscription
// identifiers).
func replyOverhead(topic string, corr []byte) int {
	return 5 + 2 + len(topic) + 2 + 4 + 3 + len(corr) + 3 + len(replyContentType) + 64
}

const replyContentType = "application/json"

// AdminOptions configure NewAdmin.
type AdminOptions struct {
	Server   *mqtt.Server
	Topics   access.Topics
	Fleet    *fleet.Registry
	Service  *admin.Service
	Recorder Recorder
	Logger   *slog.Logger
	// Workers run requests concurrently. Default 4.
	Workers int
	// Queue is how many requests may wait; beyond it requests are answered
	// "unavailable". Default 256.
	Queue int
}

// NewAdmin returns the admin hook and starts its workers; Stop drains them.
func NewAdmin(o AdminOptions) *Admin {
	if o.Recorder == nil {
		o.Recorder = NopRecorder{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Workers <= 0 {
		o.Workers = 4
	}
	if o.Queue <= 0 {
		o.Queue = 256
	}
	a := &Admin{
		srv: o.Server, topics: o.Topics, fleet: o.Fleet, svc: o.Service, rec: o.Recorder, log: o.Logger,
		known: o.Service.Actions(), jobs: make(chan job, o.Queue),
		inline: o.Server.NewClient(nil, "local", "otamq-admin", true),
	}
	for range o.Workers {
		a.wg.Add(1)
		go a.work()
	}
	return a
}

// ID implements mqtt.Hook.
func (a *Admin) ID() string { return "otamq-admin" }

// Provides implements mqtt.Hook: nothing, since requests reach the hook
// through the Publishes hook (publishRequest); it is added for its Stop.
func (a *Admin) Provides(byte) bool { return false }

// Stop implements mqtt.Hook: it lets the workers finish every queued
// request, then returns.
func (a *Admin) Stop() error {
	a.mu.Lock()
	if !a.closed {
		a.closed = true
		close(a.jobs)
	}
	a.mu.Unlock()
	a.wg.Wait()
	return nil
}

// publishRequest takes an inbound publish (Publishes hands it over): an
// admin request is queued and consumed (CodeSuccessIgnore); nil lets mochi
// route the message as usual.
func (a *Admin) publishRequest(cl *mqtt.Client, pk *packets.Packet) error {
	if cl.Net.Inline {
		return nil
	}
	res, verb, ok := a.topics.ParseAdmin(pk.TopicName)
	if !ok {
		return nil
	}
	d, ok := a.fleet.LookupClient(cl.ID) // an operator session ID~SUFFIX acts as ID
	if !ok {
		return packets.CodeSuccessIgnore
	}
	reply := pk.Properties.ResponseTopic
	if reply == "" || !bytes.HasPrefix([]byte(reply), []byte(a.topics.ReplyPrefix(cl.ID))) || access.HasWildcard(reply) {
		a.rec.Rejected(RejectAdminNoReply)
		a.log.Info("admin request without a usable response topic", "client", cl.ID, "topic", clip(pk.TopicName), "response_topic", clip(reply))
		if cl.Properties.ProtocolVersion == 5 && pk.FixedHeader.Qos > 0 {
			return packets.Code{Code: packets.ErrImplementationSpecificError.Code,
				Reason: "admin requests need MQTT v5 with a Response Topic under " + a.topics.ReplyPrefix(cl.ID)}
		}
		return packets.CodeSuccessIgnore
	}
	j := job{
		req: admin.Request{
			Caller:   admin.Caller{ID: d.ID, Role: d.Role, Session: cl.ID, Remote: cl.Net.Remote},
			Resource: res, Verb: verb,
			Body: slices.Clone(pk.Payload),
		},
		reply: reply, corr: slices.Clone(pk.Properties.CorrelationData), version: cl.Properties.ProtocolVersion,
		maxPacket: cl.Properties.Props.MaximumPacketSize,
	}
	if j.maxPacket > 0 {
		// What the reply's payload may take; the service makes the reply
		// fit (a list is cut, anything else becomes too_large).
		j.req.MaxReply = max(1, int(j.maxPacket)-replyOverhead(reply, j.corr))
	}
	a.mu.RLock()
	queued := false
	if !a.closed {
		select {
		case a.jobs <- j:
			queued = true
		default:
		}
	}
	a.mu.RUnlock()
	if !queued {
		a.rec.Rejected(RejectAdminBusy)
		a.rec.AdminRequest(a.label(j.req.Action()), admin.CodeUnavailable)
		a.publish(j, admin.Response{Error: &admin.Error{Code: admin.CodeUnavailable, Message: "the broker is busy or stopping; try again"}})
	}
	// Acknowledge, and deliver the request to nobody else.
	return packets.CodeSuccessIgnore
}

func (a *Admin) work() {
	defer a.wg.Done()
	for j := range a.jobs {
		resp, code := a.svc.Handle(context.Background(), j.req)
		result := "ok"
		if code != "" {
			result = code
		}
		a.rec.AdminRequest(a.label(j.req.Action()), result)
		if code != "" && j.req.Action() == "release/upload" {
			a.rec.UploadRejected(code)
		}
		a.publish(j, resp)
	}
}

// label bounds the action label of the metric to known actions.
func (a *Admin) label(action string) string {
	if _, ok := slices.BinarySearch(a.known, action); ok {
		return action
	}
	return "unknown"
}

// publish sends the reply of j through the server's inline path, with the
// request's Correlation Data. A reply larger than the requester's Maximum
// Packet Size is never sent (mochi would wedge its session): the service
// made it fit, so only a requester whose limit leaves no room even for an
// error gets nothing.
func (a *Admin) publish(j job, resp admin.Response) {
	body := admin.Encode(resp)
	if j.maxPacket > 0 && len(body)+replyOverhead(j.reply, j.corr) > int(j.maxPacket) {
		a.rec.Rejected(RejectTooLarge)
		a.log.Warn("admin reply larger than the client accepts; not sent", "client", j.req.Caller.Session,
			"action", clip(j.req.Action()), "bytes", len(body), "client_max", j.maxPacket)
		return
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   j.reply,
		Payload:     body,
		Properties: packets.Properties{
			CorrelationData: j.corr,
			ContentType:     replyContentType,
		},
		PacketID: 1, // the inline path needs an ID for validity; it is not used
	}
	if err := a.srv.InjectPacket(a.inline, pk); err != nil {
		a.log.Warn("admin reply not published", "client", j.req.Caller.Session, "err", err)
	}
}

// clip bounds client input written to the log.
func clip(s string) string {
	if len(s) <= 128 {
		return s
	}
	n := 128
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
