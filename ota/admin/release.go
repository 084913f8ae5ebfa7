package admin

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/fxamacker/cbor/v2"

	"github.com/otamq/otamq/ota/delivery"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/release"
	"github.com/otamq/otamq/ota/store"
	"github.com/otamq/otamq/ota/wire"
)

// The key/*, release/*, offer/* and command/* verbs, and device/timeline.

// Error codes of the release verbs.
const (
	CodeBadManifest    = "bad_manifest"
	CodeUnknownKey     = "unknown_key"
	CodeBadSignature   = "bad_signature"
	CodeKeyRevoked     = "key_revoked"
	CodeDigestMismatch = "digest_mismatch"
	CodeSizeMismatch   = "size_mismatch"
	CodeConflict       = "conflict"
	CodeWrongOffset    = "wrong_offset"
)

// classifyRelease maps release and manifest errors to reply codes.
func classifyRelease(err error) *Error {
	code := ""
	switch {
	case errors.Is(err, manifest.ErrMalformed):
		code = CodeBadManifest
	case errors.Is(err, manifest.ErrUnknownKey):
		code = CodeUnknownKey
	case errors.Is(err, manifest.ErrBadSignature):
		code = CodeBadSignature
	case errors.Is(err, manifest.ErrDigestMismatch):
		code = CodeDigestMismatch
	case errors.Is(err, manifest.ErrSizeMismatch):
		code = CodeSizeMismatch
	case errors.Is(err, release.ErrKeyRevoked):
		code = CodeKeyRevoked
	case errors.Is(err, release.ErrConflict), errors.Is(err, release.ErrKeyExists):
		code = CodeConflict
	case errors.Is(err, release.ErrOffset):
		code = CodeWrongOffset
	case errors.Is(err, release.ErrTooLarge):
		code = CodeTooLarge
	case errors.Is(err, release.ErrNotFound), errors.Is(err, delivery.ErrNotFound):
		code = CodeNotFound
	case errors.Is(err, release.ErrInvalid), errors.Is(err, delivery.ErrInvalid), errors.Is(err, delivery.ErrRefused):
		code = CodeBadRequest
	default:
		return nil
	}
	return &Error{Code: code, Message: err.Error()}
}

func (s *Service) releaseHandlers() map[string]handler {
	if s.cat == nil || s.dlv == nil {
		return nil
	}
	return map[string]handler{
		"key/add":         {run: keyAdd},
		"key/list":        {readOnly: true, run: keyList},
		"key/revoke":      {run: keyRevoke},
		"release/upload":  {run: releaseUpload, binary: true},
		"release/abort":   {run: releaseAbort},
		"release/uploads": {readOnly: true, run: releaseUploads},
		"release/get":     {readOnly: true, run: releaseGet},
		"release/list":    {readOnly: true, run: releaseList},
		"offer/create":    {run: offerCreate},
		"offer/cancel":    {run: offerCancel},
		"offer/list":      {readOnly: true, run: offerList},
		"command/send":    {run: commandSend},
		"device/timeline": {readOnly: true, run: deviceTimeline},
	}
}

type keyAddRequest struct {
	Name string `json:"name,omitempty"`
	PEM  string `json:"pem"`
}

func keyAdd(_ context.Context, s *Service, c *call) (any, error) {
	var req keyAddRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	c.args = map[string]any{"name": req.Name}
	var k release.Key
	err := c.commit(func(tx store.Tx) error {
		var err error
		k, err = s.cat.AddKey(tx, req.Name, []byte(req.PEM), c.req.Caller.ID)
		c.target = k.ID.String()
		return err
	})
	if err != nil {
		return nil, err
	}
	c.target = k.ID.String()
	return map[string]any{"key": k}, nil
}

func keyList(_ context.Context, s *Service, c *call) (any, error) {
	var req pageRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	limit, err := req.limit(maxListAll)
	if err != nil {
		return nil, err
	}
	var keys []release.Key
	for _, k := range s.cat.Keys() { // by ID
		if k.ID.String() > req.After {
			keys = append(keys, k)
		}
	}
	return pageOf(keys, limit, "keys", func(k release.Key) any { return k.ID.String() }), nil
}

// maxListAll is the default page size of the lists that used to return
// everything (keys, releases, uploads, offers): their page is cut further
// only when the requester's Maximum Packet Size calls for it.
const maxListAll = 1000

