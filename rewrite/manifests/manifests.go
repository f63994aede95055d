// Package manifests rewrites the images of Pods and Pod templates in
// Kubernetes YAML ahead of time, for GitOps users who would rather commit
// proxy image names than run the admission webhook.
//
// Only the image values change, byte for byte in place: comments, key order,
// quoting, indentation and every document that holds nothing to rewrite come
// out exactly as they went in, so the diff a rewrite makes in Git is the
// images and nothing else.
package manifests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"unicode/utf8"

	yaml "go.yaml.in/yaml/v3"

	"github.com/pullbroker/pullbroker/rewrite"
)

// Change is one image rewritten.
type Change struct {
	// Object is "Kind/name" ("Deployment/web"); Namespace may be empty.
	Object, Namespace string
	Container         string
	From, To          string
	// Line is where the image is written in the input, 1-based.
	Line int
	// Warning is set when the tag could not be pinned to a digest.
	Warning string
}

// Rewrite rewrites the container, init container and ephemeral container
// images of Pods, PodTemplates, ReplicationControllers, Deployments,
// StatefulSets, DaemonSets, ReplicaSets, Jobs and CronJobs (also inside a
// v1 List) in a multi-document YAML stream. Objects that filter skips are
// left alone, judged by their namespace and by the labels and annotations
// of both the object and its Pod template.
func Rewrite(ctx context.Context, in []byte, rw *rewrite.Rewriter, filter rewrite.PodFilter) ([]byte, []Change, error) {
	var edits []edit
	var changes []Change
	dec := yaml.NewDecoder(bytes.NewReader(in))
	for doc := 1; ; doc++ {
		var root yaml.Node
		err := dec.Decode(&root)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("document %d: %w", doc, err)
		}
		if len(root.Content) == 0 {
			continue // only comments
		}
		w := walker{ctx: ctx, rw: rw, filter: filter}
		w.object(root.Content[0])
		edits, changes = append(edits, w.edits...), append(changes, w.changes...)
	}
	out, err := apply(in, edits)
	if err != nil {
		return nil, nil, err
	}
	return out, changes, nil
}

// edit replaces one scalar, found at its 1-based line and (character)
// column, keeping its quoting style.
type edit struct {
	line, column int
	style        yaml.Style
	anchor       string // "&name " precedes the value
	from, to     string
}

type walker struct {
	ctx     context.Context
	rw      *rewrite.Rewriter
	filter  rewrite.PodFilter
	edits   []edit
	changes []Change
}

// podSpecPaths says where each kind keeps its Pod spec, and which group its
// apiVersion must be in (a custom resource may reuse a kind name).
var podSpecPaths = map[string]struct {
	groups []string
	path   []string
}{
	"Pod":                   {[]string{""}, []string{"spec"}},
	"PodTemplate":           {[]string{""}, []string{"template", "spec"}},
	"ReplicationController": {[]string{""}, []string{"spec", "template", "spec"}},
	"Deployment":            {[]string{"apps", "extensions"}, []string{"spec", "template", "spec"}},
	"StatefulSet":           {[]string{"apps"}, []string{"spec", "template", "spec"}},
	"DaemonSet":             {[]string{"apps", "extensions"}, []string{"spec", "template", "spec"}},
	"ReplicaSet":            {[]string{"apps", "extensions"}, []string{"spec", "template", "spec"}},
	"Job":                   {[]string{"batch"}, []string{"spec", "template", "spec"}},
	"CronJob":               {[]string{"batch"}, []string{"spec", "jobTemplate", "spec", "template", "spec"}},
}

func (w *walker) object(n *yaml.Node) {
	if n.Kind != yaml.MappingNode {
		return
	}
	kind, apiVersion := scalar(lookup(n, "kind")), scalar(lookup(n, "apiVersion"))
	group, _, _ := strings.Cut(apiVersion, "/")
	if !strings.Contains(apiVersion, "/") {
		group = ""
	}
	if kind == "List" && group == "" {
		if items := lookup(n, "items"); items != nil && items.Kind == yaml.SequenceNode {
			for _, item := range items.Content {
				w.object(item)
			}
		}
		return
	}
	where, ok := podSpecPaths[kind]
	if !ok || !contains(where.groups, group) {
		return
	}
	meta := lookup(n, "metadata")
	namespace, name := scalar(lookup(meta, "namespace")), scalar(lookup(meta, "name"))
	// The template's metadata sits beside its spec.
	templateMeta := lookup(walk(n, where.path[:len(where.path)-1]), "metadata")
	if kind == "Pod" {
		templateMeta = nil
	}
	for _, m := range []*yaml.Node{meta, templateMeta} {
		if reason := w.filter.SkipReason(namespace, stringMap(lookup(m, "labels")), stringMap(lookup(m, "annotations"))); reason != "" {
			return
		}
	}
	spec := walk(n, where.path)
	for _, list := range []string{"initContainers", "containers", "ephemeralContainers"} {
		containers := lookup(spec, list)
		if containers == nil || containers.Kind != yaml.SequenceNode {
			continue
		}
		for _, c := range containers.Content {
			w.container(kind+"/"+name, namespace, c)
		}
	}
}

