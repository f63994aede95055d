package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
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

// startServe runs serve on the config cfgYAML until stop, which ends its
// context and returns what serve returned (an error after 10 s without).
func startServe(t *testing.T, cfgYAML string) (logs *testenv.SyncBuffer, stop func() error) {
	t.Helper()
	cfgFile := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfgFile, []byte(cfgYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	logs = &testenv.SyncBuffer{}
	go func() { done <- serve(ctx, cfg, newLogger(cfg.Log, logs)) }()
	return logs, func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			return errors.New("serve did not return within 10 s after its context ended")
		}
	}
}

// TestServeTLSWithHTTP2AndCertificateReload runs serve as the command does:
// TLS with HTTP/2 on the client listener, a renewed certificate picked up
// without a restart, and a clean exit when the context ends (SIGTERM).
func TestServeTLSWithHTTP2AndCertificateReload(t *testing.T) {
	dir := t.TempDir()
	firstCA := writePair(t, dir)
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	addr, adminAddr := freeAddr(t), freeAddr(t)
	logs, stop := startServe(t, fmt.Sprintf(`
listen: {addr: %q, tlsCertFile: %q, tlsKeyFile: %q, drainTimeout: 5s}
admin: {addr: %q, tlsCertFile: %q, tlsKeyFile: %q}
storage: {driver: inmemory, parameters: {}}
`, addr, certFile, keyFile, adminAddr, certFile, keyFile))

	getURL := func(roots *x509.CertPool, url string) (*http.Response, error) {
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: roots},
			ForceAttemptHTTP2: true,
		}}
		return client.Get(url)
	}
	get := func(roots *x509.CertPool) (*http.Response, error) { return getURL(roots, "https://"+addr+"/v2/") }
	var (
		resp *http.Response
		err  error
	)
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
	// The admin listener serves TLS too (admin.tlsCertFile), and only TLS.
	if resp, err = getURL(firstCA, "https://"+adminAddr+"/readyz"); err != nil {
		t.Fatalf("GET /readyz over TLS: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /readyz over TLS: %s", resp.Status)
	}
	if resp, err = http.Get("http://" + adminAddr + "/readyz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("the TLS admin listener answered plain HTTP")
		}
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
	if resp, err := getURL(secondCA, "https://"+adminAddr+"/healthz"); err != nil {
		t.Fatalf("admin listener after renewal: %v", err)
	} else {
		resp.Body.Close()
	}

	if err := stop(); err != nil {
		t.Fatalf("serve after the context ended: %v", err)
	}
}

// TestServeBoundsHeadersAndIdleConnections runs serve with short timeouts
// and checks, on both listeners, what a client that sends too much or
// nothing gets: 431 for an oversized header block, a closed connection
// after idleTimeout on an idle keep-alive connection and after
// readHeaderTimeout on a request that never ends its headers.
func TestServeBoundsHeadersAndIdleConnections(t *testing.T) {
	addr, adminAddr := freeAddr(t), freeAddr(t)
	logs, stop := startServe(t, fmt.Sprintf(`
listen: {addr: %q, drainTimeout: 5s, maxHeaderBytes: 65536, readHeaderTimeout: 500ms, idleTimeout: 500ms}
admin: {addr: %q}
storage: {driver: inmemory, parameters: {}}
`, addr, adminAddr))
	t.Cleanup(func() { _ = stop() })

	for _, tc := range []struct{ addr, path string }{{addr, "/v2/"}, {adminAddr, "/healthz"}} {
		url := "http://" + tc.addr + tc.path
		var (
			resp *http.Response
			err  error
		)
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if resp, err = http.Get(url); err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Fatalf("GET %s: %v\n%s", url, err, logs)
		}
		resp.Body.Close()

		// A registry token is a few KiB: accepted. 100 KiB is not.
		for size, want := range map[int]int{8 << 10: http.StatusOK, 100 << 10: http.StatusRequestHeaderFieldsTooLarge} {
			req, _ := http.NewRequest(http.MethodGet, url, nil)
			req.Header.Set("Authorization", "Bearer "+strings.Repeat("t", size))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("GET %s with a %d-byte header: %v", url, size, err)
			}
			resp.Body.Close()
			if resp.StatusCode != want {
				t.Errorf("GET %s with a %d-byte header: %s, want %d", url, size, resp.Status, want)
			}
		}

		// An idle keep-alive connection is closed by the server.
		conn, err := net.Dial("tcp", tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", tc.path)
		br := bufio.NewReader(conn)
		resp, err = http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if stillOpenAfter(t, conn, br, 5*time.Second) {
			t.Errorf("%s: idle keep-alive connection still open after 5s, idleTimeout 500ms", tc.addr)
		}

		// Headers that never end: closed after readHeaderTimeout.
		conn, err = net.Dial("tcp", tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\n", tc.path)
		if stillOpenAfter(t, conn, bufio.NewReader(conn), 5*time.Second) {
			t.Errorf("%s: unfinished request still open after 5s, readHeaderTimeout 500ms", tc.addr)
		}
	}
}

