package delivery

import (
	"slices"
	"strings"
	"time"

	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/wire"
)

// held is an offer as the service keeps it in memory, one per device with
// an offer (a rollout in flight to every device of a fleet keeps one for
// each). What the offers of one rollout pass share (rollout, release,
// version, digest, install mode, block size, who made them and the
// device's recent rollouts) is kept once, in an offerCommon they point to;
// the device is the map's key. 32 bytes a device instead of an Offer's
// 200 and more.
type held struct {
	c         *offerCommon
	created   int64  // Unix nanoseconds
	deadline  uint64 // Unix seconds, 0 for none
	cancelled bool
}

// offerCommon is what the held offers of one kind share, counted so that
// it is dropped with its last offer.
type offerCommon struct {
	key     commonKey
	recent  []string
	holders int
}

// commonKey identifies an offerCommon: recent is the recent rollouts
// joined by a zero byte (rollout IDs hold none).
type commonKey struct {
	rollout, release, version, by, recent string
	digest                                manifest.Digest
	mode                                  wire.InstallMode
	block                                 uint32
}

// hold keeps of as device of.Device's offer, in place of the one it had.
// Callers hold s.mu for writing.
func (s *Service) hold(of *Offer) { s.holdLike(of, nil) }

// holdLike is hold, given the common of the offer held before it (nil
// if none): the offers of one call are mostly of one kind, and telling
// that from like's fields is cheaper than joining and hashing the key. It
// returns of's common.
func (s *Service) holdLike(of *Offer, like *offerCommon) *offerCommon {
	var c *offerCommon
	if like != nil && like.holders > 0 && like.is(of) {
		c = like
	} else {
		c = s.common(of)
	}
	c.holders++
	if old, ok := s.offers[of.Device]; ok {
		s.unhold(old.c)
	}
	s.offers[of.Device] = held{c: c, created: of.Created.UnixNano(), deadline: of.Deadline, cancelled: of.Cancelled}
	return c
}

// is reports whether of is of c's kind.
func (c *offerCommon) is(of *Offer) bool {
	k := &c.key
	return k.rollout == of.RolloutID && k.release == of.Release && k.version == of.Version && k.by == of.By &&
		k.digest == of.Digest && k.mode == of.InstallMode && k.block == of.BlockSize && slices.Equal(c.recent, of.Recent)
}

// common returns the common of of's kind, made when there is none.
func (s *Service) common(of *Offer) *offerCommon {
	k := commonKey{rollout: of.RolloutID, release: of.Release, version: of.Version, by: of.By,
		recent: strings.Join(of.Recent, "\x00"), digest: of.Digest, mode: of.InstallMode, block: of.BlockSize}
	c := s.commons[k]
	if c == nil {
		c = &offerCommon{key: k, recent: of.Recent}
		if len(c.recent) == 0 {
			c.recent = nil
		}
		s.commons[k] = c
	}
	return c
}

// unhold drops one holder of c, and c with its last. Callers hold s.mu
// for writing.
func (s *Service) unhold(c *offerCommon) {
	if c.holders--; c.holders == 0 {
		delete(s.commons, c.key)
	}
}

// offer returns device id's held offer h as an Offer (its Recent shared
// with the other offers of its kind: callers must not change it).
func (h held) offer(id string) Offer {
	k := &h.c.key
	return Offer{Device: id, RolloutID: k.rollout, Release: k.release, Version: k.version, Digest: k.digest,
		InstallMode: k.mode, BlockSize: k.block, Deadline: h.deadline, Created: time.Unix(0, h.created).UTC(),
		By: k.by, Recent: h.c.recent, Cancelled: h.cancelled}
}
