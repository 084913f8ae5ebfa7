package admin

import (
	"context"
	"slices"

	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/store"
)

// The device/* verbs manage devices and gateways.

type idRequest struct {
	ID string `json:"id"`
}

// deviceOf returns the registration of id if it is a device or gateway.
func (s *Service) deviceView(id string) (fleet.View, error) {
	if id == "" {
		return fleet.View{}, fail(CodeBadRequest, "id missing")
	}
	v, ok := s.fleet.Get(id)
	if !ok || !v.Role.IsDevice() {
		return fleet.View{}, fail(CodeNotFound, "no device %s", quote(id))
	}
	return v, nil
}

func deviceGet(_ context.Context, s *Service, c *call) (any, error) {
	var req idRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	c.target, c.args = req.ID, req
	v, err := s.deviceView(req.ID)
	if err != nil {
		return nil, err
	}
	return s.item(v), nil
}

// deviceItem is a device as device/get and device/list return it: its
// registration, its status and, if it has one, its current offer with the
// download's progress.
type deviceItem struct {
	fleet.View
	Offer *otaInfo `json:"offer,omitempty"`
}

// otaInfo is a device's current offer and how far its download has come
// (from the offset its heartbeats report while downloading).
type otaInfo struct {
	RolloutID string `json:"rollout_id"`
	Release   string `json:"release"`
	Version   string `json:"version"`
	// Size is the image's size.
	Size uint64 `json:"size,omitempty"`
	// Downloaded and Progress (percent of Size) are set while the device
	// reports a download offset.
	Downloaded *uint64 `json:"downloaded,omitempty"`
	Progress   *int    `json:"progress,omitempty"`
}

func (s *Service) item(v fleet.View) deviceItem {
	return deviceItem{View: v, Offer: s.otaOf(&v.Status, v.ID)}
}

// otaOf returns device id's current offer and download progress, nil if it
// has no offer (or the release verbs are off).
func (s *Service) otaOf(st *fleet.Status, id string) *otaInfo {
	if s.dlv == nil {
		return nil
	}
	of, ok := s.dlv.Current(id)
	if !ok {
		return nil
	}
	info := &otaInfo{RolloutID: of.RolloutID, Release: of.Release, Version: of.Version}
	if r, ok := s.cat.Release(of.Release); ok {
		info.Size = r.Size
	}
	if off := st.DownloadOffset; off != nil && info.Size > 0 {
		d := min(*off, info.Size)
		p := int(d * 100 / info.Size)
		info.Downloaded, info.Progress = &d, &p
	}
	return info
}

type listRequest struct {
	Role         fleet.Role `json:"role,omitempty"`
	Hardware     string     `json:"hardware,omitempty"`
	Region       string     `json:"region,omitempty"`
	Connectivity string     `json:"connectivity,omitempty"`
	Group        string     `json:"group,omitempty"`
	Tag          string     `json:"tag,omitempty"`
	Parent       string     `json:"parent,omitempty"`
	Firmware     string     `json:"firmware,omitempty"`
	Online       *bool      `json:"online,omitempty"`
	Revoked      *bool      `json:"revoked,omitempty"`
	After        string     `json:"after,omitempty"`
	Limit        int        `json:"limit,omitempty"`
}

func (r *listRequest) filter(allowed ...fleet.Role) (fleet.Filter, error) {
	roles := allowed
	if r.Role != "" {
		if !slices.Contains(allowed, r.Role) {
			return fleet.Filter{}, fail(CodeBadRequest, "role %s: this list takes %v", quote(string(r.Role)), allowed)
		}
		roles = []fleet.Role{r.Role}
	}
	if r.Limit < 0 || r.Limit > fleet.MaxListLimit {
		return fleet.Filter{}, fail(CodeBadRequest, "limit %d: want 1..%d", r.Limit, fleet.MaxListLimit)
	}
	return fleet.Filter{
		Roles: roles, Hardware: r.Hardware, Region: r.Region, Connectivity: r.Connectivity, Group: r.Group,
		Tag: r.Tag, Parent: r.Parent, Firmware: r.Firmware, Online: r.Online, Revoked: r.Revoked,
		After: r.After, Limit: r.Limit,
	}, nil
}

func deviceList(_ context.Context, s *Service, c *call) (any, error) {
	var req listRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	c.args = req
	f, err := req.filter(fleet.RoleDevice, fleet.RoleGateway)
	if err != nil {
		return nil, err
	}
	views, next := s.fleet.List(f)
	items := make([]deviceItem, len(views))
	for i, v := range views {
		items[i] = s.item(v)
	}
	// "next" is the cursor of the following page ("after"), "" on the
	// last.
	return &page[deviceItem]{key: "devices", items: items, next: next, cursor: func(d deviceItem) any { return d.ID }}, nil
}

type updateRequest struct {
	ID string `json:"id"`
	fleet.Change
	// RotateToken issues a new token; the old one stops working at once.
	RotateToken bool `json:"rotate_token,omitempty"`
}

func deviceUpdate(_ context.Context, s *Service, c *call) (any, error) {
	var req updateRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	c.target, c.args = req.ID, req
	if _, err := s.deviceView(req.ID); err != nil {
		return nil, err
	}
	var token string
	var secret fleet.Secret
	if req.RotateToken {
		token = fleet.NewToken()
		secret = fleet.TokenSecret(token)
	}
	var dev fleet.Device
	err := c.commit(func(tx store.Tx) error {
		d, err := s.fleet.Update(tx, req.ID, req.Change, secret, c.req.Caller.ID)
		dev = d
		return err
	})
	if err != nil {
		return nil, err
	}
	if req.RotateToken {
		// A session opened with the old token ends now.
		c.after = append(c.after, func() { s.kick.Disconnect(req.ID, "") })
	}
	return deviceResult{Device: dev, Token: token}, nil
}

type revokeRequest struct {
	ID     string `json:"id"`
	Reason string `json:"reason,omitempty"`
}

func deviceRevoke(_ context.Context, s *Service, c *call) (any, error) {
	var req revokeRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	c.target, c.args = req.ID, req
	if _, err := s.deviceView(req.ID); err != nil {
		return nil, err
	}
	return s.revoke(c, req)
}

func (s *Service) revoke(c *call, req revokeRequest) (any, error) {
	var dev fleet.Device
	err := c.commit(func(tx store.Tx) error {
		d, err := s.fleet.Revoke(tx, req.ID, req.Reason, c.req.Caller.ID)
		dev = d
		if err == nil && !d.Role.IsDevice() {
			err = s.endSessions(tx, req.ID, Caller{})
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	c.after = append(c.after, func() { s.kick.Disconnect(req.ID, "") })
	return map[string]any{"device": dev}, nil
}
