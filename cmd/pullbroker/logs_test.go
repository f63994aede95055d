package main

import (
	"bufio"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestLogLinesHaveNoDuplicateKeys: the loggers handed to each package
// carry every attribute once, the upstream circuit line included.
func TestLogLinesHaveNoDuplicateKeys(t *testing.T) {
	w := startWired(t)
	w.upstream.Close()
	url := w.registry.URL + "/v2/upstream.test/" + testRepo + "/manifests/never-cached"
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(w.log.String(), "circuit opened") {
		if time.Now().After(deadline) {
			t.Fatalf("the circuit did not open:\n%s", w.log.String())
		}
		w.get(t, url, nil)
	}
	sc := bufio.NewScanner(strings.NewReader(w.log.String()))
	for sc.Scan() {
		if dup := duplicateKey(sc.Text()); dup != "" {
			t.Errorf("key %q twice in %s", dup, sc.Text())
		}
	}
}

// duplicateKey returns a key that occurs twice in one JSON object of the
// line (at any depth), or "".
func duplicateKey(line string) string {
	dec := json.NewDecoder(strings.NewReader(line))
	type frame struct {
		seen  map[string]bool
		isObj bool
		key   bool // the next string token is a key
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return ""
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		switch v := tok.(type) {
		case json.Delim:
			switch v {
			case '{', '[':
				if top != nil && top.isObj {
					top.key = true
				}
				stack = append(stack, &frame{seen: map[string]bool{}, isObj: v == '{', key: v == '{'})
			default:
				stack = stack[:len(stack)-1]
			}
			continue
		case string:
			if top != nil && top.isObj && top.key {
				if top.seen[v] {
					return v
				}
				top.seen[v] = true
				top.key = false
				continue
			}
		}
		if top != nil && top.isObj {
			top.key = true
		}
	}
}
