package hooks

// Recorder counts what the hooks see. The broker implements it with
// Prometheus; its methods are called on clients' read goroutines and must be
// cheap and safe for concurrent use. Label values are bounded: reasons and
// actions come from fixed lists, never from client input.
type Recorder interface {
	// Connected counts an established session.
	Connected()
	// Disconnected counts the end of a session, by reason (fleet.Reason*).
	Disconnected(reason string)
	// Rejected counts a refused connection or message, by reason.
	Rejected(reason string)
	// Birth counts an accepted birth.
	Birth()
	// Will counts a Last Will published for a device.
	Will()
	// AdminRequest counts an admin request by action ("device/register", or
	// "unknown") and result ("ok" or an error code).
	AdminRequest(action, result string)
	// FleetEventDropped counts a fleet event lost to a full queue.
	FleetEventDropped()
	// UploadRejected counts a refused release upload request, by error
	// code.
	UploadRejected(reason string)
	// LoginThrottled counts an operator login refused without a password
	// check, by scope (fleet.ThrottleScopes).
	LoginThrottled(scope string)
	// Anonymous counts a client let in anonymously.
	Anonymous()
}

// Rejection reasons.
const (
	RejectUnknownClient  = "unknown_client"
	RejectBadCredentials = "bad_credentials"
	RejectIDMismatch     = "identity_mismatch"
	RejectRevoked        = "revoked"
	RejectWillTopic      = "will_topic"
	RejectACLPublish     = "acl_publish"
	RejectACLSubscribe   = "acl_subscribe"
	RejectMalformed      = "malformed_payload"
	RejectAdminNoReply   = "admin_no_response_topic"
	RejectAdminBusy      = "admin_busy"
	RejectTooLarge       = "too_large_for_client"
	// RejectEventNotRecorded: a device event the store could not take;
	// the device was told to send it again.
	RejectEventNotRecorded = "event_not_recorded"
	// RejectThrottled: an operator login refused by the login throttle.
	RejectThrottled = "login_throttled"
	// Subscriptions past a per-client limit.
	RejectSubscriptionCap = "subscription_cap"
	RejectFilterTooDeep   = "filter_too_deep"
	RejectFilterTooLong   = "filter_too_long"
	// RejectWillPayload: a Last Will on a device topic whose payload is
	// not that topic's message.
	RejectWillPayload = "will_payload"
)

// RejectReasons lists every rejection reason, so counters can start at 0.
var RejectReasons = []string{RejectUnknownClient, RejectBadCredentials, RejectIDMismatch, RejectRevoked, RejectWillTopic,
	RejectACLPublish, RejectACLSubscribe, RejectMalformed, RejectAdminNoReply, RejectAdminBusy, RejectTooLarge, RejectEventNotRecorded, RejectThrottled,
	RejectSubscriptionCap, RejectFilterTooDeep, RejectFilterTooLong, RejectWillPayload}

// NopRecorder counts nothing.
type NopRecorder struct{}

func (NopRecorder) Connected()                  {}
func (NopRecorder) Disconnected(string)         {}
func (NopRecorder) Rejected(string)             {}
func (NopRecorder) Birth()                      {}
func (NopRecorder) Will()                       {}
func (NopRecorder) AdminRequest(string, string) {}
func (NopRecorder) FleetEventDropped()          {}
func (NopRecorder) UploadRejected(string)       {}
func (NopRecorder) LoginThrottled(string)       {}
func (NopRecorder) Anonymous()                  {}

var _ Recorder = NopRecorder{}
