package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/otamq/otamq/cmd/otactl/rpc"
	"github.com/otamq/otamq/ota/admin"
	"github.com/otamq/otamq/ota/delivery"
	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/release"
)

// Online commands for keys, releases, offers and commands.

var keyAdd = command{
	flags: func(fs *flag.FlagSet) { fs.String("name", "", "a name to recognise the key by") },
	run: func(ctx context.Context, e *env, args []string) error {
		if len(args) != 1 {
			return usagef("want the public key file (PEM), e.g. release.pub")
		}
		_, pem, err := readPublicKeyFile(args[0])
		if err != nil {
			return err
		}
		var res struct {
			Key release.Key `json:"key"`
		}
		if err := e.call(ctx, "key/add", map[string]any{"name": flagStr(e.fs, "name"), "pem": string(pem)}, &res); err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(res)
		}
		fmt.Fprintln(e.out, strings.TrimSpace("trusted key "+res.Key.ID.String()+" "+res.Key.Name))
		return nil
	},
}

var keyList = command{
	run: func(ctx context.Context, e *env, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		keys, _, err := collect[release.Key](ctx, e, "key/list", nil, "keys", "after", 0)
		if err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(keys)
		}
		tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "KID\tNAME\tSTATE\tADDED\tBY")
		for _, k := range keys {
			state := "trusted"
			if k.Revoked {
				state = "revoked " + k.RevokedAt.Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", k.ID, dash(k.Name), state, k.Added.Format(time.RFC3339), dash(k.AddedBy))
		}
		return tw.Flush()
	},
}

var keyRevoke = command{
	run: func(ctx context.Context, e *env, args []string) error {
		kid, err := oneID(args, "key")
		if err != nil {
			return err
		}
		var res struct {
			Affected []string `json:"affected_releases"`
			Note     string   `json:"note"`
		}
		if err := e.call(ctx, "key/revoke", map[string]any{"kid": kid}, &res); err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(res)
		}
		fmt.Fprintf(e.out, "revoked key %s\n%s\n", kid, res.Note)
		return nil
	},
}

type uploadReply struct {
	Upload  *release.Upload  `json:"upload"`
	Release *release.Release `json:"release"`
	Done    bool             `json:"done"`
}

// uploadCall sends one release/upload request.
func uploadCall(ctx context.Context, c *rpc.Client, p admin.UploadPart) (uploadReply, error) {
	body, err := admin.EncodeUpload(p)
	if err != nil {
		return uploadReply{}, err
	}
	raw, err := c.CallBody(ctx, "release/upload", body, "application/cbor")
	if err != nil {
		return uploadReply{}, err
	}
	var r uploadReply
	if err := json.Unmarshal(raw, &r); err != nil {
		return uploadReply{}, fmt.Errorf("release/upload: decode reply: %w", err)
	}
	return r, nil
}

var releaseUpload = command{
	flags: func(fs *flag.FlagSet) {
		fs.Int("part-size", 64*1024, "bytes per part (the broker's max_packet_size bounds it)")
		fs.Int("retries", 5, "reconnections after a lost connection before giving up")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		if len(args) != 2 {
			return usagef("want IMAGE MANIFEST (the manifest from otactl sign)")
		}
		image, err := os.ReadFile(args[0])
		if err != nil {
			return err
		}
		signed, err := os.ReadFile(args[1])
		if err != nil {
			return err
		}
		// Check locally first: a mismatch found here costs no upload.
		s, err := manifest.Parse(signed)
		if err != nil {
			return err
		}
		size, digest, _ := manifest.HashImage(bytes.NewReader(image))
		if err := s.Manifest.CheckImage(size, digest); err != nil {
			return fmt.Errorf("%s does not match %s: %w", args[0], args[1], err)
		}
		part := flagInt(e.fs, "part-size")
		if part <= 0 || part > release.MaxPartSize {
			return usagef("--part-size must be 1..%d", release.MaxPartSize)
		}
		retries := flagInt(e.fs, "retries")
		progress := newProgress(e, len(image))
		var done *release.Release
		for attempt := 0; ; attempt++ {
			done, err = uploadOnce(ctx, e, signed, image, part, progress)
			if err == nil || !errors.Is(err, rpc.ErrConnectionLost) || attempt >= retries {
				break
			}
			fmt.Fprintf(e.errOut, "\nconnection lost; reconnecting to resume (%d/%d)\n", attempt+1, retries)
			if e.client != nil {
				_ = e.client.Close()
				e.client = nil
			}
			time.Sleep(time.Duration(attempt+1) * 500 * time.Millisecond)
		}
		progress.finish()
		if err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(done)
		}
		fmt.Fprintf(e.out, "release %s: version %s for %s, %d bytes, sha256 %s, signed by %s\n",
			done.ID, done.Version, strings.Join(done.Hardware, ", "), done.Size, done.Digest, done.KeyID)
		return nil
	},
}

