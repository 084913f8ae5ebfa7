// Package rpc is otactl's admin client: MQTT v5 request/response over the
// admin topics (docs/OPERATORS.md, "The admin API"), on paho.golang.
//
// It has its own correlator instead of paho's rpc extension, which loses
// replies (its response channel is unbuffered and written without
// blocking): every call gets random Correlation Data and a buffered channel
// registered before the request is published, and the reply subscription is
// made once the connection is up.
//
// A Client is one connection and does not reconnect: a lost connection fails
// every pending and later call with ErrConnectionLost and closes Done; a
// caller that wants to go on dials again (and subscribes again). Besides
// replies it can receive what it subscribes to (Subscribe). Its client ID is an
// operator session, "OPERATOR~SUFFIX" with a random suffix, which the
// broker ties to the operator: clients of the same operator run side by
// side instead of taking over each other's connection.
package rpc

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/otamq/otamq/ota/access"
)

// ErrConnectionLost is returned by calls after the connection dropped.
var ErrConnectionLost = errors.New("connection to the broker lost")

// Config of a Client.
type Config struct {
	// URL is mqtt://host:port or mqtts://host:port (tls:// and ssl:// are
	// synonyms of mqtts://).
	URL string
	// ClientID defaults to a session of Username: "USERNAME~" and 12
	// random hex digits.
	ClientID string
	Username string
	Password string
	// TLS is used for mqtts URLs (nil: system roots).
	TLS *tls.Config
	// Prefix of the topics. Default "dm".
	Prefix string
	// Timeout bounds the connection and each call without a deadline of its
	// own. Default 10s.
	Timeout time.Duration
	// MaxPacketSize is announced to the broker as this client's MQTT
	// Maximum Packet Size (0: none); the broker then never sends a reply
	// larger than it (lists come in smaller pages).
	MaxPacketSize uint32
	// NoRetry returns a rate_limited refusal to the caller. By default a
	// call refused as rate limited waits the time the broker names and is
	// sent again, as long as its context allows.
	NoRetry bool
}

// RemoteError is a request the broker refused.
type RemoteError struct {
	Action  string
	Code    string `json:"code"`
	Message string `json:"message"`
	// RetryAfterMS comes with "rate_limited".
	RetryAfterMS int64 `json:"retry_after_ms,omitempty"`
	// Size and Limit come with "too_large".
	Size  int `json:"size,omitempty"`
	Limit int `json:"limit,omitempty"`
	// Refused lists the refused items of a batch.
	Refused []Refusal `json:"refused,omitempty"`
	// Candidates are the releases a release reference might have meant.
	Candidates []string `json:"candidates,omitempty"`
	// Problems lists everything wrong with a refused rollout spec.
	Problems []Problem `json:"problems,omitempty"`
}