type kidRequest struct {
	KID string `json:"kid"`
}

func keyRevoke(_ context.Context, s *Service, c *call) (any, error) {
	var req kidRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	c.target, c.args = req.KID, req
	var kid manifest.KeyID
	if len(req.KID) != 2*len(kid) {
		return nil, fail(CodeBadRequest, "kid %s: want %d hex digits", quote(req.KID), 2*len(kid))
	}
	kid, err := manifest.ParseKeyID(req.KID)
	if err != nil {
		return nil, fail(CodeBadRequest, "kid: %v", err)
	}
	var k release.Key
	var affected []release.Release
	if err := c.commit(func(tx store.Tx) error {
		var err error
		k, affected, err = s.cat.RevokeKey(tx, kid, c.req.Caller.ID)
		return err
	}); err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(affected))
	for _, r := range affected {
		ids = append(ids, r.ID)
	}
	note := "no release was signed with this key"
	if len(ids) > 0 {
		note = fmt.Sprintf("%d release(s) signed with this key can no longer be offered, and devices offered them get no more blocks: %s",
			len(ids), strings.Join(ids, ", "))
	}
	return map[string]any{"key": k, "affected_releases": ids, "note": note}, nil
}

// uploadRequest is a release/upload request, CBOR: either the signed
// manifest (key 1) to begin or resume an upload, or a part of the image
// (upload ID, offset, data), or only the upload ID to ask where it stands.
type uploadRequest struct {
	Manifest []byte  `cbor:"1,keyasint,omitempty"`
	Upload   string  `cbor:"2,keyasint,omitempty"`
	Offset   *uint64 `cbor:"3,keyasint,omitempty"`
	Data     []byte  `cbor:"4,keyasint,omitempty"`
}

// MaxUploadBody bounds a release/upload request.
const MaxUploadBody = release.MaxPartSize + wire.MaxManifestSize + 1024

const maxUploadBody = MaxUploadBody

var uploadDecMode = func() cbor.DecMode {
	// Operator input: a typo'd key is an error, not ignored.
	opts := wire.StrictDecOptions()
	opts.MaxMapPairs = 16
	opts.ExtraReturnErrors = cbor.ExtraDecErrorUnknownField
	dm, err := opts.DecMode()
	if err != nil {
		panic(err)
	}
	return dm
}()

// DecodeUpload decodes a release/upload body (exported for fuzzing and
// otactl's tests).
func DecodeUpload(body []byte) (UploadPart, error) {
	var r uploadRequest
	if len(body) > maxUploadBody {
		return UploadPart{}, fail(CodeTooLarge, "upload request is %d bytes, limit %d", len(body), maxUploadBody)
	}
	if err := uploadDecMode.Unmarshal(body, &r); err != nil {
		return UploadPart{}, fail(CodeBadRequest, "upload request (CBOR map: 1 manifest | 2 upload id, 3 offset, 4 data): %v", err)
	}
	p := UploadPart{Manifest: r.Manifest, Upload: r.Upload, Data: r.Data}
	if r.Offset != nil {
		p.Offset, p.HasOffset = *r.Offset, true
	}
	switch {
	case len(p.Manifest) > 0 && (p.Upload != "" || p.HasOffset || len(p.Data) > 0):
		return UploadPart{}, fail(CodeBadRequest, "a request carries either a manifest (1) or a part (2, 3, 4), not both")
	case len(p.Manifest) == 0 && p.Upload == "":
		return UploadPart{}, fail(CodeBadRequest, "upload request has neither a manifest (1) nor an upload ID (2)")
	case len(p.Data) > 0 && !p.HasOffset:
		return UploadPart{}, fail(CodeBadRequest, "a part needs its offset (3)")
	case len(p.Data) > release.MaxPartSize:
		return UploadPart{}, fail(CodeTooLarge, "part of %d bytes, limit %d", len(p.Data), release.MaxPartSize)
	}
	return p, nil
}

// UploadPart is a decoded release/upload request.
type UploadPart struct {
	Manifest  []byte
	Upload    string
	Offset    uint64
	HasOffset bool
	Data      []byte
}

