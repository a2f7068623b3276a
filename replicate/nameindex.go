package replicate

// nameIndex finds the identities of a fold that have a name at or under a
// path without visiting every identity: dropName, move and the lookups run
// once or twice per op, so scanning all identities made a fold quadratic in
// a batch's files (BenchmarkPlan: 10,000 ops of a 2,000-page deploy took
// 276 ms). Names counts both Names and Free of each identity.
type nameIndex struct {
	at    map[string]map[*ident]int // name -> identities holding it (times held)
	below map[string]int            // directory -> indexed names strictly below it
}

func newNameIndex() nameIndex {
	return nameIndex{at: map[string]map[*ident]int{}, below: map[string]int{}}
}

// add indexes the names of id; remove takes them out again. Callers remove
// an identity before changing its names and add it back afterwards.
func (x *nameIndex) add(id *ident)    { x.each(id, 1) }
func (x *nameIndex) remove(id *ident) { x.each(id, -1) }

func (x *nameIndex) each(id *ident, d int) {
	for _, n := range id.Names {
		x.name(id, n, d)
	}
	for n := range id.Free {
		x.name(id, n, d)
	}
}

func (x *nameIndex) name(id *ident, n string, d int) {
	m := x.at[n]
	if m == nil {
		m = map[*ident]int{}
		x.at[n] = m
	}
	if m[id] += d; m[id] <= 0 {
		delete(m, id)
		if len(m) == 0 {
			delete(x.at, n)
		}
	}
	for dir := parentDir(n); dir != ""; dir = parentDir(dir) {
		if x.below[dir] += d; x.below[dir] <= 0 {
			delete(x.below, dir)
		}
	}
}

// holders returns the identities with a name at or under p (p not the
// root), from all when some name lies below p.
func (x *nameIndex) holders(p string, all map[uint64]*ident) []*ident {
	if x.below[p] > 0 {
		ids := make([]*ident, 0, len(all))
		for _, id := range all {
			ids = append(ids, id)
		}
		return ids
	}
	m := x.at[p]
	ids := make([]*ident, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	return ids
}

// pathSet is a fold's map from paths to values (attributes to copy,
// directories, paths to refresh…) that finds the keys at or under a path
// without scanning them all, for the same reason as nameIndex: every op
// asks, and most keys are unrelated.
type pathSet[V any] struct {
	m     map[string]V
	below map[string]int // directory -> keys strictly below it
}

func newPathSet[V any]() pathSet[V] {
	return pathSet[V]{m: map[string]V{}, below: map[string]int{}}
}

func (s *pathSet[V]) put(p string, v V) {
	if _, ok := s.m[p]; !ok {
		s.count(p, 1)
	}
	s.m[p] = v
}

func (s *pathSet[V]) del(p string) {
	if _, ok := s.m[p]; ok {
		delete(s.m, p)
		s.count(p, -1)
	}
}

func (s *pathSet[V]) has(p string) bool {
	_, ok := s.m[p]
	return ok
}

func (s *pathSet[V]) count(p string, d int) {
	for dir := parentDir(p); dir != ""; dir = parentDir(dir) {
		if s.below[dir] += d; s.below[dir] <= 0 {
			delete(s.below, dir)
		}
	}
}

// under returns the keys at or under p (p not the root).
func (s *pathSet[V]) under(p string) []string {
	if s.below[p] == 0 {
		if s.has(p) {
			return []string{p}
		}
		return nil
	}
	var ks []string
	for k := range s.m {
		if under(k, p) {
			ks = append(ks, k)
		}
	}
	return ks
}

// dropUnder removes the keys at or under p.
func (s *pathSet[V]) dropUnder(p string) {
	for _, k := range s.under(p) {
		s.del(k)
	}
}

// move renames the keys at or under from to be under to, replacing keys
// already there.
func (s *pathSet[V]) move(from, to string) {
	ks := s.under(from)
	vs := make([]V, len(ks))
	for i, k := range ks {
		vs[i] = s.m[k]
		s.del(k)
	}
	for i, k := range ks {
		s.put(reparent(k, from, to), vs[i])
	}
}

// remap rebuilds the set with every key passed through f.
func (s *pathSet[V]) remap(f func(string) string) {
	old := s.m
	*s = newPathSet[V]()
	for k, v := range old {
		s.put(f(k), v)
	}
}