// uploadOnce begins (or resumes) the upload and sends the rest of the image.
func uploadOnce(ctx context.Context, e *env, signed, image []byte, part int, p *progress) (*release.Release, error) {
	if e.client == nil {
		c, err := e.g.dial(ctx)
		if err != nil {
			return nil, err
		}
		e.client = c
	}
	r, err := uploadCall(ctx, e.client, admin.UploadPart{Manifest: signed})
	if err != nil {
		return nil, err
	}
	if r.Done {
		p.update(len(image))
		return r.Release, nil
	}
	u := r.Upload
	if u.Offset > 0 {
		p.resumed(int(u.Offset))
	}
	for off := u.Offset; ; {
		end := min(off+uint64(part), uint64(len(image)))
		r, err := uploadCall(ctx, e.client, admin.UploadPart{Upload: u.ID, Offset: off, HasOffset: true, Data: image[off:end]})
		var re *rpc.RemoteError
		if errors.As(err, &re) && re.Code == admin.CodeWrongOffset {
			// Another session moved it on: ask where it stands.
			if r, err = uploadCall(ctx, e.client, admin.UploadPart{Upload: u.ID}); err != nil {
				return nil, err
			}
			if r.Done {
				return r.Release, nil
			}
			off = r.Upload.Offset
			continue
		}
		if err != nil {
			return nil, err
		}
		if r.Done {
			p.update(len(image))
			return r.Release, nil
		}
		off = r.Upload.Offset
		p.update(int(off))
	}
}

// progress draws an upload's progress on standard error.
type progress struct {
	w       io.Writer
	total   int
	start   time.Time
	base    int
	last    time.Time
	enabled bool
}

func newProgress(e *env, total int) *progress {
	return &progress{w: e.errOut, total: total, start: time.Now(), enabled: !e.g.json}
}

func (p *progress) resumed(at int) {
	p.base = at
	if p.enabled {
		fmt.Fprintf(p.w, "resuming at %d of %d bytes\n", at, p.total)
	}
	p.update(at)
}

func (p *progress) update(n int) {
	if !p.enabled || time.Since(p.last) < 100*time.Millisecond && n < p.total {
		return
	}
	p.last = time.Now()
	const width = 30
	filled := 0
	if p.total > 0 {
		filled = width * n / p.total
	}
	rate := float64(n-p.base) / max(time.Since(p.start).Seconds(), 1e-3) / 1024
	fmt.Fprintf(p.w, "\r[%s%s] %3d%% %d/%d bytes %.0f KiB/s", strings.Repeat("#", filled), strings.Repeat(".", width-filled),
		100*n/max(p.total, 1), n, p.total, rate)
}

func (p *progress) finish() {
	if p.enabled {
		fmt.Fprintln(p.w)
	}
}

var releaseList = command{
	flags: func(fs *flag.FlagSet) {
		fs.String("version", "", "only this version")
		fs.String("hardware", "", "only releases for this hardware")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		rs, _, err := collect[release.Release](ctx, e, "release/list",
			map[string]any{"version": flagStr(e.fs, "version"), "hardware": flagStr(e.fs, "hardware")}, "releases", "after", 0)
		if err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(rs)
		}
		tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tVERSION\tHARDWARE\tSIZE\tKIND\tSEQUENCE\tKID\tCREATED")
		for _, r := range rs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%s\t%s\n", r.ID, r.Version, strings.Join(r.Hardware, ","), r.Size, r.Kind,
				r.Sequence, r.KeyID, r.Created.Format(time.RFC3339))
		}
		return tw.Flush()
	},
}

