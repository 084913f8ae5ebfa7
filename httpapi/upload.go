package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"time"

	"github.com/otamq/otamq/ota/admin"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/release"
	"github.com/otamq/otamq/ota/wire"
)

// Uploads. POST /api/v1/releases takes a multipart/form-data body with
// two parts in this order: "manifest" (the signed manifest) and "image"
// (the image, streamed). The adapter sends them to the admin verb
// release/upload as MQTT clients do: the manifest begins (or resumes) the
// upload, then the image goes in parts of release.MaxPartSize at the
// offset the broker expects, each durable before the next; an upload that
// resumes skips what the broker holds. So one HTTP request is one upload,
// with the same checks, audit records and limits, and a request that
// breaks off leaves a resumable upload (the same request again continues
// it). POST /api/v1/releases/upload is the verb itself, one CBOR request
// per call, for clients that drive the parts themselves.

// multipartOverhead bounds what a multipart body adds to its two parts.
const multipartOverhead = 64 * 1024

// uploadState is the part of a release/upload reply the adapter reads.
type uploadState struct {
	Upload *struct {
		ID     string `json:"id"`
		Size   uint64 `json:"size"`
		Offset uint64 `json:"offset"`
	} `json:"upload"`
	Done bool `json:"done"`
}

// releaseUpload is release/upload as one CBOR request (admin.DecodeUpload).
func (a *API) releaseUpload(w http.ResponseWriter, r *http.Request, c *caller) {
	if aerr := a.svc.Authorize(c.Caller, "release/upload"); aerr != nil {
		writeError(w, aerr)
		return
	}
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/cbor" {
		writeError(w, &admin.Error{Code: codeMediaType, Message: "release/upload takes a CBOR body (Content-Type: application/cbor); a whole image goes to POST /api/v1/releases as multipart/form-data"})
		return
	}
	body, aerr := readBody(w, r, admin.MaxUploadBody)
	if aerr != nil {
		a.rec.UploadRejected(aerr.Code)
		writeError(w, aerr)
		return
	}
	resp := a.run(w, r, admin.Request{Caller: c.Caller, Resource: "release", Verb: "upload", Body: body})
	if !resp.OK && resp.Error != nil {
		a.rec.UploadRejected(resp.Error.Code)
	}
}

// releaseCreate is a whole upload in one multipart request.
func (a *API) releaseCreate(w http.ResponseWriter, r *http.Request, c *caller) {
	resp := a.upload(w, r, c)
	if !resp.OK && resp.Error != nil {
		a.rec.UploadRejected(resp.Error.Code)
	}
	writeResponse(w, resp)
}

func bad(code, format string, args ...any) admin.Response {
	return admin.Response{Error: &admin.Error{Code: code, Message: fmt.Sprintf(format, args...)}}
}

