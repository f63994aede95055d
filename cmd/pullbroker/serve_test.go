package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/testenv"
	"github.com/pullbroker/pullbroker/rewrite/webhook"
)

// writePair writes a fresh self-signed pair for 127.0.0.1 into dir
// (dir/tls.crt, dir/tls.key) and returns its CA.
func writePair(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	ss, err := webhook.GenerateSelfSigned([]string{"127.0.0.1"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	testenv.WriteCertPair(t, dir, ss.CertPEM, ss.KeyPEM)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ss.CAPEM)
	return pool
}

// TestServeTLSWithHTTP2AndCertificateReload runs serve as the command does:
// TLS with HTTP/2 on the client listener, a renewed certificate picked up
// without a restart, and a clean exit when the context ends (SIGTERM).
func TestServeTLSWithHTTP2AndCertificateReload(t *testing.T) {
	dir := t.TempDir()
	firstCA := writePair(t, dir)
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	addr := freeAddr(t)
	cfgFile := filepath.Join(dir, "config.yaml")
	err := os.WriteFile(cfgFile, []byte(fmt.Sprintf(`
listen: {addr: %q, tlsCertFile: %q, tlsKeyFile: %q, drainTimeout: 5s}
admin: {addr: ""}
storage: {driver: inmemory, parameters: {}}
`, addr, certFile, keyFile)), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(t.Context())
	done := make(chan error, 1)
	logs := &testenv.SyncBuffer{}
	go func() { done <- serve(ctx, cfg, newLogger(cfg.Log, logs)) }()

	get := func(roots *x509.CertPool) (*http.Response, error) {
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: roots},
			ForceAttemptHTTP2: true,
		}}
		return client.Get("https://" + addr + "/v2/")
	}
	var resp *http.Response
	for deadline := time.Now().Add(10 * time.Second); ; {
		if resp, err = get(firstCA); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("GET /v2/ over TLS: %v\n%s", err, logs)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		t.Fatalf("GET /v2/: %s over %s, want 200 over HTTP/2", resp.Status, resp.Proto)
	}

	secondCA := writePair(t, dir)
	var renewed bool
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if resp, err := get(secondCA); err == nil {
			resp.Body.Close()
			renewed = true
			break
		}
	}
	if !renewed {
		t.Fatal("the renewed certificate was not served within 10s")
	}

	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve after the context ended: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not return after its context ended")
	}
}

func TestServeRefusesUnreadableTokenFile(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{
		filepath.Join(dir, "missing"): "admin.tokenFile: open " + filepath.Join(dir, "missing"),
		empty:                         "admin.tokenFile: " + empty + " is empty",
	} {
		cfgFile := filepath.Join(dir, "config.yaml")
		err := os.WriteFile(cfgFile, []byte(fmt.Sprintf(`
listen: {addr: "127.0.0.1:0"}
admin: {addr: "127.0.0.1:0", tokenFile: %q}
storage: {driver: inmemory, parameters: {}}
`, file)), 0o600)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(cfgFile)
		if err != nil {
			t.Fatal(err)
		}
		err = serve(t.Context(), cfg, newLogger(cfg.Log, io.Discard))
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("serve with tokenFile %s: %v, want %q", file, err, want)
		}
	}
}