func (w *walker) container(object, namespace string, c *yaml.Node) {
	image := lookup(c, "image")
	if image != nil && image.Kind == yaml.AliasNode {
		image = image.Alias // rewrite the anchored value, wherever it is
	}
	if image == nil || image.Kind != yaml.ScalarNode {
		return
	}
	res := w.rw.Rewrite(w.ctx, image.Value)
	if !res.Changed {
		return
	}
	ch := Change{Object: object, Namespace: namespace, Container: scalar(lookup(c, "name")), From: image.Value, To: res.Image, Line: image.Line}
	if res.ResolveErr != nil {
		ch.Warning = res.ResolveErr.Error()
	}
	w.changes = append(w.changes, ch)
	w.edits = append(w.edits, edit{line: image.Line, column: image.Column, style: image.Style, anchor: image.Anchor, from: image.Value, to: res.Image})
}

// apply makes the edits on the input bytes, last first so that earlier
// offsets stay valid.
func apply(in []byte, edits []edit) ([]byte, error) {
	lineStarts := []int{0}
	for i, b := range in {
		if b == '\n' {
			lineStarts = append(lineStarts, i+1)
		}
	}
	type located struct {
		offset int
		edit
	}
	var all []located
	seen := map[int]bool{}
	for _, e := range edits {
		offset, err := offsetOf(in, lineStarts, e.line, e.column)
		if err != nil {
			return nil, err
		}
		if e.anchor != "" {
			// yaml places an anchored scalar at its "&name".
			if !bytes.HasPrefix(in[offset:], []byte("&"+e.anchor)) {
				return nil, fmt.Errorf("line %d: cannot find the anchor &%s of image %q", e.line, e.anchor, e.from)
			}
			offset += 1 + len(e.anchor)
			for offset < len(in) && (in[offset] == ' ' || in[offset] == '\t') {
				offset++
			}
		}
		if seen[offset] { // one anchored image used by several containers
			continue
		}
		seen[offset] = true
		all = append(all, located{offset, e})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].offset > all[j].offset })
	out := in
	if len(all) > 0 {
		out = bytes.Clone(in)
	}
	for _, e := range all {
		old, replacement, err := quoted(e.edit)
		if err != nil {
			return nil, err
		}
		if !bytes.HasPrefix(out[e.offset:], []byte(old)) {
			return nil, fmt.Errorf("line %d: image %q is not written as a simple scalar (block scalar or escapes); rewrite it by hand", e.line, e.from)
		}
		out = append(out[:e.offset], append([]byte(replacement), out[e.offset+len(old):]...)...)
	}
	return out, nil
}

// offsetOf turns yaml's 1-based line and character column into a byte
// offset.
func offsetOf(in []byte, lineStarts []int, line, column int) (int, error) {
	if line < 1 || line > len(lineStarts) {
		return 0, fmt.Errorf("line %d is outside the input", line)
	}
	offset := lineStarts[line-1]
	for range column - 1 {
		if offset >= len(in) {
			return 0, fmt.Errorf("line %d column %d is outside the input", line, column)
		}
		_, size := utf8.DecodeRune(in[offset:])
		offset += size
	}
	return offset, nil
}

// quoted returns how the old value is written and how the new one will be,
// in the same style. Image references hold no character that needs
// escaping in any of the three styles.
func quoted(e edit) (old, replacement string, err error) {
	switch e.style {
	case 0, yaml.FlowStyle:
		return e.from, e.to, nil
	case yaml.DoubleQuotedStyle:
		return `"` + e.from + `"`, `"` + e.to + `"`, nil
	case yaml.SingleQuotedStyle:
		return "'" + e.from + "'", "'" + e.to + "'", nil
	default:
		return "", "", fmt.Errorf("line %d: image %q is written as a block scalar; rewrite it by hand", e.line, e.from)
	}
}

// lookup returns the value of key in a mapping node, or nil.
func lookup(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

func walk(n *yaml.Node, path []string) *yaml.Node {
	for _, key := range path {
		n = lookup(n, key)
	}
	return n
}

func scalar(n *yaml.Node) string {
	if n == nil || n.Kind != yaml.ScalarNode {
		return ""
	}
	return n.Value
}

func stringMap(n *yaml.Node) map[string]string {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	m := map[string]string{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		m[n.Content[i].Value] = scalar(n.Content[i+1])
	}
	return m
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
