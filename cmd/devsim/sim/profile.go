package sim

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
)

// Profile is how a simulated device behaves. The misbehaviours of an
// update (BadHealth, BootLoop, Rollback, Silent, Mute) belong to the image
// the device updates to, and only to images whose version
// DeviceSpec.FaultVersions lists (all, when it lists none): the device's
// factory image is healthy.
type Profile uint8

const (
	// Healthy updates, passes its trial and commits.
	Healthy Profile = iota
	// BadHealth: the new image boots and connects, but its application
	// check fails (heartbeats without the "app ok" flag); when the trial
	// times out the agent reports 12 (health failed) and 13 (rollback
	// triggered), and comes back on the old slot with boot reason rollback,
	// state rolled back and event 14.
	BadHealth
	// BootLoop: the new image boots, connects (birth in state trial) and
	// crashes Timing.CrashAfter later, again and again, without its health
	// check ever passing; its bootloader boots an unconfirmed image again
	// instead of reverting at once (a boot counter, as U-Boot's bootlimit),
	// so the agent's reboot trigger fires: more than Timing.MaxReboots boots
	// roll it back. That rollback is decided at boot, before the device is
	// online; events 12 and 13 wait in its kv store and go out, with 14
	// (boot failure, "reboot loop"), once the old image is connected, its
	// boot reason rollback.
	BootLoop
	// Rollback: the new image crashes before the agent runs; the
	// bootloader goes back to the old slot. Events 13 and 14 (boot failure,
	// "new image did not confirm"), boot reason rollback.
	Rollback
	// Silent: after the update's reboot the device never connects again.
	Silent
	// Mute: after the update's reboot the device connects and then sends
	// nothing (no birth, no heartbeat, no event, no subscription), only
	// MQTT keepalives.
	Mute
	// Slow fetches blocks over a slow link: at most DeviceSpec.SlowRate
	// bytes per second (default Config.SlowRate).
	Slow
	// OfflineWindow loses its connection every day during
	// DeviceSpec.Offline (default Config.Offline), in its local time.
	OfflineWindow
	// WrongHardware reports DeviceSpec.Hardware, which the fleet's releases
	// do not target (cmd/devsim: --wrong-hardware): it refuses their offers
	// (event 15, hardware mismatch).
	WrongHardware
	// TooOld runs an old version (cmd/devsim: --old-version) that needs a
	// stepping stone before the current release.
	TooOld
	profileCount
)

var profileNames = [profileCount]string{"healthy", "bad-health", "boot-loop", "rollback", "silent", "mute", "slow",
	"offline-window", "wrong-hardware", "too-old"}

func (p Profile) String() string {
	if p < profileCount {
		return profileNames[p]
	}
	return "profile_" + strconv.Itoa(int(p))
}

// Profiles returns every profile, in order.
func Profiles() []Profile {
	out := make([]Profile, profileCount)
	for i := range out {
		out[i] = Profile(i)
	}
	return out
}

// ParseProfile returns the profile named s.
func ParseProfile(s string) (Profile, error) {
	for i, n := range profileNames {
		if n == s {
			return Profile(i), nil
		}
	}
	return 0, fmt.Errorf("profile %q: want one of %s", s, strings.Join(profileNames[:], ", "))
}

// MarshalText implements encoding.TextMarshaler.
func (p Profile) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Profile) UnmarshalText(b []byte) error {
	v, err := ParseProfile(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// Weighted is one choice of a mix and its weight.
type Weighted[T any] struct {
	Value  T
	Weight int
}

// Mix is a weighted choice, such as "healthy=90,bad-health=5,boot-loop=5".
type Mix[T any] []Weighted[T]

// ParseMix reads "NAME=WEIGHT,NAME=WEIGHT,..." (a name alone weighs 1) with
// parse for the names. Weights are non-negative integers, not all zero; a
// name may appear once.
func ParseMix[T any](s string, parse func(string) (T, error)) (Mix[T], error) {
	var m Mix[T]
	seen := map[string]bool{}
	total := 0
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, w, hasW := strings.Cut(part, "=")
		weight := 1
		if hasW {
			n, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(w), "%")))
			if err != nil || n < 0 {
				return nil, fmt.Errorf("%q: the weight %q is not a non-negative integer", part, w)
			}
			weight = n
		}
		name = strings.TrimSpace(name)
		if seen[name] {
			return nil, fmt.Errorf("%q appears twice", name)
		}
		seen[name] = true
		v, err := parse(name)
		if err != nil {
			return nil, err
		}
		m = append(m, Weighted[T]{v, weight})
		total += weight
	}
	if len(m) == 0 {
		return nil, fmt.Errorf("%q: want NAME=WEIGHT[,NAME=WEIGHT...]", s)
	}
	if total == 0 {
		return nil, fmt.Errorf("%q: the weights add up to 0", s)
	}
	return m, nil
}

// Counts splits n items by the mix's weights: largest remainders, ties to
// the earlier entry, so the counts always add up to n.
func (m Mix[T]) Counts(n int) []int {
	total := 0
	for _, w := range m {
		total += w.Weight
	}
	counts := make([]int, len(m))
	if total == 0 {
		return counts
	}
	rem := make([]int, len(m))
	given := 0
	for i, w := range m {
		counts[i] = n * w.Weight / total
		rem[i] = n * w.Weight % total
		given += counts[i]
	}
	order := make([]int, len(m))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return rem[b] - rem[a] })
	for i := 0; given < n; i++ {
		counts[order[i%len(order)]]++
		given++
	}
	return counts
}

// Assign gives each of n items a value of the mix, in exact proportions
// (Counts), in an order that depends only on seed and salt: the same seed
// gives the same assignment, another seed (or salt) another one.
func (m Mix[T]) Assign(n int, seed uint64, salt string) []T {
	out := make([]T, 0, n)
	for i, c := range m.Counts(n) {
		for range c {
			out = append(out, m[i].Value)
		}
	}
	r := rand.New(rand.NewPCG(seed, hashString(salt)))
	r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

func hashString(s string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(s))
	return h.Sum64()
}
