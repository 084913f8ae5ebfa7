package fleet

import (
	"hash/maphash"
	"sync"
)

const shardCount = 64

// index is a map of entries by ID, split into shards with a lock each.
type index struct {
	seed   maphash.Seed
	once   sync.Once
	shards [shardCount]shard
}

type shard struct {
	mu sync.RWMutex // guards m
	m  map[string]*entry
	_  [40]byte // keeps neighbouring shards' locks off one cache line
}

func (x *index) shard(id string) *shard {
	x.once.Do(func() { x.seed = maphash.MakeSeed() })
	return &x.shards[maphash.String(x.seed, id)%shardCount]
}

func (x *index) load(id string) *entry {
	s := x.shard(id)
	s.mu.RLock()
	e := s.m[id]
	s.mu.RUnlock()
	return e
}

func (x *index) store(id string, e *entry) {
	s := x.shard(id)
	s.mu.Lock()
	if s.m == nil {
		s.m = make(map[string]*entry)
	}
	s.m[id] = e
	s.mu.Unlock()
}

// upsert calls f on the entry of id, creating it first if needed, under the
// shard's lock.
func (x *index) upsert(id string, f func(*entry)) {
	s := x.shard(id)
	s.mu.Lock()
	if s.m == nil {
		s.m = make(map[string]*entry)
	}
	e := s.m[id]
	if e == nil {
		e = &entry{}
		s.m[id] = e
	}
	f(e)
	s.mu.Unlock()
}

func (x *index) len() int {
	n := 0
	for i := range x.shards {
		s := &x.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}

// each calls f for every entry; f must not call back into the index.
func (x *index) each(f func(id string, e *entry)) {
	for i := range x.shards {
		s := &x.shards[i]
		s.mu.RLock()
		for id, e := range s.m {
			f(id, e)
		}
		s.mu.RUnlock()
	}
}