var releaseGet = command{
	run: func(ctx context.Context, e *env, args []string) error {
		id, err := oneID(args, "release")
		if err != nil {
			return err
		}
		var res struct {
			Release    release.Release      `json:"release"`
			KeyTrusted bool                 `json:"key_trusted"`
			Components []manifest.Component `json:"components"`
		}
		if err := e.call(ctx, "release/get", map[string]any{"id": id}, &res); err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(res)
		}
		r := res.Release
		tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
		for _, kv := range [][2]string{{"id", r.ID}, {"version", r.Version}, {"hardware", strings.Join(r.Hardware, ", ")},
			{"kind", r.Kind.String()}, {"size", fmt.Sprint(r.Size)}, {"sha256", r.Digest.String()}, {"sequence", fmt.Sprint(r.Sequence)},
			{"secure version", fmt.Sprint(r.SecureVersion)}, {"min bootloader", dash(r.MinBootloader)}, {"build", dash(r.BuildID)},
			{"signed by", r.KeyID.String() + map[bool]string{true: " (trusted)", false: " (REVOKED or unknown: cannot be offered)"}[res.KeyTrusted]},
			{"uploaded", r.Created.Format(time.RFC3339) + " by " + dash(r.UploadedBy)}} {
			fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
		}
		if len(res.Components) == 0 {
			fmt.Fprintf(tw, "components:\t-\n")
		}
		for i, c := range res.Components {
			label := ""
			if i == 0 {
				label = "components:"
			}
			fmt.Fprintf(tw, "%s\t%s %s sha256 %s\n", label, c.Name, c.Version, c.Digest)
		}
		return tw.Flush()
	},
}

var releaseAbort = command{
	run: func(ctx context.Context, e *env, args []string) error {
		id, err := oneID(args, "upload")
		if err != nil {
			return err
		}
		if err := e.call(ctx, "release/abort", map[string]any{"id": id}, nil); err != nil {
			return err
		}
		fmt.Fprintf(e.out, "aborted upload %s; nothing of it remains\n", id)
		return nil
	},
}

var offerCreate = command{
	flags: func(fs *flag.FlagSet) {
		fs.String("rollout", "", "rollout ID (default: a generated manual-... ID)")
		fs.Bool("on-command", false, "devices wait for an install command after verifying")
		fs.Int("block-size", 0, "suggested block size (default: the broker's maximum)")
		fs.Int64("deadline", 0, "Unix time after which devices give up (0: none)")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		if len(args) < 2 {
			return usagef("want RELEASE DEVICE [DEVICE...]")
		}
		req := map[string]any{"release": args[0], "devices": args[1:], "rollout_id": flagStr(e.fs, "rollout"),
			"block_size": flagInt(e.fs, "block-size"), "deadline": flagInt(e.fs, "deadline")}
		if flagBool(e.fs, "on-command") {
			req["install_mode"] = "on_command"
		}
		var res struct {
			RolloutID string                 `json:"rollout_id"`
			Results   []delivery.OfferResult `json:"results"`
		}
		if err := e.call(ctx, "offer/create", req, &res); err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(res)
		}
		fmt.Fprintf(e.out, "rollout %s\n", res.RolloutID)
		return printResults(e, res.Results, "offered")
	},
}

// printResults prints per-device results; an error status if any failed.
func printResults(e *env, rs []delivery.OfferResult, okWord string) error {
	tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
	failed := 0
	for _, r := range rs {
		if r.OK {
			if r.Warning != "" {
				// Offered, but the device is known to refuse it.
				fmt.Fprintf(tw, "%s\t%s, but warning: %s\n", r.Device, okWord, r.Warning)
			} else {
				fmt.Fprintf(tw, "%s\t%s\n", r.Device, okWord)
			}
		} else {
			failed++
			fmt.Fprintf(tw, "%s\tnot %s: %s\n", r.Device, okWord, r.Error)
		}
	}
	_ = tw.Flush()
	if failed > 0 {
		return fmt.Errorf("%d of %d devices not %s", failed, len(rs), okWord)
	}
	return nil
}

var offerCancel = command{
	run: func(ctx context.Context, e *env, args []string) error {
		if len(args) == 0 {
			return usagef("want DEVICE [DEVICE...]")
		}
		var res struct {
			Results []delivery.OfferResult `json:"results"`
		}
		if err := e.call(ctx, "offer/cancel", map[string]any{"devices": args}, &res); err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(res)
		}
		return printResults(e, res.Results, "cancelled")
	},
}

