package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/term"

	"github.com/otamq/otamq/cmd/otactl/rpc"
	"github.com/otamq/otamq/ota/rollout"
)

// otactl rollout watch: the View once by rollout/get, then the summaries
// the broker pushes on the rollout's topic (at most one a second, only
// when it changed), never a request per device, so it works over a slow
// link. After a lost connection it dials again, subscribes again and gets
// the View again (summaries sent meanwhile are lost, the View has their
// sum).

// rolloutID is what a rollout ID may be (ota/rollout: [A-Za-z0-9._-]{1,40}):
// it goes into a topic, so no wildcard and no level may slip in.
var rolloutID = regexp.MustCompile(`^[A-Za-z0-9._-]{1,40}$`)

// watchMsg is what the follower hands the display: a newer View, or the
// state of the link ("" when it is up again).
type watchMsg struct {
	view *rollout.View
	link *string
}

// latest is a one-slot mailbox between the connection's receive goroutine
// (which must never wait) and the follower: a newer summary replaces one
// not yet taken. Every summary is the whole View, so only the newest
// matters.
type latest struct {
	mu    sync.Mutex // guards b
	b     []byte
	ready chan struct{} // capacity 1: a summary is waiting
}

func newLatest() *latest { return &latest{ready: make(chan struct{}, 1)} }

func (l *latest) put(_ string, payload []byte) {
	l.mu.Lock()
	l.b = payload
	l.mu.Unlock()
	select {
	case l.ready <- struct{}{}:
	default:
	}
}

func (l *latest) take() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.b
	l.b = nil
	return b
}

// newer reports whether v should replace cur: a View never goes back from
// a finished rollout, nor to an older record.
func newer(cur, v *rollout.View) bool {
	if cur == nil {
		return true
	}
	if finished(cur.State) && !finished(v.State) {
		return false
	}
	return !v.Updated.Before(cur.Updated)
}

// permanent reports whether a failure to reconnect will not heal by
// itself: the broker refused this operator.
func permanent(err error) bool {
	var ce *rpc.ConnectError
	var ue usageError
	if errors.As(err, &ue) {
		return true
	}
	return errors.As(err, &ce) && (ce.Code == 0x86 || ce.Code == 0x87 || ce.Code == 0x8a || ce.Code == 0x04 || ce.Code == 0x05)
}

// Reconnection backoff of watch.
const (
	watchBackoffMin = 250 * time.Millisecond
	watchBackoffMax = 10 * time.Second
)

// follow sends emit every newer View of rollout id until the rollout is
// finished (nil), ctx ends (its error), or a failure that another
// connection would not mend (the broker refused the request or the
// operator, or the first connection failed). emit runs on follow's
// goroutine.
func follow(ctx context.Context, g *globals, id string, wait bool, emit func(watchMsg)) error {
	topic := g.prefix + "/fleet/rollouts/" + id
	var cur *rollout.View
	up := false // a View has been got at least once
	backoff := watchBackoffMin
	for {
		c, err := g.dial(ctx)
		if err == nil {
			var got bool
			got, err = followOnce(ctx, c, id, topic, wait, &cur, emit)
			_ = c.Close()
			if got {
				up, backoff = true, watchBackoffMin
			}
			if err == nil {
				return nil
			}
		}
		var re *rpc.RemoteError
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !up || errors.As(err, &re) || permanent(err) {
			return err
		}
		msg := fmt.Sprintf("%v; connecting again in %s", err, backoff.Round(time.Millisecond))
		emit(watchMsg{link: &msg})
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, watchBackoffMax)
	}
}

// followOnce follows on one connection: subscribe first (so that no
// change between the View and the subscription is missed), get the View,
// then each summary. It reports whether it got the View, and returns nil
// once the rollout is finished. With wait, a rollout not created yet is
// waited for: the broker pushes its first summary when it is created.
func followOnce(ctx context.Context, c *rpc.Client, id, topic string, wait bool, cur **rollout.View, emit func(watchMsg)) (bool, error) {
	box := newLatest()
	if err := c.Subscribe(ctx, topic, box.put); err != nil {
		return false, err
	}
	var v rollout.View
	for {
		err := c.Call(ctx, "rollout/get", map[string]any{"id": id}, &v)
		var re *rpc.RemoteError
		if err == nil {
			break
		}
		select {
		case <-c.Done():
			return false, fmt.Errorf("%w (%v)", rpc.ErrConnectionLost, err)
		default:
		}
		if !wait || !errors.As(err, &re) || re.Code != "not_found" {
			return false, err
		}
		msg := fmt.Sprintf("rollout %s does not exist yet; waiting for it to be created", id)
		emit(watchMsg{link: &msg})
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-c.Done():
			return false, rpc.ErrConnectionLost
		case <-box.ready:
			box.take() // the View is got again: it has the summary's sum
		}
	}
	v.Spec = ""
	none := ""
	emit(watchMsg{link: &none})
	show := func(v *rollout.View) bool {
		if newer(*cur, v) {
			*cur = v
			emit(watchMsg{view: v})
		}
		return finished((*cur).State)
	}
	if show(&v) {
		return true, nil
	}
	for {
		select {
		case <-ctx.Done():
			return true, ctx.Err()
		case <-c.Done():
			return true, rpc.ErrConnectionLost
		case <-box.ready:
			b := box.take()
			if b == nil {
				continue
			}
			var nv rollout.View
			if err := json.Unmarshal(b, &nv); err != nil || nv.ID != id {
				msg := fmt.Sprintf("a summary on %s that is not a View of %s: %v", topic, id, err)
				emit(watchMsg{link: &msg})
				continue
			}
			if show(&nv) {
				return true, nil
			}
		}
	}
}