// EncodeUpload encodes a release/upload request (used by otactl).
func EncodeUpload(p UploadPart) ([]byte, error) {
	r := uploadRequest{Manifest: p.Manifest, Upload: p.Upload, Data: p.Data}
	if p.HasOffset {
		off := p.Offset
		r.Offset = &off
	}
	return cbor.Marshal(r)
}

type uploadResult struct {
	Upload  *release.Upload  `json:"upload,omitempty"`
	Release *release.Release `json:"release,omitempty"`
	// Done is set when the release exists.
	Done bool `json:"done"`
}

func uploadView(u release.Upload) *release.Upload {
	u.Manifest, u.Hash = nil, nil
	return &u
}

func releaseView(r *release.Release) *release.Release {
	if r == nil {
		return nil
	}
	v := *r
	v.Manifest = nil
	return &v
}

// releaseUpload begins, continues or completes an upload. An upload has
// one audit record when it begins (again when it resumes) and one with its
// result: the release it created with the number of parts, or the refusal
// that removed it. The parts in between and the status queries are covered
// by those two (three uploads of 64 KiB parts used to fill the log).
func releaseUpload(ctx context.Context, s *Service, c *call) (any, error) {
	p, err := DecodeUpload(c.req.Body)
	if err != nil {
		return nil, err
	}
	switch {
	case len(p.Manifest) > 0:
		c.args = map[string]any{"begin": true, "manifest_bytes": len(p.Manifest)}
		var u release.Upload
		var existing *release.Release
		err := c.commit(func(tx store.Tx) error {
			var err error
			u, existing, err = s.cat.BeginUpload(tx, p.Manifest, c.req.Caller.ID)
			if err == nil && existing != nil {
				c.target = existing.ID
				c.args = map[string]any{"begin": true, "exists": true}
			} else if err == nil {
				c.target = release.ReleaseID(u.Version, u.Digest)
				c.args = map[string]any{"begin": true, "upload": u.ID, "version": u.Version, "size": u.Size,
					"offset": u.Offset, "parts": u.Parts, "manifest_bytes": len(p.Manifest)}
			}
			return err
		})
		if err != nil {
			return nil, err
		}
		if existing != nil {
			return uploadResult{Release: releaseView(existing), Done: true}, nil
		}
		return uploadResult{Upload: uploadView(u)}, nil
	case len(p.Data) == 0:
		c.unaudited = true
		c.target, c.args = p.Upload, map[string]any{"status": true}
		u, found, err := s.cat.Upload(p.Upload)
		if err != nil {
			return nil, err
		}
		if !found {
			var d manifest.Digest
			if dd, err := manifest.ParseDigest(p.Upload); err == nil {
				d = dd
			}
			if r, ok := s.cat.ByDigest(d); ok {
				return uploadResult{Release: releaseView(&r), Done: true}, nil
			}
			return nil, fail(CodeNotFound, "no upload %s in progress (send the manifest to begin)", quote(p.Upload))
		}
		return uploadResult{Upload: uploadView(u)}, nil
	}
	// A part: on the record only if it completes the upload.
	c.unaudited = true
	c.target = p.Upload
	var u release.Upload
	var r *release.Release
	err = c.commit(func(tx store.Tx) error {
		var err error
		u, r, err = s.cat.AppendUpload(tx, p.Upload, p.Offset, p.Data, c.req.Caller.ID)
		c.unaudited = err != nil || r == nil
		if r != nil {
			c.target = r.ID
			c.args = map[string]any{"upload": p.Upload, "parts": u.Parts, "size": u.Size, "release": r.ID}
		}
		return err
	})
	if err != nil {
		if errors.Is(err, manifest.ErrDigestMismatch) || errors.Is(err, release.ErrConflict) || errors.Is(err, release.ErrKeyRevoked) ||
			errors.Is(err, manifest.ErrUnknownKey) {
			// The complete image cannot become a release: every trace of
			// the upload goes, in one transaction with the upload's
			// result record.
			err = fmt.Errorf("%w (the upload was removed)", err)
			aerr := classify(err)
			c.target = release.ReleaseID(u.Version, u.Digest)
			c.args = map[string]any{"upload": p.Upload, "parts": u.Parts, "size": u.Size, "removed": true}
			c.unaudited = false
			if werr := s.db.Update(ctx, func(tx store.Tx) error {
				if err := s.cat.AbortUpload(tx, p.Upload); err != nil {
					return err
				}
				return s.appendAudit(tx, c, aerr)
			}); werr != nil {
				s.log.Error("remove refused upload", "upload", clip(p.Upload), "err", werr)
			}
			c.unaudited = true // its record is written
			return nil, aerr
		}
		return nil, err
	}
	if r != nil {
		return uploadResult{Release: releaseView(r), Done: true}, nil
	}
	return uploadResult{Upload: uploadView(u)}, nil
}

