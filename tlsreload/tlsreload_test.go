package tlsreload

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// pair is a self-signed certificate for 127.0.0.1, told apart by serial.
type pair struct {
	serial       int64
	certPEM, key []byte
	leaf         *x509.Certificate
}

func newPair(t *testing.T, serial int64) pair {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: "tlsreload test"},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	parsed, _ := x509.ParseCertificate(der)
	return pair{
		serial:  serial,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		key:     pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		leaf:    parsed,
	}
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func serialOf(r *Reloader) int64 { return r.Certificate().Leaf.SerialNumber.Int64() }

func TestReloadInPlace(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	a, b := newPair(t, 1), newPair(t, 2)
	writeFile(t, certFile, a.certPEM)
	writeFile(t, keyFile, a.key)

	r, err := New(certFile, keyFile, WithCheckInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	if got := serialOf(r); got != 1 {
		t.Fatalf("serial %d, want 1", got)
	}

	// Half-way through a replacement the pair does not match: the old one
	// keeps serving.
	writeFile(t, certFile, b.certPEM)
	if got := serialOf(r); got != 1 {
		t.Fatalf("with a mismatched pair: serial %d, want the previous 1", got)
	}
	writeFile(t, keyFile, b.key)
	if got := serialOf(r); got != 2 {
		t.Fatalf("after replacing both: serial %d, want 2", got)
	}

	// Removed files: keep serving what was loaded.
	if err := os.Remove(certFile); err != nil {
		t.Fatal(err)
	}
	if got := serialOf(r); got != 2 {
		t.Fatalf("with the files gone: serial %d, want the previous 2", got)
	}
	if err := r.Reload(); err == nil {
		t.Fatal("Reload with the certificate file gone succeeded")
	}
}

// TestReloadSecretVolume replays how the kubelet updates a Secret volume:
// tls.crt -> ..data/tls.crt, and ..data is a symlink swapped by rename to a
// new timestamped directory.
func TestReloadSecretVolume(t *testing.T) {
	dir := t.TempDir()
	publish := func(version string, p pair) {
		ts := filepath.Join(dir, version)
		if err := os.Mkdir(ts, 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(ts, "tls.crt"), p.certPEM)
		writeFile(t, filepath.Join(ts, "tls.key"), p.key)
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(version, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	publish("..v1", newPair(t, 1))
	for _, f := range []string{"tls.crt", "tls.key"} {
		if err := os.Symlink(filepath.Join("..data", f), filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	r, err := New(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), WithCheckInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	publish("..v2", newPair(t, 2))
	if got := serialOf(r); got != 2 {
		t.Fatalf("after the symlink swap: serial %d, want 2", got)
	}
}

func TestCheckInterval(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c"), filepath.Join(dir, "k")
	a, b := newPair(t, 1), newPair(t, 2)
	writeFile(t, certFile, a.certPEM)
	writeFile(t, keyFile, a.key)
	const interval = 500 * time.Millisecond
	r, err := New(certFile, keyFile, WithCheckInterval(interval))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, certFile, b.certPEM)
	writeFile(t, keyFile, b.key)
	if got := serialOf(r); got != 1 {
		t.Fatalf("within the interval: serial %d, want 1 (no look at the files yet)", got)
	}
	time.Sleep(interval + 100*time.Millisecond)
	if got := serialOf(r); got != 2 {
		t.Fatalf("after the interval: serial %d, want 2", got)
	}
}

func TestNewRejectsBadPair(t *testing.T) {
	dir := t.TempDir()
	a, b := newPair(t, 1), newPair(t, 2)
	writeFile(t, filepath.Join(dir, "c"), a.certPEM)
	writeFile(t, filepath.Join(dir, "k"), b.key)
	if _, err := New(filepath.Join(dir, "c"), filepath.Join(dir, "k")); err == nil {
		t.Error("New accepted a certificate with another certificate's key")
	}
	if _, err := New(filepath.Join(dir, "missing"), filepath.Join(dir, "k")); err == nil {
		t.Error("New accepted a missing file")
	}
}

// TestServesOverTLS checks the wiring into a real listener: a client sees the
// new certificate on its next connection.
func TestServesOverTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c"), filepath.Join(dir, "k")
	a, b := newPair(t, 1), newPair(t, 2)
	writeFile(t, certFile, a.certPEM)
	writeFile(t, keyFile, a.key)
	r, err := New(certFile, keyFile, WithCheckInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	// Not httptest's StartTLS: it adds its own certificate to the config,
	// and a handshake without SNI (an IP address) would get that one.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), TLSConfig: r.TLSConfig()}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	defer srv.Close()
	url := "https://" + ln.Addr().String()

	get := func(p pair) int64 {
		t.Helper()
		pool := x509.NewCertPool()
		pool.AddCert(p.leaf)
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		defer client.CloseIdleConnections()
		resp, err := client.Get(url)
		if err != nil {
			t.Fatalf("GET trusting serial %d: %v", p.serial, err)
		}
		_ = resp.Body.Close()
		return resp.TLS.PeerCertificates[0].SerialNumber.Int64()
	}
	if got := get(a); got != 1 {
		t.Fatalf("serial %d, want 1", got)
	}
	writeFile(t, certFile, b.certPEM)
	writeFile(t, keyFile, b.key)
	if got := get(b); got != 2 {
		t.Fatalf("serial %d, want 2", got)
	}
}
