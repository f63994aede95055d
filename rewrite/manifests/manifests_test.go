package manifests

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/rewrite"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

const proxy = "pullbroker.example:5000"

func newRewriter(t *testing.T) *rewrite.Rewriter {
	t.Helper()
	rw, err := rewrite.New(rewrite.Options{
		ProxyHost: proxy,
		Upstreams: append(config.PublicUpstreams(), config.Upstream{Name: "registry.example.com:5000"}),
	})
	if err != nil {
		t.Fatal(err)
	}
	return rw
}

var filter = rewrite.PodFilter{ExcludeNamespaces: []string{"kube-system", "pullbroker"}}

func TestRewriteStream(t *testing.T) {
	in, err := os.ReadFile(filepath.Join("testdata", "input.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	out, changes, err := Rewrite(context.Background(), in, newRewriter(t), filter)
	if err != nil {
		t.Fatal(err)
	}
	goldenPath := filepath.Join("testdata", "output.golden.yaml")
	if *update {
		if err := os.WriteFile(goldenPath, out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(goldenPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, want) {
		t.Errorf("output differs from %s:\n%s", goldenPath, out)
	}

	var got []string
	for _, c := range changes {
		got = append(got, c.Object+" "+c.Container+" "+c.From+" -> "+c.To)
	}
	wantChanges := []string{
		"Pod/web init busybox -> " + proxy + "/docker.io/library/busybox:latest",
		"Pod/web web nginx:1.27 -> " + proxy + "/docker.io/library/nginx:1.27",
		"Pod/web sidecar ghcr.io/org/sidecar:v1 -> " + proxy + "/ghcr.io/org/sidecar:v1",
		"Pod/web flow quay.io/org/flow:2 -> " + proxy + "/quay.io/org/flow:2",
		"Deployment/api api registry.example.com:5000/team/api@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef -> " +
			proxy + "/registry.example.com_5000/team/api@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		"CronJob/nightly job alpine:3.20 -> " + proxy + "/docker.io/library/alpine:3.20",
		"CronJob/nightly again alpine:3.20 -> " + proxy + "/docker.io/library/alpine:3.20",
		"ReplicaSet/rs rs registry.k8s.io/pause:3.10 -> " + proxy + "/registry.k8s.io/pause:3.10",
		"ReplicaSet/rs debug busybox:1.36 -> " + proxy + "/docker.io/library/busybox:1.36",
	}
	if strings.Join(got, "\n") != strings.Join(wantChanges, "\n") {
		t.Errorf("changes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantChanges, "\n"))
	}

	// Still the same number of valid YAML documents.
	inDocs, outDocs := decodeAll(t, in), decodeAll(t, out)
	if len(inDocs) != len(outDocs) {
		t.Fatalf("%d documents in, %d out", len(inDocs), len(outDocs))
	}

	// Rewriting the output again changes nothing.
	again, changes, err := Rewrite(context.Background(), out, newRewriter(t), filter)
	if err != nil || !bytes.Equal(again, out) || len(changes) != 0 {
		t.Errorf("second rewrite: err %v, %d changes, same bytes %v", err, len(changes), bytes.Equal(again, out))
	}
}

func decodeAll(t *testing.T, b []byte) []any {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var docs []any
	for {
		var v any
		if err := dec.Decode(&v); err != nil {
			if err.Error() == "EOF" {
				return docs
			}
			t.Fatal(err)
		}
		docs = append(docs, v)
	}
}

func TestUntouchedInputIsReturnedAsIs(t *testing.T) {
	in := []byte("# nothing to do\r\napiVersion: v1\r\nkind: Service\r\nmetadata: {name: s}\r\n")
	out, changes, err := Rewrite(context.Background(), in, newRewriter(t), filter)
	if err != nil || !bytes.Equal(in, out) || len(changes) != 0 {
		t.Errorf("got %q, %v, %v", out, changes, err)
	}
}

func TestCRLF(t *testing.T) {
	in := []byte("apiVersion: v1\r\nkind: Pod\r\nmetadata: {name: p}\r\nspec:\r\n  containers:\r\n  - name: c\r\n    image: nginx # x\r\n")
	out, _, err := Rewrite(context.Background(), in, newRewriter(t), filter)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Replace(string(in), "image: nginx #", "image: "+proxy+"/docker.io/library/nginx:latest #", 1)
	if string(out) != want {
		t.Errorf("got %q, want %q", out, want)
	}
}

func TestBlockScalarImageIsAnError(t *testing.T) {
	in := []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: c\n    image: >-\n      nginx\n")
	if _, _, err := Rewrite(context.Background(), in, newRewriter(t), filter); err == nil || !strings.Contains(err.Error(), "line 7") {
		t.Errorf("err %v, want one naming line 7", err)
	}
}

func TestInvalidYAML(t *testing.T) {
	if _, _, err := Rewrite(context.Background(), []byte("a: [\n---\n"), newRewriter(t), filter); err == nil {
		t.Error("invalid YAML accepted")
	}
}
