// Package glob matches slash-separated names such as repository paths:
// each component as path.Match does, and a "**" component matches any
// number of components, none included. Matching per component keeps "*"
// from silently crossing into another namespace.
package glob

import (
	"path"
	"strings"
)

// Pattern is a compiled glob.
type Pattern []string

// Compile checks every component of pattern.
func Compile(pattern string) (Pattern, error) {
	g := Pattern(strings.Split(pattern, "/"))
	for _, part := range g {
		// path.Match reports a malformed pattern only when it gets that
		// far, so check each part against an empty name.
		if _, err := path.Match(part, ""); err != nil {
			return nil, err
		}
	}
	return g, nil
}

// Match reports whether name matches.
func (g Pattern) Match(name string) bool {
	return matchParts(g, strings.Split(name, "/"))
}

func matchParts(pattern, name []string) bool {
	for len(pattern) > 0 {
		if pattern[0] == "**" {
			for skip := 0; skip <= len(name); skip++ {
				if matchParts(pattern[1:], name[skip:]) {
					return true
				}
			}
			return false
		}
		if len(name) == 0 {
			return false
		}
		if ok, _ := path.Match(pattern[0], name[0]); !ok {
			return false
		}
		pattern, name = pattern[1:], name[1:]
	}
	return len(name) == 0
}
