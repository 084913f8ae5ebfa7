package sim

// The simulated board: ESP-IDF's otadata for the two application slots and
// the configuration store of kinds 1 and 2, as agent-c's POSIX port models
// them (agent-c/port/posix/sim.c). Checksums are left out: nothing here
// corrupts an entry.

// odState is an otadata entry's state (esp_ota_img_states_t).
type odState uint8

const (
	odNew odState = iota
	odPending
	odValid
	odInvalid
	odAborted
	odUndefined
)

// odEntry is one otadata entry: the slot it names is (seq-1)%2; seq 0 is
// an erased entry.
type odEntry struct {
	seq   uint32
	state odState
}

func (e odEntry) invalid() bool { return e.seq == 0 || e.state == odInvalid || e.state == odAborted }
func (e odEntry) slot() uint8   { return uint8((e.seq - 1) % 2) }

// otadata is the two entries.
type otadata [2]odEntry

// active is bootloader_common_get_active_otadata: the usable entry with
// the highest seq, or -1.
func (o *otadata) active() int {
	v0, v1 := !o[0].invalid(), !o[1].invalid()
	switch {
	case v0 && v1:
		if o[0].seq >= o[1].seq {
			return 0
		}
		return 1
	case v0:
		return 0
	case v1:
		return 1
	}
	return -1
}

// boot is the second-stage bootloader: every pending-verify entry becomes
// aborted (its one start was not confirmed), unless retry (a bootloader
// with a boot counter: BootLoop); the active entry's slot starts, a new
// one first becoming pending-verify; with no usable entry, slot 0. A slot
// without an image is passed over for the other. Returns the slot
// started, -1 when neither has an image.
func (o *otadata) boot(image [2]bool, retry bool) int {
	for i := range o {
		if o[i].state == odPending && o[i].seq != 0 && !retry {
			o[i].state = odAborted
		}
	}
	start, initial := uint8(0), false
	if o[0].invalid() && o[1].invalid() {
		initial = o[0].seq == 0 && o[1].seq == 0
	} else if a := o.active(); a >= 0 {
		start = o[a].slot()
		if o[a].state == odNew {
			o[a].state = odPending
		}
	}
	for i := range uint8(2) {
		s := start ^ i
		if !image[s] {
			continue
		}
		if initial {
			o[0] = odEntry{seq: uint32(s) + 1, state: odValid}
		}
		return int(s)
	}
	return -1
}

// stateOf is esp_ota_get_state_partition.
func (o *otadata) stateOf(slot uint8) (odState, bool) {
	for _, e := range o {
		if e.seq != 0 && e.slot() == slot {
			return e.state, true
		}
	}
	return 0, false
}

// setBoot is esp_ota_set_boot_partition: the entry that is not active gets
// the next seq naming slot, state new.
func (o *otadata) setBoot(slot uint8) {
	a := o.active()
	if a < 0 {
		o[0] = odEntry{seq: uint32(slot) + 1, state: odNew}
		return
	}
	seq := uint32((slot + 1) % 2)
	for o[a].seq > seq {
		seq += 2
	}
	o[a^1] = odEntry{seq: seq, state: odNew}
}

// rollbackPossible is esp_ota_check_rollback_is_possible.
func (o *otadata) rollbackPossible(image [2]bool) bool {
	a := o.active()
	if a < 0 {
		return false
	}
	last := o[a^1]
	return !last.invalid() && image[last.slot()]
}

// markValid is esp_ota_mark_app_valid_cancel_rollback.
func (o *otadata) markValid() bool {
	a := o.active()
	if a < 0 {
		return false
	}
	o[a].state = odValid
	return true
}

// markInvalid is esp_ota_mark_app_invalid_rollback (the caller restarts).
func (o *otadata) markInvalid(image [2]bool) bool {
	if !o.rollbackPossible(image) {
		return false
	}
	o[o.active()].state = odInvalid
	return true
}

// invalidateInactive is esp_ota_invalidate_inactive_ota_data_slot.
func (o *otadata) invalidateInactive(running uint8) bool {
	a := o.active()
	if a < 0 {
		return false
	}
	in := a ^ 1
	if o[in].seq == 0 || o[in].slot() == running {
		return false
	}
	o[in] = odEntry{}
	return true
}

// cfgNone: no configuration slot.
const cfgNone = 0xff

// blob is a configuration or feature-flag blob in a slot: what agent-c's
// simulated application makes of it (agent-c/README.md, "Simulated
// configurations").
type blob struct {
	version    string
	failHealth bool // it begins with "#fail-health"
	restart    bool // it begins with "#restart"
}

// cfgStore is one configuration kind's two slots and the record of which
// is active (ota_cfgdata_t).
type cfgStore struct {
	active, previous uint8
	state            odState // of the active slot: new, pending or valid
	blobs            [2]*blob
}

func newCfgStore() cfgStore { return cfgStore{active: cfgNone, previous: cfgNone, state: odValid} }

// boot is ota_cfgdata_boot: a pending configuration was started before and
// not confirmed, so the previous one is active again; a new one becomes
// pending.
func (c *cfgStore) boot() {
	switch {
	case c.active == cfgNone:
	case c.state == odPending:
		c.rollback()
	case c.state == odNew:
		c.state = odPending
	}
}

// activate puts slot in use now (pending) or at the next start (new).
func (c *cfgStore) activate(slot uint8, b *blob, atRestart bool) {
	c.previous = c.active
	if c.active == slot {
		c.previous = cfgNone
	}
	c.active, c.blobs[slot] = slot, b
	c.state = odPending
	if atRestart {
		c.state = odNew
	}
}

// rollback goes back to the previous configuration; the abandoned slot is
// forgotten.
func (c *cfgStore) rollback() {
	if c.active != cfgNone {
		c.blobs[c.active] = nil
	}
	c.active, c.previous, c.state = c.previous, cfgNone, odValid
}

// bootState is the port's boot_state for a configuration kind.
func (c *cfgStore) bootState() (slot uint8, st odState) {
	if c.active == cfgNone {
		return 1, c.state
	}
	return c.active, c.state
}

// inUse is the active blob, if any.
func (c *cfgStore) inUse() *blob {
	if c.active == cfgNone {
		return nil
	}
	return c.blobs[c.active]
}