type uploadIDRequest struct {
	ID string `json:"id"`
}

func releaseAbort(_ context.Context, s *Service, c *call) (any, error) {
	var req uploadIDRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	c.target, c.args = req.ID, req
	u, found, err := s.cat.Upload(req.ID)
	if err != nil || !found {
		if err == nil {
			err = fail(CodeNotFound, "no upload %s in progress", quote(req.ID))
		}
		return nil, err
	}
	c.target = release.ReleaseID(u.Version, u.Digest)
	c.args = map[string]any{"upload": u.ID, "parts": u.Parts, "offset": u.Offset, "size": u.Size}
	if err := c.commit(func(tx store.Tx) error { return s.cat.AbortUpload(tx, req.ID) }); err != nil {
		return nil, err
	}
	return map[string]any{"aborted": req.ID}, nil
}

// releaseUploads lists the unfinished uploads, by ID: how far each is, who
// began it and when it last moved.
func releaseUploads(_ context.Context, s *Service, c *call) (any, error) {
	var req pageRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	limit, err := req.limit(maxListAll)
	if err != nil {
		return nil, err
	}
	us, err := s.cat.Uploads() // by ID
	if err != nil {
		return nil, err
	}
	var out []*release.Upload
	for _, u := range us {
		if u.ID > req.After {
			out = append(out, uploadView(u))
		}
	}
	return pageOf(out, limit, "uploads", func(u *release.Upload) any { return u.ID }), nil
}

type releaseIDRequest struct {
	ID string `json:"id"`
}

func releaseGet(_ context.Context, s *Service, c *call) (any, error) {
	var req releaseIDRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	c.target, c.args = req.ID, req
	r, err := s.resolveRelease(req.ID)
	if err != nil {
		return nil, err
	}
	c.target = r.ID
	known, revoked := s.cat.KeyStatus(r.KeyID)
	// The SBOM summary, from the manifest verified at upload.
	comps := []manifest.Component{}
	if sm, err := manifest.Parse(r.Manifest); err == nil && sm.Manifest.Components != nil {
		comps = sm.Manifest.Components
	}
	return map[string]any{"release": r, "key_trusted": known && !revoked, "components": comps}, nil
}

type releaseListRequest struct {
	Version  string `json:"version,omitempty"`
	Hardware string `json:"hardware,omitempty"`
	// After is the cursor: the ID of the last release of the page before.
	After string `json:"after,omitempty"`
	Limit int    `json:"limit,omitempty"`
}

// releaseList lists releases newest first.
func releaseList(_ context.Context, s *Service, c *call) (any, error) {
	var req releaseListRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	c.args = req
	limit, err := pageRequest{Limit: req.Limit}.limit(maxListAll)
	if err != nil {
		return nil, err
	}
	rs := s.cat.Releases(release.Filter{Version: req.Version, Hardware: req.Hardware})
	start := 0
	if req.After != "" {
		start = -1
		for i := range rs {
			if rs[i].ID == req.After {
				start = i + 1
				break
			}
		}
		if start < 0 {
			return nil, fail(CodeBadRequest, "after %s: no such release in this list (use the next of a page)", quote(req.After))
		}
	}
	out := make([]*release.Release, 0, len(rs)-start)
	for i := start; i < len(rs); i++ {
		out = append(out, releaseView(&rs[i]))
	}
	return pageOf(out, limit, "releases", func(r *release.Release) any { return r.ID }), nil
}

// maxDevicesPerRequest bounds the device list of one offer or command.
const maxDevicesPerRequest = 1000

type offerRequest struct {
	Release     string   `json:"release"`
	Devices     []string `json:"devices"`
	RolloutID   string   `json:"rollout_id,omitempty"`
	InstallMode string   `json:"install_mode,omitempty"` // "immediate" (default) or "on_command"
	BlockSize   uint32   `json:"block_size,omitempty"`
	Deadline    uint64   `json:"deadline,omitempty"`
}