var offerList = command{
	flags: func(fs *flag.FlagSet) { fs.String("device", "", "only this device's offer") },
	run: func(ctx context.Context, e *env, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		offers, _, err := collect[offerRow](ctx, e, "offer/list", map[string]any{"device": flagStr(e.fs, "device")}, "offers", "after", 0)
		if err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(offers)
		}
		tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DEVICE\tROLLOUT\tRELEASE\tINSTALL\tSINCE\tONLINE\tOTA\tPROGRESS")
		for _, o := range offers {
			mode := "when verified"
			if o.InstallMode == 1 {
				mode = "on command"
			}
			progress := "-"
			if o.Progress != nil {
				progress = fmt.Sprintf("%d%% (%d of %d bytes)", *o.Progress, *o.Downloaded, o.Size)
			}
			online := map[bool]string{true: "online", false: "offline"}[o.Online]
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", o.Device, o.RolloutID, o.Release, mode, o.Created.Format(time.RFC3339),
				online, dash(o.State), progress)
		}
		return tw.Flush()
	},
}

// offerRow is an item of offer/list: the offer and what its device last
// reported of it.
type offerRow struct {
	delivery.Offer
	Online     bool    `json:"online"`
	State      string  `json:"state"`
	Size       uint64  `json:"size"`
	Downloaded *uint64 `json:"downloaded"`
	Progress   *int    `json:"progress"`
}

var releaseUploads = command{
	run: func(ctx context.Context, e *env, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		ups, _, err := collect[release.Upload](ctx, e, "release/uploads", nil, "uploads", "after", 0)
		if err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(ups)
		}
		if len(ups) == 0 {
			fmt.Fprintln(e.out, "no unfinished upload")
			return nil
		}
		tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "UPLOAD-ID\tVERSION\tRECEIVED\tPARTS\tSTARTED\tLAST PART\tBY")
		now := time.Now()
		for _, u := range ups {
			fmt.Fprintf(tw, "%s\t%s\t%d%% (%d of %d bytes)\t%d\t%s\t%s\t%s\n", u.ID, u.Version, 100*u.Offset/max(u.Size, 1), u.Offset, u.Size,
				u.Parts, u.Started.Format(time.RFC3339), ago(u.Updated, now), dash(u.By))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(e.errOut, "Run the same `otactl release upload IMAGE MANIFEST` again to resume one; `otactl release abort UPLOAD-ID` drops it.")
		return nil
	},
}

var commandSend = command{
	flags: func(fs *flag.FlagSet) {
		fs.String("rollout", "", "rollout ID the command is about")
		fs.Int64("not-after", 0, "Unix time after which the device ignores it (0: none)")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		if len(args) < 2 {
			return usagef("want VERB DEVICE [DEVICE...] (verbs: install, cancel, check, reboot)")
		}
		var res struct {
			Results []delivery.OfferResult `json:"results"`
		}
		if err := e.call(ctx, "command/send", map[string]any{"verb": args[0], "devices": args[1:],
			"rollout_id": flagStr(e.fs, "rollout"), "not_after": flagInt(e.fs, "not-after")}, &res); err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(res)
		}
		return printResults(e, res.Results, "sent")
	},
}

var deviceTimeline = command{
	flags: func(fs *flag.FlagSet) { fs.Int("limit", 50, "newest entries to show") },
	run: func(ctx context.Context, e *env, args []string) error {
		id, err := oneID(args, "device")
		if err != nil {
			return err
		}
		limit := flagInt(e.fs, "limit")
		if limit < 1 {
			return usagef("--limit %d: want 1 or more", limit)
		}
		entries, _, err := collect[delivery.Entry](ctx, e, "device/timeline", map[string]any{"id": id}, "entries", "before", limit)
		if err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(entries)
		}
		tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TIME\tFROM\tEVENT\tROLLOUT\tVERSION\tDETAIL")
		for _, x := range entries {
			detail := x.Detail
			if x.Error != "" {
				detail = strings.TrimSpace("error " + x.Error + " " + detail)
			}
			if x.Progress > 0 {
				detail = strings.TrimSpace(fmt.Sprintf("%d%% %s", x.Progress, detail))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", x.Time.Local().Format("2006-01-02 15:04:05"), x.Source, x.Type,
				dash(x.RolloutID), dash(x.Version), dash(detail))
		}
		return tw.Flush()
	},
}