var rolloutWatchCmd = command{
	flags: func(fs *flag.FlagSet) {
		fs.Bool("wait", false, "wait for a rollout that is not created yet, instead of failing with not_found")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		id, err := oneID(args, "rollout")
		if err != nil {
			return err
		}
		if !rolloutID.MatchString(id) {
			return usagef("%q is no rollout ID (letters, digits, '.', '_' and '-', at most 40)", id)
		}
		ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer stop()
		var final *rollout.View
		switch f, ok := e.out.(*os.File); {
		case e.g.json:
			final, err = watchJSON(ctx, e, id)
		case ok && term.IsTerminal(f.Fd()):
			final, err = watchTerminal(ctx, e, id)
		default:
			final, err = watchPlain(ctx, e, id)
		}
		if errors.Is(err, context.Canceled) {
			// Ctrl-C, SIGTERM or q: stopping to watch is no failure.
			state := "not seen"
			if final != nil {
				state = final.State
			}
			fmt.Fprintf(e.errOut, "stopped watching rollout %s (%s)\n", id, state)
			return nil
		}
		return err
	},
}

// watchJSON streams each View as one JSON line; the link's state goes to
// standard error.
func watchJSON(ctx context.Context, e *env, id string) (*rollout.View, error) {
	enc := json.NewEncoder(e.out)
	var last *rollout.View
	var werr error
	err := follow(ctx, e.g, id, flagBool(e.fs, "wait"), func(m watchMsg) {
		switch {
		case m.view != nil:
			last = m.view
			if err := enc.Encode(jsonView(m.view)); err != nil && werr == nil {
				werr = err
			}
		case *m.link != "":
			fmt.Fprintln(e.errOut, *m.link)
		}
	})
	if werr != nil {
		return last, werr
	}
	return last, err
}

// plainLine is a View in one line, without the time: what a change is
// judged by.
func plainLine(v *rollout.View) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", v.ID, v.State)
	if v.Reason != "" {
		fmt.Fprintf(&b, " (%s)", v.Reason)
	}
	fmt.Fprintf(&b, ": %d/%d succeeded, %d under way", v.Counts["succeeded"], v.Devices, sum(v.Counts, stateMoving))
	if f := failedText(v.Counts); f != "" {
		b.WriteString(", " + f)
	}
	for _, w := range v.Waves {
		fmt.Fprintf(&b, " | %s %s %d/%d", w.Name, w.State, w.Counts["succeeded"], w.Devices)
		if f := failedText(w.Counts); f != "" {
			b.WriteString(" " + f)
		}
	}
	return b.String()
}

// watchPlain prints a line for each change (not a terminal: a log, a
// pipe), each alarm once and what comes next; the link's state goes to
// standard error.
func watchPlain(ctx context.Context, e *env, id string) (*rollout.View, error) {
	var last *rollout.View
	prev, alarms, next := "", 0, ""
	err := follow(ctx, e.g, id, flagBool(e.fs, "wait"), func(m watchMsg) {
		now := time.Now()
		stamp := now.Format("15:04:05")
		if m.link != nil {
			if *m.link != "" {
				fmt.Fprintf(e.errOut, "%s %s\n", stamp, *m.link)
			}
			return
		}
		v := m.view
		last = v
		if line := plainLine(v); line != prev {
			fmt.Fprintf(e.out, "%s %s\n", stamp, line)
			prev = line
		}
		for ; alarms < len(v.Alarms); alarms++ {
			a := &v.Alarms[alarms]
			fmt.Fprintf(e.out, "%s ALARM %s\n", a.Time.Local().Format("15:04:05"), alarmText(a))
		}
		if n := nextPlain(v.Next); n != next {
			if n != "" {
				fmt.Fprintf(e.out, "%s %s\n", stamp, nextText(v, now))
			}
			next = n
		}
	})
	if err == nil && last != nil {
		fmt.Fprintf(e.out, "rollout %s %s: %s\n", last.ID, last.State, countsText(last.Counts))
	}
	return last, err
}

// nextPlain identifies what a rollout waits for ("" nothing), so that the
// plain view says it once.
func nextPlain(n *rollout.Next) string {
	if n == nil {
		return ""
	}
	return n.What + " " + n.Wave + " " + n.At.String()
}

// watchTerminal runs the live view (watchModel) while a goroutine follows
// the rollout; it returns once the rollout is finished, or the operator
// stops watching (context.Canceled).
func watchTerminal(ctx context.Context, e *env, id string) (*rollout.View, error) {
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m := newWatchModel(id)
	p := newWatchProgram(m, tea.WithOutput(e.out))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := follow(fctx, e.g, id, flagBool(e.fs, "wait"), func(msg watchMsg) { p.Send(msg) })
		p.Send(doneMsg{err: err})
	}()
	res, runErr := p.Run()
	cancel()
	wg.Wait()
	if wm, ok := res.(*watchModel); ok {
		m = wm
	}
	switch {
	case runErr != nil:
		return m.view, fmt.Errorf("terminal: %w", runErr)
	case m.err != nil:
		return m.view, m.err
	case m.view == nil || !finished(m.view.State):
		return m.view, context.Canceled // q, Ctrl-C, SIGINT or SIGTERM
	}
	fmt.Fprintf(e.out, "rollout %s %s: %s\n", m.view.ID, m.view.State, countsText(m.view.Counts))
	return m.view, nil
}
