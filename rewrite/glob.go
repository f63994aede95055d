package rewrite

import (
	"path"
	"strings"
)

// globPattern matches slash-separated names: each component as path.Match
// does, and a "**" component matches any number of components, none
// included. Image names are matched per component so that "*" never
// silently crosses into another namespace.
type globPattern []string

func compileGlob(pattern string) (globPattern, error) {
	g := globPattern(strings.Split(pattern, "/"))
	for _, part := range g {
		// path.Match reports a malformed pattern only when it gets that
		// far, so check each part against an empty name.
		if _, err := path.Match(part, ""); err != nil {
			return nil, err
		}
	}
	return g, nil
}

func (g globPattern) match(name string) bool {
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
