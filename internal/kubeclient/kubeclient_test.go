package kubeclient

import (
	"os"
	"path/filepath"
	"testing"
)

func TestNamespaceOfTheCurrentContext(t *testing.T) {
	for _, tt := range []struct{ context, want string }{
		{"namespace: team-a", "team-a"},
		{"", "default"},
	} {
		path := filepath.Join(t.TempDir(), "kubeconfig")
		kubeconfig := `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u, ` + tt.context + `}}]
current-context: x
`
		if err := os.WriteFile(path, []byte(kubeconfig), 0o600); err != nil {
			t.Fatal(err)
		}
		if ns, err := Namespace(path); err != nil || ns != tt.want {
			t.Fatalf("context {%s}: namespace %q, %v; want %q", tt.context, ns, err, tt.want)
		}
	}
	if _, err := Namespace(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("a missing kubeconfig gave a namespace")
	}
}