// checkDevices checks the device list of an offer or command: 1 to
// maxDevicesPerRequest well-formed IDs (a malformed one refuses the request,
// so no message repeats unbounded input).
func checkDevices(ids []string) error {
	if len(ids) == 0 {
		return fail(CodeBadRequest, "devices missing")
	}
	if len(ids) > maxDevicesPerRequest {
		return fail(CodeBadRequest, "%d devices, limit %d per request", len(ids), maxDevicesPerRequest)
	}
	for i, id := range ids {
		if err := fleet.ValidID(id); err != nil {
			return fail(CodeBadRequest, "device %d: %v", i+1, err)
		}
	}
	return nil
}

func offerCreate(_ context.Context, s *Service, c *call) (any, error) {
	var req offerRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	c.target, c.args = req.Release, req
	if err := checkDevices(req.Devices); err != nil {
		return nil, err
	}
	r, err := s.resolveRelease(req.Release)
	if err != nil {
		return nil, err
	}
	c.target = r.ID
	spec := delivery.OfferSpec{Release: r.ID, RolloutID: req.RolloutID, BlockSize: req.BlockSize, Deadline: req.Deadline}
	switch req.InstallMode {
	case "", "immediate":
	case "on_command":
		spec.InstallMode = wire.InstallOnCommand
	default:
		return nil, fail(CodeBadRequest, "install_mode %s: want immediate or on_command", quote(req.InstallMode))
	}
	if spec.RolloutID == "" {
		spec.RolloutID = delivery.NewRolloutID(s.now())
	}
	free, held := s.unheld(req.Devices)
	var results []delivery.OfferResult
	if err := c.commit(func(tx store.Tx) error {
		var err error
		results, err = s.dlv.Offer(tx, free, spec, c.req.Caller.ID)
		return err
	}); err != nil {
		return nil, err
	}
	results = append(results, held...)
	var sent []string
	for _, r := range results {
		if r.OK {
			sent = append(sent, r.Device)
		}
	}
	c.after = append(c.after, func() { s.dlv.Push(sent) })
	return map[string]any{"rollout_id": spec.RolloutID, "results": results}, nil
}

// unheld splits ids into the devices no rollout holds and refusals for
// those one does: a manual offer or cancel would compete with it.
func (s *Service) unheld(ids []string) ([]string, []delivery.OfferResult) {
	if s.rollouts == nil {
		return ids, nil
	}
	free := make([]string, 0, len(ids))
	var held []delivery.OfferResult
	for _, id := range ids {
		if r, ok := s.rollouts.Holder(id); ok {
			held = append(held, delivery.OfferResult{Device: id,
				Error: fmt.Sprintf("%s takes part in rollout %s: pause or abort it, or let it finish, to offer by hand", id, r)})
			continue
		}
		free = append(free, id)
	}
	return free, held
}

type devicesRequest struct {
	Devices []string `json:"devices"`
}

func offerCancel(_ context.Context, s *Service, c *call) (any, error) {
	var req devicesRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	c.args = req
	if err := checkDevices(req.Devices); err != nil {
		return nil, err
	}
	free, held := s.unheld(req.Devices)
	var results []delivery.OfferResult
	if err := c.commit(func(tx store.Tx) error {
		var err error
		results, err = s.dlv.Cancel(tx, free, c.req.Caller.ID)
		return err
	}); err != nil {
		return nil, err
	}
	results = append(results, held...)
	var cancelled []string
	for _, r := range results {
		if r.OK {
			cancelled = append(cancelled, r.Device)
		}
	}
	c.after = append(c.after, func() { s.dlv.Push(cancelled) })
	return map[string]any{"results": results}, nil
}

type offerListRequest struct {
	Device string `json:"device,omitempty"`
	// After is the cursor: the device of the last offer of the page
	// before.
	After string `json:"after,omitempty"`
	Limit int    `json:"limit,omitempty"`
}

// offerItem is an offer with what its device last reported of it: the OTA
// state, and while downloading how far it is.
type offerItem struct {
	delivery.Offer
	Online     bool    `json:"online"`
	State      string  `json:"state,omitempty"`
	Size       uint64  `json:"size,omitempty"`
	Downloaded *uint64 `json:"downloaded,omitempty"`
	Progress   *int    `json:"progress,omitempty"`
}