// stillOpenAfter reports whether the server left conn open for d
// (reads until EOF or a reset; a timeout means still open), then closes it.
func stillOpenAfter(t *testing.T, conn net.Conn, br *bufio.Reader, d time.Duration) (stillOpen bool) {
	t.Helper()
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, br)
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestReadinessReusesTheStorageProbe: probes within readinessValidFor
// share one storage write; a failure is reported, and the next probe
// after the window checks again.
func TestReadinessReusesTheStorageProbe(t *testing.T) {
	now := time.Now()
	var probes int
	var fail error
	r := &readiness{
		check: func(context.Context) error { probes++; return fail },
		now:   func() time.Time { return now },
	}
	for range 5 {
		if err := r.storageWritable(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if probes != 1 {
		t.Fatalf("5 readiness checks within the window wrote to storage %d times, want 1", probes)
	}
	fail = errors.New("disk full")
	now = now.Add(readinessValidFor)
	if err := r.storageWritable(t.Context()); err == nil || probes != 2 {
		t.Fatalf("after the window: err %v, probes %d, want the new failure from a second probe", err, probes)
	}
	now = now.Add(time.Second)
	if err := r.storageWritable(t.Context()); err == nil || probes != 2 {
		t.Fatalf("within the window: err %v, probes %d, want the remembered failure", err, probes)
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

// TestServePeerListener: with cluster.peerListen, serve runs the peer listener beside the others:
// it refuses a request without the token and answers one with it, the registry port does not
// serve the peer protocol, /readyz is ready once the peer set is known, and the drain closes the
// peer listener. A peer list without this replica, or an empty token file, fails the start with
// the key named.
func TestServePeerListener(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "peer-token")
	if err := os.WriteFile(tokenFile, []byte("peer-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, adminAddr, peerAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	_, stop := startServe(t, fmt.Sprintf(`
listen: {addr: %q, drainTimeout: 5s}
admin: {addr: %q}
storage: {driver: inmemory, parameters: {}}
disableDefaultUpstreams: true
defaultUpstream: ""
cluster: {peers: [%q, "127.0.0.1:1"], peerListen: %q, peerTokenFile: %q}
`, addr, adminAddr, peerAddr, peerAddr, tokenFile))
	peerPath := "/peer/v1/blobs/sha256:" + strings.Repeat("a", 64) + "?registry=docker.io&repository=library/x"
	status := func(url, token string) int {
		t.Helper()
		var resp *http.Response
		deadline := time.Now().Add(5 * time.Second)
		for {
			req, err := http.NewRequest(http.MethodGet, url, nil)
			if err != nil {
				t.Fatal(err)
			}
			if token != "" {
				req.Header.Set("Authorization", "Bearer "+token)
			}
			if resp, err = http.DefaultClient.Do(req); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET %s: %v", url, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := status("http://"+peerAddr+peerPath, ""); got != http.StatusUnauthorized {
		t.Errorf("peer request without the token: %d, want 401", got)
	}
	// Not cached, and no upstream is configured: the owner says it cannot serve it, so the
	// asking replica would fetch it itself.
	if got := status("http://"+peerAddr+peerPath, "peer-secret"); got != http.StatusServiceUnavailable {
		t.Errorf("peer request with the token for a blob of no configured upstream: %d, want 503", got)
	}
	if got := status("http://"+addr+peerPath, "peer-secret"); got == http.StatusOK || got == http.StatusUnauthorized {
		t.Errorf("the registry port answered a peer request with %d", got)
	}
	if got := status("http://"+adminAddr+"/readyz", ""); got != http.StatusOK {
		t.Errorf("/readyz with a static peer set: %d, want 200", got)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if conn, err := net.Dial("tcp", peerAddr); err == nil {
		conn.Close()
		t.Error("the peer listener still accepts connections after the drain")
	}

	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ peers, token, want string }{
		{`["127.0.0.1:1"]`, tokenFile, "cluster.peers does not list this replica's peer listener"},
		{fmt.Sprintf("[%q]", peerAddr), empty, "cluster.peerTokenFile: " + empty + " is empty"},
	} {
		cfgFile := filepath.Join(dir, "config.yaml")
		err := os.WriteFile(cfgFile, []byte(fmt.Sprintf(`
listen: {addr: "127.0.0.1:0"}
admin: {addr: "127.0.0.1:0"}
storage: {driver: inmemory, parameters: {}}
cluster: {peers: %s, peerListen: %q, peerTokenFile: %q}
`, tc.peers, peerAddr, tc.token)), 0o600)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(cfgFile)
		if err != nil {
			t.Fatal(err)
		}
		if err := serve(t.Context(), cfg, newLogger(cfg.Log, io.Discard)); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("serve with peers %s and token file %s: %v, want %q", tc.peers, tc.token, err, tc.want)
		}
	}
}