func (a *API) upload(w http.ResponseWriter, r *http.Request, c *caller) admin.Response {
	if aerr := a.svc.Authorize(c.Caller, "release/upload"); aerr != nil {
		return admin.Response{Error: aerr}
	}
	ct, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || ct != "multipart/form-data" || params["boundary"] == "" {
		return bad(codeMediaType, "an upload is multipart/form-data with the parts manifest and image (curl -F manifest=@FILE -F image=@FILE)")
	}
	limit := int64(a.o.MaxImageSize) + wire.MaxManifestSize + multipartOverhead
	if r.ContentLength > limit {
		return admin.Response{Error: tooLarge(r.ContentLength, limit)}
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.o.UploadTimeout)
	defer cancel()
	mr := multipart.NewReader(http.MaxBytesReader(w, r.Body, limit), params["boundary"])
	part := func(name string) (*multipart.Part, admin.Response, bool) {
		p, err := mr.NextPart()
		if err != nil {
			return nil, readFailure(err, limit, "the "+name+" part"), false
		}
		if p.FormName() != name {
			return nil, bad(admin.CodeBadRequest, "part %s where %s was expected: the parts are manifest, then image", fleet.Quote(p.FormName()), name), false
		}
		return p, admin.Response{}, true
	}
	mp, resp, ok := part("manifest")
	if !ok {
		return resp
	}
	signed, err := io.ReadAll(io.LimitReader(mp, wire.MaxManifestSize+1))
	if err != nil {
		return readFailure(err, limit, "the manifest")
	}
	if len(signed) > wire.MaxManifestSize {
		return admin.Response{Error: &admin.Error{Code: admin.CodeTooLarge, Message: fmt.Sprintf("the manifest is over %d bytes", wire.MaxManifestSize), Limit: wire.MaxManifestSize}}
	}
	resp, st := a.uploadCall(ctx, c, admin.UploadPart{Manifest: signed})
	if !resp.OK || st.Done {
		return resp
	}
	if st.Upload == nil {
		return bad(admin.CodeInternal, "release/upload began no upload")
	}
	ip, resp, ok := part("image")
	if !ok {
		return resp
	}
	id, off := st.Upload.ID, st.Upload.Offset
	// A resumed upload: what the broker holds is skipped.
	if n, err := io.CopyN(io.Discard, ip, int64(off)); err != nil {
		if errors.Is(err, io.EOF) {
			return bad(admin.CodeSizeMismatch, "the image has %d bytes; the upload %s already holds %d", n, id, off)
		}
		return readFailure(err, limit, "the image")
	}
	buf := make([]byte, release.MaxPartSize)
	for {
		n, rerr := io.ReadFull(ip, buf)
		if n > 0 {
			resp, st = a.uploadCall(ctx, c, admin.UploadPart{Upload: id, Offset: off, HasOffset: true, Data: buf[:n]})
			if !resp.OK || st.Done {
				return resp
			}
			if st.Upload == nil {
				return bad(admin.CodeInternal, "release/upload answered a part without the upload")
			}
			off = st.Upload.Offset
		}
		switch {
		case rerr == nil:
			continue
		case errors.Is(rerr, io.EOF), errors.Is(rerr, io.ErrUnexpectedEOF):
			return bad(admin.CodeSizeMismatch, "the image ended at %d bytes, short of the manifest's %d; upload %s stays: send the same request again to resume it, or DELETE /api/v1/uploads/%s",
				off, st.Upload.Size, id, id)
		default:
			return readFailure(rerr, limit, "the image")
		}
	}
}

// uploadCall sends one release/upload request, waiting out the admin rate
// limit (a large image is more parts than a burst).
func (a *API) uploadCall(ctx context.Context, c *caller, p admin.UploadPart) (admin.Response, uploadState) {
	body, err := admin.EncodeUpload(p)
	if err != nil {
		return bad(admin.CodeInternal, "encode upload request: %v", err), uploadState{}
	}
	for {
		resp, code := a.svc.Handle(ctx, admin.Request{Caller: c.Caller, Resource: "release", Verb: "upload", Body: body})
		if code == admin.CodeRateLimited && resp.Error != nil {
			t := time.NewTimer(time.Duration(resp.Error.RetryAfterMS) * time.Millisecond)
			select {
			case <-t.C:
				continue
			case <-ctx.Done():
				t.Stop()
				return bad(admin.CodeUnavailable, "upload timed out waiting for the rate limit: %v", ctx.Err()), uploadState{}
			}
		}
		result := "ok"
		if code != "" {
			result = code
		}
		a.rec.AdminRequest("release/upload", result)
		var st uploadState
		if resp.OK {
			b, _ := json.Marshal(resp.Result)
			if err := json.Unmarshal(b, &st); err != nil {
				return bad(admin.CodeInternal, "read release/upload reply: %v", err), uploadState{}
			}
		}
		return resp, st
	}
}

// readFailure is the reply to a body that could not be read.
func readFailure(err error, limit int64, what string) admin.Response {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return admin.Response{Error: tooLarge(0, limit)}
	}
	return bad(admin.CodeBadRequest, "%s: %v", what, err)
}