// offerList lists the current offers by device.
func offerList(_ context.Context, s *Service, c *call) (any, error) {
	var req offerListRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	c.args = req
	limit, err := pageRequest{Limit: req.Limit}.limit(maxListAll)
	if err != nil {
		return nil, err
	}
	var offers []delivery.Offer
	if req.Device != "" {
		if of, ok := s.dlv.Current(req.Device); ok {
			offers = append(offers, of)
		}
	} else {
		offers = s.dlv.Offers() // by device
	}
	var items []offerItem
	for _, of := range offers {
		if of.Device <= req.After {
			continue
		}
		it := offerItem{Offer: of}
		if v, ok := s.fleet.Get(of.Device); ok {
			it.Online, it.State = v.Status.Online, v.Status.OTAState
			if info := s.otaOf(&v.Status, of.Device); info != nil && info.Release == of.Release {
				it.Size, it.Downloaded, it.Progress = info.Size, info.Downloaded, info.Progress
			}
		}
		items = append(items, it)
	}
	return pageOf(items, limit, "offers", func(it offerItem) any { return it.Device }), nil
}

type commandRequest struct {
	Devices   []string `json:"devices"`
	Verb      string   `json:"verb"`
	RolloutID string   `json:"rollout_id,omitempty"`
	NotAfter  uint64   `json:"not_after,omitempty"`
}

var verbs = map[string]wire.Verb{"install": wire.VerbInstall, "cancel": wire.VerbCancel, "check": wire.VerbCheck, "reboot": wire.VerbReboot}

func commandSend(_ context.Context, s *Service, c *call) (any, error) {
	var req commandRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	c.target, c.args = req.Verb, req
	if err := checkDevices(req.Devices); err != nil {
		return nil, err
	}
	v, ok := verbs[req.Verb]
	if !ok {
		return nil, fail(CodeBadRequest, "verb %s: want install, cancel, check or reboot", quote(req.Verb))
	}
	if len(req.RolloutID) > wire.MaxRolloutIDLen {
		return nil, fail(CodeBadRequest, "rollout_id longer than %d bytes", wire.MaxRolloutIDLen)
	}
	// Commands change no state, but they leave the broker: the audit
	// record is made durable first, and the commands are sent after it
	// (its result says the request was accepted; the reply says which
	// devices were reached).
	if err := c.commit(func(store.Tx) error { return nil }); err != nil {
		return nil, err
	}
	res := &commandResult{Results: []delivery.OfferResult{}}
	c.after = append(c.after, func() {
		res.Results = s.dlv.Command(req.Devices, wire.Command{Verb: v, RolloutID: req.RolloutID, NotAfter: req.NotAfter})
	})
	return res, nil
}

// commandResult is filled by command/send's effect, before the reply is
// encoded.
type commandResult struct {
	Results []delivery.OfferResult `json:"results"`
}

type timelineRequest struct {
	ID    string `json:"id"`
	Limit int    `json:"limit,omitempty"`
	// Before is the cursor: the next of the page before.
	Before string `json:"before,omitempty"`
}

// timelineItem is a timeline entry with the cursor that continues after it.
type timelineItem struct {
	delivery.Entry
	cursor string
}

// deviceTimeline lists a device's timeline newest first.
func deviceTimeline(_ context.Context, s *Service, c *call) (any, error) {
	var req timelineRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	c.target, c.args = req.ID, req
	if _, err := s.deviceView(req.ID); err != nil {
		return nil, err
	}
	if req.Limit < 0 {
		return nil, fail(CodeBadRequest, "limit %d: want 1 or more", req.Limit)
	}
	entries, cursors, more, err := s.dlv.TimelinePage(req.ID, req.Before, req.Limit)
	if err != nil {
		return nil, err
	}
	items := make([]timelineItem, len(entries))
	for i := range entries {
		items[i] = timelineItem{Entry: entries[i], cursor: cursors[i]}
	}
	p := &page[timelineItem]{key: "entries", items: items, next: "", cursor: func(it timelineItem) any { return it.cursor }}
	if more {
		p.next = cursors[len(cursors)-1]
	}
	return p, nil
}
