package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runCmd runs the root command with args and stdin, as the binary would.
func runCmd(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetArgs(args)
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&errOut)
	err = root.Execute()
	return out.String(), errOut.String(), err
}

const manifestsIn = `# keep me
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: apps}
spec:
  template:
    spec:
      containers:
        - name: web
          image: nginx:1.27 # pinned later
---
apiVersion: v1
kind: Service
metadata: {name: web}
---
apiVersion: v1
kind: Pod
metadata: {name: own, namespace: pullbroker}
spec:
  containers: [{name: c, image: nginx}]
`

func TestRewriteCommand(t *testing.T) {
	stdout, stderr, err := runCmd(t, manifestsIn, "rewrite", "--proxy-host", "localhost:30500", "--namespace", "pullbroker")
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Replace(manifestsIn, "image: nginx:1.27 #", "image: localhost:30500/docker.io/library/nginx:1.27 #", 1)
	if stdout != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", stdout, want)
	}
	if !strings.Contains(stderr, "-:10 apps/Deployment/web container web: nginx:1.27 -> localhost:30500/docker.io/library/nginx:1.27") {
		t.Errorf("stderr %q does not report the change", stderr)
	}

	// From a file, back into it.
	path := filepath.Join(t.TempDir(), "m.yaml")
	if err := os.WriteFile(path, []byte(manifestsIn), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runCmd(t, "", "rewrite", "--proxy-host", "localhost:30500", "--namespace", "pullbroker", "-f", path, "-o", path); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); string(got) != want {
		t.Errorf("file:\n%s", got)
	}
}

func TestRewriteCommandRejects(t *testing.T) {
	for name, args := range map[string][]string{
		"no proxy host":    {"rewrite"},
		"bad proxy host":   {"rewrite", "--proxy-host", "pullbroker"},
		"bad rule":         {"rewrite", "--proxy-host", "p.example", "--rule", "docker.io"},
		"missing file":     {"rewrite", "--proxy-host", "p.example", "-f", "/nonexistent/m.yaml"},
		"unknown upstream": {"rewrite", "--proxy-host", "p.example", "--registry", "nowhere.example"},
	} {
		if _, _, err := runCmd(t, "", args...); err == nil {
			t.Errorf("%s: succeeded", name)
		}
	}
	if _, _, err := runCmd(t, "a: [", "rewrite", "--proxy-host", "p.example"); err == nil {
		t.Error("invalid YAML accepted")
	}
}
