package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pullbroker/pullbroker/config"
)

// startProxy runs serve on loopback with an admin token, until the test
// ends, and returns the config file, the admin address and the token file.
func startProxy(t *testing.T) (cfgFile, adminAddr, tokenFile string) {
	t.Helper()
	dir := t.TempDir()
	tokenFile = filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("admin-token-7q2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	adminAddr = freeAddr(t)
	cfgFile = filepath.Join(dir, "config.yaml")
	err := os.WriteFile(cfgFile, []byte(fmt.Sprintf(`
listen: {addr: %q}
admin: {addr: %q, tokenFile: %q}
storage: {driver: inmemory, parameters: {}}
log: {level: error}
`, freeAddr(t), adminAddr, tokenFile)), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- serve(ctx, cfg, newLogger(cfg.Log, io.Discard)) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + adminAddr + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("admin listener did not come up: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cfgFile, adminAddr, tokenFile
}

func TestPinUsesGlobalConfigAndJSONOutput(t *testing.T) {
	cfgFile, adminAddr, tokenFile := startProxy(t)
	for name, args := range map[string][]string{
		"--config":          {"-c", cfgFile, "pin", "list", "-o", "json"},
		"--admin host:port": {"pin", "--admin", adminAddr, "--token-file", tokenFile, "list", "-o", "json"},
		"--admin URL":       {"pin", "--admin", "http://" + adminAddr + "/", "--token-file", tokenFile, "list", "-o", "json"},
	} {
		out, _, err := runCmd(t, "", args...)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		var got struct {
			Pins []json.RawMessage `json:"pins"`
		}
		if err := json.Unmarshal([]byte(out), &got); err != nil || got.Pins == nil {
			t.Errorf("%s: -o json printed %q (%v), want {\"pins\": []}", name, out, err)
		}
	}
	if out, _, err := runCmd(t, "", "-c", cfgFile, "pin", "list"); err != nil || !strings.HasPrefix(out, "IMAGE") {
		t.Errorf("pin list: %q, %v", out, err)
	}
}

func TestPinConfigErrorsNameTheKey(t *testing.T) {
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "config.yaml")
	missing := filepath.Join(dir, "no-token")
	if err := os.WriteFile(cfgFile, []byte(fmt.Sprintf("admin: {addr: ':5001', tokenFile: %q}\n", missing)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := runCmd(t, "", "--config", cfgFile, "pin", "list")
	if err == nil || !strings.Contains(err.Error(), "admin.tokenFile in "+cfgFile) {
		t.Errorf("pin list with an unreadable admin.tokenFile: %v", err)
	}
	_, _, err = runCmd(t, "", "pin", "--admin", "not a host", "--token-file", cfgFile, "list")
	if err == nil || !strings.Contains(err.Error(), "want a URL") {
		t.Errorf("--admin garbage: %v", err)
	}
}

// The admin API answers DELETE of a pin that does not exist with 404 and
// a JSON error; pin rm says so and fails.
func TestPinRemoveMissing(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodDelete {
			http.Error(w, "unexpected", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"error":"docker.io/library/nginx:1.27 is not pinned"}`)
	}))
	t.Cleanup(srv.Close)
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("t"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := runCmd(t, "", "pin", "--admin", srv.URL, "--token-file", token, "rm", "docker.io/library/nginx:1.27")
	if err == nil || !strings.Contains(err.Error(), "docker.io/library/nginx:1.27 is not pinned: nothing removed") {
		t.Errorf("pin rm of a missing pin: %v", err)
	}
}
