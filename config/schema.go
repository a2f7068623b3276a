package config

import (
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"
)

// shape describes what a key may hold.
type shape struct {
	kind   yaml.Kind         // ScalarNode, SequenceNode or MappingNode
	keys   []string          // MappingNode: known keys, in documentation order
	fields map[string]*shape // MappingNode: shape of each key
	elem   *shape            // SequenceNode: shape of each item
	// alt is another shape the key may have instead (journal: a path,
	// or a mapping with dir and max_bytes).
	alt *shape
}

type field struct {
	name  string
	shape *shape
}

var scalar = &shape{kind: yaml.ScalarNode}

func listOf(elem *shape) *shape { return &shape{kind: yaml.SequenceNode, elem: elem} }

func mappingOf(fields ...field) *shape {
	s := &shape{kind: yaml.MappingNode, fields: map[string]*shape{}}
	for _, f := range fields {
		s.keys = append(s.keys, f.name)
		s.fields[f.name] = f.shape
	}
	return s
}

func scalars(names ...string) []field {
	fs := make([]field, len(names))
	for i, n := range names {
		fs[i] = field{n, scalar}
	}
	return fs
}

// schema is the shape of the whole file.
var schema = mappingOf(
	field{"mount", scalar},
	field{"store", scalar},
	field{"journal", &shape{kind: yaml.ScalarNode, alt: mappingOf(scalars("dir", "max_bytes")...)}},
	field{"control", scalar},
	field{"exclude", listOf(scalar)},
	field{"batch", mappingOf(scalars("delay", "max_ops", "hold_open")...)},
	field{"retry", mappingOf(scalars("min", "max")...)},
	field{"log", mappingOf(scalars("level")...)},
	field{"ssh", mappingOf(
		field{"user", scalar},
		field{"identity", listOf(scalar)},
		field{"known_hosts", scalar},
		field{"connect_timeout", scalar},
	)},
	field{"workers", listOf(mappingOf(scalars("name", "host", "port", "root", "user", "transport")...))},
)

// checkShape reports unknown keys and values of the wrong kind (a list
// where a mapping belongs, ...) in the parsed document root, and records
// the line of every key it meets in lines.
//
// It returns the keys present with no value (`store:`, `store: ~`), which
// count as absent.
func checkShape(root *yaml.Node, lines map[string]int, p *problems) (nulls map[string]bool) {
	nulls = map[string]bool{}
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return nulls // empty file
		}
		root = root.Content[0]
	}
	w := shapeWalker{lines: lines, nulls: nulls, p: p}
	w.walk(root, schema, "")
	return nulls
}

type shapeWalker struct {
	lines map[string]int
	nulls map[string]bool
	p     *problems
}

func (w shapeWalker) walk(n *yaml.Node, s *shape, key string) {
	n = deref(n)
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		w.nulls[key] = true
		return // present but empty: same as absent
	}
	if n.Kind != s.kind && s.alt != nil && n.Kind == s.alt.kind {
		s = s.alt
	}
	if n.Kind != s.kind {
		name := key
		if name == "" {
			name = "(top level)"
		}
		w.p.add(name, "must be %s, got %s", kindName(s.kind), kindName(n.Kind))
		return
	}
	switch s.kind {
	case yaml.SequenceNode:
		for i, item := range n.Content {
			k := fmt.Sprintf("%s[%d]", key, i)
			w.lines[k] = item.Line
			w.walk(item, s.elem, k)
		}
	case yaml.MappingNode:
		w.mapping(n, s, key, false)
	}
}

// mapping checks the keys of mapping node n. merged is true for the keys
// of a mapping merged in with "<<", whose lines do not replace those of
// keys written in place.
func (w shapeWalker) mapping(n *yaml.Node, s *shape, key string, merged bool) {
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := n.Content[i], n.Content[i+1]
		if kn.Tag == "!!merge" {
			w.merge(deref(vn), s, key)
			continue
		}
		child := kn.Value
		if key != "" {
			child = key + "." + kn.Value
		}
		if _, seen := w.lines[child]; !seen || !merged {
			w.lines[child] = kn.Line
		}
		sub, ok := s.fields[kn.Value]
		if !ok {
			w.p.add(child, "unknown key%s", suggest(kn.Value, s))
			continue
		}
		w.walk(vn, sub, child)
	}
}

// merge checks what a "<<" key merges: a mapping or a list of mappings.
func (w shapeWalker) merge(vn *yaml.Node, s *shape, key string) {
	switch vn.Kind {
	case yaml.MappingNode:
		w.mapping(vn, s, key, true)
	case yaml.SequenceNode:
		for _, item := range vn.Content {
			if item = deref(item); item.Kind == yaml.MappingNode {
				w.mapping(item, s, key, true)
			}
		}
	}
	// Anything else is an error yaml.Unmarshal has already reported.
}

// suggest says which keys s knows, for an "unknown key" message.
func suggest(name string, s *shape) string {
	lower := strings.ToLower(name)
	if _, ok := s.fields[lower]; ok && lower != name {
		return fmt.Sprintf(" (keys are lower case: %s)", lower)
	}
	return fmt.Sprintf(" (want one of: %s)", strings.Join(s.keys, ", "))
}

func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.ScalarNode:
		return "a single value"
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	}
	return "something else"
}
