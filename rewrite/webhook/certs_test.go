package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/http"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestSelfSignedServes(t *testing.T) {
	s, err := GenerateSelfSigned([]string{"127.0.0.1", "pullbroker-webhook.pullbroker.svc"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:   http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{s.Certificate}},
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	defer srv.Close()

	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(s.CAPEM) {
		t.Fatal("CA PEM does not parse")
	}
	for _, serverName := range []string{"", "pullbroker-webhook.pullbroker.svc"} {
		conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: serverName})
		if err != nil {
			t.Fatalf("verifying against the CA (server name %q): %v", serverName, err)
		}
		_ = conn.Close()
	}
	if _, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "other.example"}); err == nil {
		t.Error("a name not in the certificate verified")
	}
}

func caAt(t *testing.T, now time.Time, validity time.Duration) *x509.Certificate {
	t.Helper()
	s, err := GenerateSelfSigned([]string{"x"}, validity, now)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := parseCertificates(s.CAPEM)
	if err != nil || len(certs) != 1 {
		t.Fatal(err)
	}
	return certs[0]
}

func pemOf(certs ...*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return b
}

func TestMergeBundle(t *testing.T) {
	now := time.Now()
	ours := caAt(t, now, time.Hour)
	expired := caAt(t, now.Add(-2*time.Hour), time.Hour)
	var others []*x509.Certificate
	for i := range 6 {
		others = append(others, caAt(t, now.Add(-time.Duration(i+1)*time.Minute), time.Hour))
	}

	got, _ := parseCertificates(mergeBundle(pemOf(expired, others[0]), ours, now))
	if len(got) != 2 || !got[0].Equal(ours) || !got[1].Equal(others[0]) {
		t.Errorf("the expired CA should go, the valid one stay: got %d certificates", len(got))
	}

	got, _ = parseCertificates(mergeBundle(pemOf(others...), ours, now))
	if len(got) != maxBundledCAs || !got[0].Equal(ours) {
		t.Fatalf("got %d certificates, want %d with ours first", len(got), maxBundledCAs)
	}
	for i := 1; i < len(got); i++ {
		if !got[i].Equal(others[i-1]) {
			t.Errorf("position %d is not the %d-th newest CA", i, i)
		}
	}

	// Already there, in another order: left as it is.
	existing := pemOf(others[0], ours)
	if out := mergeBundle(existing, ours, now); !bytes.Equal(out, existing) {
		t.Error("a bundle that already holds the right CAs was rewritten")
	}
	// Garbage is replaced.
	if got, _ := parseCertificates(mergeBundle([]byte("not pem"), ours, now)); len(got) != 1 {
		t.Errorf("got %d certificates from a garbage bundle, want ours alone", len(got))
	}
}

func TestInjectCABundle(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(&admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "pullbroker"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{
			{Name: "pods.pullbroker.io"},
			{Name: "other.pullbroker.io", ClientConfig: admissionregistrationv1.WebhookClientConfig{CABundle: []byte("junk")}},
		},
	}).AdmissionregistrationV1().MutatingWebhookConfigurations()
	s, err := GenerateSelfSigned([]string{"x"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	changed, err := InjectCABundle(ctx, client, "pullbroker", s.CAPEM, time.Now())
	if err != nil || !changed {
		t.Fatalf("first inject: changed %v, err %v", changed, err)
	}
	cfg, err := client.Get(ctx, "pullbroker", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range cfg.Webhooks {
		if !bytes.Equal(w.ClientConfig.CABundle, s.CAPEM) {
			t.Errorf("webhook %s: caBundle %q", w.Name, w.ClientConfig.CABundle)
		}
	}
	if changed, err := InjectCABundle(ctx, client, "pullbroker", s.CAPEM, time.Now()); err != nil || changed {
		t.Errorf("second inject: changed %v, err %v; want no write", changed, err)
	}
	if _, err := InjectCABundle(ctx, client, "missing", s.CAPEM, time.Now()); err == nil {
		t.Error("injecting into a missing configuration succeeded")
	}
	if _, err := InjectCABundle(ctx, client, "pullbroker", []byte("x"), time.Now()); err == nil {
		t.Error("injecting a non-certificate succeeded")
	}
}
