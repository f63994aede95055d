package auth

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullbroker/pullbroker/config"
)

func basicUpstream(b *config.BasicCredentials) config.Upstream {
	return config.Upstream{
		Name:        "registry.example.com",
		Endpoint:    "https://registry.example.com",
		Credentials: &config.Credentials{Basic: b},
	}
}

func TestAnonymous(t *testing.T) {
	src, err := For(context.Background(), config.Upstream{Name: "ghcr.io", Endpoint: "https://ghcr.io"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if src.Kind() != KindAnonymous || !src.Healthy() {
		t.Fatalf("kind %s healthy %v", src.Kind(), src.Healthy())
	}
	a, err := src.Authorization()
	if err != nil || *a != (authn.AuthConfig{}) {
		t.Fatalf("anonymous Authorization = %+v, %v", a, err)
	}
}

func TestBasicInlineAndEnv(t *testing.T) {
	src, err := For(context.Background(), basicUpstream(&config.BasicCredentials{Username: "alice", Password: "inline-pw"}), Options{})
	if err != nil {
		t.Fatal(err)
	}
	expectAuth(t, src, "alice", "inline-pw")

	env := map[string]string{"PB_TOKEN": "env-token\n", "PB_EMPTY": ""}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	src, err = For(context.Background(), basicUpstream(&config.BasicCredentials{Username: "bob", PasswordEnv: "PB_TOKEN"}), Options{LookupEnv: lookup})
	if err != nil {
		t.Fatal(err)
	}
	expectAuth(t, src, "bob", "env-token")

	for _, name := range []string{"PB_UNSET", "PB_EMPTY"} {
		_, err = For(context.Background(), basicUpstream(&config.BasicCredentials{Username: "bob", PasswordEnv: name}), Options{LookupEnv: lookup})
		if err == nil || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "registry.example.com") {
			t.Fatalf("For with env %s: %v", name, err)
		}
	}
}

// TestBasicPasswordFileRotation rewrites the password file in place and by
// rename (as a Kubernetes volume does) and breaks it: a good new content is
// used on the next call, a bad one keeps the last good password.
func TestBasicPasswordFileRotation(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "password")
	if err := os.WriteFile(file, []byte("pw-one\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	log, logs := newTestLogger(t)
	up := basicUpstream(&config.BasicCredentials{Username: "alice", PasswordFile: file})
	src, err := For(context.Background(), up, Options{Logger: log, Registerer: reg, FileCheckInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	expectAuth(t, src, "alice", "pw-one")

	// In place (size changes, so the mtime granularity does not matter).
	if err := os.WriteFile(file, []byte("pw-two-longer"), 0o600); err != nil {
		t.Fatal(err)
	}
	expectAuth(t, src, "alice", "pw-two-longer")

	// By rename.
	tmp := filepath.Join(dir, "password.new")
	if err := os.WriteFile(tmp, []byte("pw-3"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
	expectAuth(t, src, "alice", "pw-3")
	if got := metricValue(t, reg, metricReloads, up.Name); got != 3 {
		t.Fatalf("reloads = %v, want 3", got)
	}

	// Empty: refused, the last good one stays.
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	expectAuth(t, src, "alice", "pw-3")
	if src.Healthy() || metricValue(t, reg, metricHealthy, up.Name) != 0 || metricValue(t, reg, metricErrors, up.Name) != 1 {
		t.Fatal("an empty password file did not mark the source unhealthy")
	}
	// Removed: the same.
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	expectAuth(t, src, "alice", "pw-3")
	if got := metricValue(t, reg, metricErrors, up.Name); got != 2 {
		t.Fatalf("errors = %v, want 2", got)
	}
	// Back: used again.
	if err := os.WriteFile(file, []byte("pw-5\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	expectAuth(t, src, "alice", "pw-5")
	if !src.Healthy() || metricValue(t, reg, metricHealthy, up.Name) != 1 {
		t.Fatal("not healthy again")
	}
	if !strings.Contains(logs.String(), "keeping the last good credential") {
		t.Fatalf("no log line about the kept credential:\n%s", logs)
	}
	assertNoSecrets(t, []string{"pw-one", "pw-two-longer", "pw-3", "pw-5"}, logs.String(), metricsText(t, reg))
}

// TestFileCheckInterval: with an interval the file is looked at most once
// per interval, and a change is picked up after that.
func TestFileCheckInterval(t *testing.T) {
	file := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(file, []byte("a"), 0o600); err != nil {
		t.Fatal(err)
	}
	src, err := For(context.Background(), basicUpstream(&config.BasicCredentials{Username: "u", PasswordFile: file}), Options{FileCheckInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte("bb"), 0o600); err != nil {
		t.Fatal(err)
	}
	expectAuth(t, src, "u", "a")
	eventually(t, 2*time.Second, "rotation", func() bool {
		a, err := src.Authorization()
		return err == nil && a.Password == "bb"
	})
}
