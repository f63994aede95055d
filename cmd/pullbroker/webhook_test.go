package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pullbroker/pullbroker/internal/testenv"

	admissionv1 "k8s.io/api/admission/v1"

	"github.com/pullbroker/pullbroker/rewrite/webhook"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startWebhookCmd runs `pullbroker webhook args...` until the test ends and
// waits for it to answer on addr.
func startWebhookCmd(t *testing.T, client *http.Client, addr string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		root := newRootCmd()
		root.SetArgs(append([]string{"webhook"}, args...))
		root.SetOut(io.Discard)
		root.SetErr(io.Discard)
		done <- root.ExecuteContext(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("webhook command: %v", err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := client.Get("https://" + addr + webhook.PathHealthz)
		if err == nil {
			resp.Body.Close()
			return
		}
		select {
		case err := <-done:
			t.Fatalf("webhook command ended: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("webhook not answering: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestWebhookCommandWithCertificateFiles(t *testing.T) {
	certs, err := webhook.GenerateSelfSigned([]string{"127.0.0.1"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := testenv.WriteCertPair(t, dir, certs.CertPEM, certs.KeyPEM)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certs.CAPEM)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}

	addr, metricsAddr := freeAddr(t), freeAddr(t)
	startWebhookCmd(t, client, addr, "--listen", addr, "--metrics-listen", metricsAddr,
		"--tls-cert-file", certFile, "--tls-key-file", keyFile, "--proxy-host", "localhost:30500")

	review := `{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
	  "uid": "u1", "operation": "CREATE", "namespace": "apps",
	  "resource": {"group": "", "version": "v1", "resource": "pods"},
	  "object": {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}}}}`
	resp, err := client.Post("https://"+addr+webhook.PathMutate, "application/json", strings.NewReader(review))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out admissionv1.AdmissionReview
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	if out.Response == nil || !out.Response.Allowed || !bytes.Contains(out.Response.Patch, []byte("localhost:30500/docker.io/library/nginx:1.27")) {
		t.Errorf("response %+v", out.Response)
	}

	m, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(m.Body)
	m.Body.Close()
	if !strings.Contains(string(body), `pullbroker_webhook_admissions_total{result="rewritten"} 1`) {
		t.Errorf("metrics lack the rewritten admission:\n%s", body)
	}
}

func TestWebhookCommandSelfSigned(t *testing.T) {
	var seen *x509.Certificate
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
		InsecureSkipVerify: true, // the CA is made inside the command; the names are checked below
		VerifyConnection: func(cs tls.ConnectionState) error {
			seen = cs.PeerCertificates[0]
			return nil
		},
	}}}
	addr := freeAddr(t)
	startWebhookCmd(t, client, addr, "--listen", addr, "--metrics-listen", "", "--webhook-config", "",
		"--namespace", "infra", "--service-name", "pb", "--tls-san", "127.0.0.1", "--proxy-host", "localhost:30500")
	if seen == nil {
		t.Fatal("no certificate seen")
	}
	if err := seen.VerifyHostname("pb.infra.svc"); err != nil {
		t.Error(err)
	}
	if err := seen.VerifyHostname("127.0.0.1"); err != nil {
		t.Error(err)
	}
}

func TestWebhookCommandRejects(t *testing.T) {
	for name, args := range map[string][]string{
		"no proxy host":    {"webhook", "--webhook-config", ""},
		"cert without key": {"webhook", "--proxy-host", "p.example", "--tls-cert-file", "/x.crt", "--listen", "127.0.0.1:0"},
	} {
		if _, _, err := runCmd(t, "", args...); err == nil {
			t.Errorf("%s: succeeded", name)
		}
	}
}
