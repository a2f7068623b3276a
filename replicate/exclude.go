package replicate

import (
	"fmt"
	"path"
	"strings"
)

// Excluder matches paths against gitignore-style patterns:
//
//   - a pattern without a slash (other than a trailing one) matches the
//     base name at any depth: "*.tmp", ".git";
//   - a leading "/" or an inner slash anchors it to the root: "/cache",
//     "var/log/*.log";
//   - a trailing "/" matches directories (and so everything beneath them):
//     "node_modules/";
//   - "*", "?" and "[...]" are path.Match wildcards within one element; "**"
//     as a whole element matches any number of elements.
//
// A path under an excluded directory is excluded. Blank lines and lines
// starting with "#" are ignored; negation ("!") is not supported.
type Excluder struct {
	pats []pattern
}

type pattern struct {
	text     string
	anchored bool
	dirOnly  bool
	elems    []string // anchored: the pattern split on "/"
}

// NewExcluder compiles patterns. A nil *Excluder excludes nothing.
func NewExcluder(patterns []string) (*Excluder, error) {
	e := &Excluder{}
	for _, raw := range patterns {
		p := strings.TrimSpace(raw)
		if p == "" || strings.HasPrefix(p, "#") {
			continue
		}
		if strings.HasPrefix(p, "!") {
			return nil, fmt.Errorf("exclude pattern %q: negation is not supported", raw)
		}
		pt := pattern{text: raw}
		if strings.HasSuffix(p, "/") {
			pt.dirOnly = true
			p = strings.TrimRight(p, "/")
		}
		if strings.HasPrefix(p, "/") {
			pt.anchored = true
			p = strings.TrimLeft(p, "/")
		}
		if strings.Contains(p, "/") {
			pt.anchored = true
		}
		if p == "" {
			return nil, fmt.Errorf("exclude pattern %q: matches the root", raw)
		}
		if pt.anchored {
			pt.elems = strings.Split(p, "/")
			for _, el := range pt.elems {
				if _, err := path.Match(el, ""); err != nil {
					return nil, fmt.Errorf("exclude pattern %q: %w", raw, err)
				}
			}
		} else if _, err := path.Match(p, ""); err != nil {
			return nil, fmt.Errorf("exclude pattern %q: %w", raw, err)
		}
		if !pt.anchored {
			pt.elems = []string{p}
		}
		e.pats = append(e.pats, pt)
	}
	return e, nil
}

// Excluded reports whether the store path p (relative, slash-separated)
// is excluded; isDir says whether p itself is a directory.
func (e *Excluder) Excluded(p string, isDir bool) bool {
	if e == nil || len(e.pats) == 0 || p == "" {
		return false
	}
	elems := strings.Split(p, "/")
	for i := 1; i <= len(elems); i++ {
		dir := i < len(elems) || isDir
		for _, pt := range e.pats {
			if pt.match(elems[:i], dir) {
				return true
			}
		}
	}
	return false
}

func (pt pattern) match(elems []string, isDir bool) bool {
	if pt.dirOnly && !isDir {
		return false
	}
	if !pt.anchored {
		ok, _ := path.Match(pt.elems[0], elems[len(elems)-1])
		return ok
	}
	return matchElems(pt.elems, elems)
}

func matchElems(pat, name []string) bool {
	for len(pat) > 0 {
		if pat[0] == "**" {
			if len(pat) == 1 {
				return len(name) > 0 // a trailing "/**" matches inside only
			}
			for i := 0; i <= len(name); i++ {
				if matchElems(pat[1:], name[i:]) {
					return true
				}
			}
			return false
		}
		if len(name) == 0 {
			return false
		}
		if ok, _ := path.Match(pat[0], name[0]); !ok {
			return false
		}
		pat, name = pat[1:], name[1:]
	}
	return len(name) == 0
}