// Problem is one thing wrong with a refused request (a rollout spec):
// where (a field path such as "waves[2].percent"; empty for the whole) and
// what.
type Problem struct {
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

// Refusal is one refused item of a batch request.
type Refusal struct {
	Index   int    `json:"index"`
	ID      string `json:"id,omitempty"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *RemoteError) Error() string { return fmt.Sprintf("%s: %s: %s", e.Action, e.Code, e.Message) }

// ConnectError is a connection the broker refused.
type ConnectError struct {
	URL    string
	Code   byte
	Reason string
}

func (e *ConnectError) Error() string {
	msg := fmt.Sprintf("%s refused the connection: %s (reason code 0x%02x)", e.URL, e.Reason, e.Code)
	if e.Code == 0x87 || e.Code == 0x86 || e.Code == 0x04 || e.Code == 0x05 {
		msg += "; check the user and password (OTAMQ_USER, OTAMQ_PASSWORD) or the client certificate"
	}
	return msg
}

// Client is a connected admin client. Its methods are safe for concurrent
// use.
type Client struct {
	cfg   Config
	cli   *paho.Client
	reply string // this session's reply topic

	mu      sync.Mutex // guards pending, lost and subs
	pending map[string]chan []byte
	lost    bool
	subs    []subscription
	done    chan struct{} // closed by the first fail
}

// subscription is a filter and what receives its messages.
type subscription struct {
	filter string
	fn     func(topic string, payload []byte)
}

// Dial connects, subscribes to the reply topic and returns the client.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = "dm"
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.ClientID == "" && cfg.Username != "" {
		cfg.ClientID = cfg.Username + "~" + nonce(6)
	}
	if cfg.ClientID == "" {
		return nil, errors.New("no client ID or user: set OTAMQ_USER or --user")
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	conn, err := dial(ctx, cfg)
	if err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, pending: map[string]chan []byte{}, done: make(chan struct{}),
		reply: cfg.Prefix + "/admin/reply/" + cfg.ClientID + "/" + nonce(8)}
	c.cli = paho.NewClient(paho.ClientConfig{
		ClientID:          cfg.ClientID,
		Conn:              conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){c.onPublish},
		OnClientError:     func(error) { c.fail() },
		OnServerDisconnect: func(*paho.Disconnect) {
			c.fail()
		},
	})
	cp := &paho.Connect{ClientID: cfg.ClientID, KeepAlive: 30, CleanStart: true}
	if cfg.MaxPacketSize > 0 {
		mp := cfg.MaxPacketSize
		cp.Properties = &paho.ConnectProperties{MaximumPacketSize: &mp}
	}
	if cfg.Username != "" {
		cp.Username, cp.UsernameFlag = cfg.Username, true
	}
	if cfg.Password != "" {
		cp.Password, cp.PasswordFlag = []byte(cfg.Password), true
	}
	ca, err := c.cli.Connect(ctx, cp)
	if err != nil {
		_ = conn.Close()
		if ca != nil && ca.ReasonCode >= 0x80 {
			reason := ""
			if ca.Properties != nil {
				reason = ca.Properties.ReasonString
			}
			if reason == "" {
				reason = "not authorized"
			}
			return nil, &ConnectError{URL: cfg.URL, Code: ca.ReasonCode, Reason: reason}
		}
		return nil, fmt.Errorf("connect to %s: %w", cfg.URL, err)
	}
	sa, err := c.cli.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: c.reply + "/#", QoS: 1}}})
	if err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("subscribe to replies: %w", err)
	}
	if len(sa.Reasons) != 1 || sa.Reasons[0] >= 0x80 {
		_ = c.Close()
		return nil, fmt.Errorf("subscribe to replies on %s refused (reason %v): is %s an operator or observer?", c.reply, sa.Reasons, cfg.ClientID)
	}
	return c, nil
}

func dial(ctx context.Context, cfg Config) (net.Conn, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("broker URL %q: want mqtt://host:port or mqtts://host:port", cfg.URL)
	}
	var d net.Dialer
	switch u.Scheme {
	case "mqtt", "tcp":
		conn, err := d.DialContext(ctx, "tcp", hostPort(u, "1883"))
		if err != nil {
			return nil, fmt.Errorf("connect to %s: %w (is otamq running? set --url or OTAMQ_URL)", cfg.URL, err)
		}
		return conn, nil
	case "mqtts", "tls", "ssl":
		tcfg := cfg.TLS
		if tcfg == nil {
			tcfg = &tls.Config{}
		}
		tcfg = tcfg.Clone()
		if tcfg.ServerName == "" {
			tcfg.ServerName = u.Hostname()
		}
		td := tls.Dialer{NetDialer: &d, Config: tcfg}
		conn, err := td.DialContext(ctx, "tcp", hostPort(u, "8883"))
		if err != nil {
			return nil, fmt.Errorf("connect to %s: %w", cfg.URL, err)
		}
		return conn, nil
	}
	return nil, fmt.Errorf("broker URL %q: scheme must be mqtt or mqtts", cfg.URL)
}

func hostPort(u *url.URL, port string) string {
	if u.Port() != "" {
		return u.Host
	}
	return net.JoinHostPort(u.Hostname(), port)
}

func nonce(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (c *Client) onPublish(pr paho.PublishReceived) (bool, error) {
	p := pr.Packet
	if p.Properties == nil || len(p.Properties.CorrelationData) == 0 {
		return c.deliver(p), nil
	}
	key := string(p.Properties.CorrelationData)
	c.mu.Lock()
	ch := c.pending[key]
	delete(c.pending, key)
	c.mu.Unlock()
	if ch == nil {
		return false, nil // a reply nobody waits for (timed out)
	}
	ch <- bytes.Clone(p.Payload) // buffered, capacity 1: never blocks
	return true, nil
}

// deliver hands a message that is no reply to the subscriptions whose
// filter matches its topic.
func (c *Client) deliver(p *paho.Publish) bool {
	c.mu.Lock()
	var fns []func(string, []byte)
	for _, s := range c.subs {
		if access.Covers(s.filter, p.Topic) {
			fns = append(fns, s.fn)
		}
	}
	c.mu.Unlock()
	for _, fn := range fns {
		fn(p.Topic, bytes.Clone(p.Payload))
	}
	return len(fns) > 0
}

// Subscribe subscribes to filter at QoS 0 and calls fn with the topic and
// payload of every message that arrives on it, in the order they arrive.
// fn runs on the connection's receive goroutine: it must return at once
// (hand the message on, never wait on this Client). fn owns the payload.
// A subscription lives as long as the connection: after a reconnect,
// subscribe again on the new Client.
func (c *Client) Subscribe(ctx context.Context, filter string, fn func(topic string, payload []byte)) error {
	c.mu.Lock()
	if c.lost {
		c.mu.Unlock()
		return ErrConnectionLost
	}
	// Registered before the SUBSCRIBE so that nothing sent right after
	// the SUBACK is missed.
	c.subs = append(c.subs, subscription{filter: filter, fn: fn})
	c.mu.Unlock()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.Timeout)
		defer cancel()
	}
	sa, err := c.cli.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 0}}})
	if sa != nil && len(sa.Reasons) == 1 && sa.Reasons[0] >= 0x80 {
		err = fmt.Errorf("refused (reason code 0x%02x): may %s read it?", sa.Reasons[0], c.cfg.ClientID)
	}
	if err != nil {
		c.mu.Lock()
		c.subs = slices.DeleteFunc(c.subs, func(s subscription) bool { return s.filter == filter })
		lost := c.lost
		c.mu.Unlock()
		if lost {
			return fmt.Errorf("subscribe to %s: %w", filter, ErrConnectionLost)
		}
		return fmt.Errorf("subscribe to %s: %w", filter, err)
	}
	return nil
}

// Done is closed when the connection is lost or closed.
func (c *Client) Done() <-chan struct{} { return c.done }

// fail ends every pending call: the connection is gone.
func (c *Client) fail() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.lost {
		close(c.done)
	}
	c.lost = true
	for k, ch := range c.pending {
		close(ch)
		delete(c.pending, k)
	}
}

// Call sends req (marshalled to JSON; nil for none) as action
// ("resource/verb") and decodes the result into result (if not nil). A
// refusal is a *RemoteError.
func (c *Client) Call(ctx context.Context, action string, req, result any) error {
	raw, err := c.CallRaw(ctx, action, req)
	if err != nil {
		return err
	}
	if result != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, result); err != nil {
			return fmt.Errorf("%s: decode result: %w", action, err)
		}
	}
	return nil
}

// CallRaw is Call returning the result as raw JSON.
func (c *Client) CallRaw(ctx context.Context, action string, req any) (json.RawMessage, error) {
	body := []byte("{}")
	if req != nil {
		var err error
		if body, err = json.Marshal(req); err != nil {
			return nil, fmt.Errorf("%s: encode request: %w", action, err)
		}
	}
	return c.CallBody(ctx, action, body, "application/json")
}

// CallBody sends body, of the given content type, as action and returns the
// result as raw JSON (replies are always JSON). A refusal as rate limited is
// sent again after the time the broker names, unless Config.NoRetry is set
// or the context ends first.
func (c *Client) CallBody(ctx context.Context, action string, body []byte, contentType string) (json.RawMessage, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.Timeout)
		defer cancel()
	}
	for {
		raw, err := c.callOnce(ctx, action, body, contentType)
		var re *RemoteError
		if c.cfg.NoRetry || !errors.As(err, &re) || re.Code != "rate_limited" || re.RetryAfterMS <= 0 {
			return raw, err
		}
		wait := time.Duration(re.RetryAfterMS) * time.Millisecond
		if dl, _ := ctx.Deadline(); time.Until(dl) < wait {
			return raw, err
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return raw, err
		}
	}
}

func (c *Client) callOnce(ctx context.Context, action string, body []byte, contentType string) (json.RawMessage, error) {
	corr := nonce(16)
	ch := make(chan []byte, 1)
	c.mu.Lock()
	if c.lost {
		c.mu.Unlock()
		return nil, ErrConnectionLost
	}
	c.pending[corr] = ch
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		delete(c.pending, corr)
		c.mu.Unlock()
	}

	pr, err := c.cli.Publish(ctx, &paho.Publish{
		Topic:   c.cfg.Prefix + "/admin/" + action,
		QoS:     1,
		Payload: body,
		Properties: &paho.PublishProperties{
			ResponseTopic:   c.reply + "/" + action,
			CorrelationData: []byte(corr),
			ContentType:     contentType,
		},
	})
	if err != nil {
		forget()
		if pr != nil && pr.ReasonCode >= 0x80 {
			reason := ""
			if pr.Properties != nil {
				reason = pr.Properties.ReasonString
			}
			return nil, &RemoteError{Action: action, Code: fmt.Sprintf("mqtt_0x%02x", pr.ReasonCode), Message: reason}
		}
		return nil, fmt.Errorf("%s: publish: %w", action, err)
	}
	select {
	case raw, ok := <-ch:
		if !ok {
			return nil, fmt.Errorf("%s: %w", action, ErrConnectionLost)
		}
		var resp struct {
			OK     bool            `json:"ok"`
			Result json.RawMessage `json:"result"`
			Error  *RemoteError    `json:"error"`
		}
		if err := json.Unmarshal(raw, &resp); err != nil {
			return nil, fmt.Errorf("%s: malformed reply: %w", action, err)
		}
		if !resp.OK {
			if resp.Error == nil {
				resp.Error = &RemoteError{Code: "unknown", Message: "refused without a reason"}
			}
			resp.Error.Action = action
			return nil, resp.Error
		}
		return resp.Result, nil
	case <-ctx.Done():
		forget()
		return nil, fmt.Errorf("%s: no reply: %w", action, ctx.Err())
	}
}

// Close disconnects.
func (c *Client) Close() error {
	err := c.cli.Disconnect(&paho.Disconnect{ReasonCode: 0})
	c.fail()
	return err
}
