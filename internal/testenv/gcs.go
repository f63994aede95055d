package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/oauth2"
)

// GCSServer is a fake-gcs-server started by StartFakeGCS, serving one bucket of Google Cloud
// Storage's JSON API over plain HTTP.
type GCSServer struct {
	// Endpoint is "http://127.0.0.1:PORT".
	Endpoint string
	Bucket   string
	// privateKeyPEM signs nothing the server checks; the driver requires a key to start.
	privateKeyPEM string
	p             *Process
}

const gcsBucket = "pullbroker-cache"

// StartFakeGCS runs fake-gcs-server (its objects in a temp dir) on a free 127.0.0.1 port, waits
// until it answers and creates one empty bucket. It sets STORAGE_EMULATOR_HOST for the rest of
// the test: cloud.google.com/go/storage, under distribution's gcs driver, takes its endpoint
// from nowhere else. So the test must not be parallel (t.Setenv refuses that).
func StartFakeGCS(t testing.TB) *GCSServer {
	t.Helper()
	bin := Tool(t, "fake-gcs-server")
	dir := t.TempDir()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	p, addr := startOnFreePort(t, "fake-gcs-server", func(port int) *exec.Cmd {
		// The client reads objects through the XML API (GET /BUCKET/OBJECT), which the server
		// answers only on its public host.
		return exec.Command(bin, "-scheme", "http", "-host", "127.0.0.1", "-port", fmt.Sprint(port),
			"-public-host", fmt.Sprintf("127.0.0.1:%d", port), "-backend", "filesystem", "-filesystem-root", dir, "-log-level", "warn")
	}, func(addr string) bool { return httpAnswers("http://" + addr) })
	s := &GCSServer{Endpoint: "http://" + addr, Bucket: gcsBucket, privateKeyPEM: keyPEM, p: p}
	s.createBucket(t)
	t.Setenv("STORAGE_EMULATOR_HOST", s.Endpoint)
	return s
}

// gcsTokenURI is the token endpoint of the test's service-account key: a dead loopback port, so
// that a token request fails here instead of leaving the machine, unless DriverContext's client
// answers it.
const gcsTokenURI = "http://127.0.0.1:1/token"

// Parameters are the gcs storage driver parameters that reach the bucket, as storage.parameters
// takes them, with inline credentials: a service-account key made for this server.
func (s *GCSServer) Parameters() map[string]any {
	return map[string]any{
		"bucket": s.Bucket,
		"credentials": map[string]any{
			"type":           "service_account",
			"project_id":     "pullbroker-test",
			"private_key_id": "pullbroker-test",
			"private_key":    s.privateKeyPEM,
			"client_email":   "pullbroker-test@pullbroker-test.iam.gserviceaccount.com",
			"client_id":      "1",
			"token_uri":      gcsTokenURI,
		},
	}
}

// DriverContext returns ctx carrying, for golang.org/x/oauth2, the HTTP client of the requests
// that distribution's gcs driver makes itself rather than through cloud.google.com/go/storage:
// an object larger than its chunksize is uploaded in a resumable session that it opens at
// https://www.googleapis.com with an OAuth token. Under this context those requests reach the
// server, and the token request is answered with a dummy token (Google's token endpoint cannot
// run here). Open the driver with it.
func (s *GCSServer) DriverContext(ctx context.Context) context.Context {
	emulator, _ := url.Parse(s.Endpoint)
	return context.WithValue(ctx, oauth2.HTTPClient, &http.Client{Transport: googleAPIsToServer{emulator}})
}

type googleAPIsToServer struct{ server *url.URL }

func (g googleAPIsToServer) RoundTrip(req *http.Request) (*http.Response, error) {
	switch {
	case req.URL.String() == gcsTokenURI:
		if req.Body != nil {
			req.Body.Close()
		}
		token := `{"access_token":"pullbroker-test","token_type":"Bearer","expires_in":3600}`
		return &http.Response{StatusCode: http.StatusOK, Status: "200 OK", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(strings.NewReader(token)),
			ContentLength: int64(len(token)), Request: req}, nil
	case req.URL.Host == "www.googleapis.com":
		req = req.Clone(req.Context())
		req.URL.Scheme, req.URL.Host, req.Host = g.server.Scheme, g.server.Host, ""
	}
	return http.DefaultTransport.RoundTrip(req)
}

func (s *GCSServer) createBucket(t testing.TB) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"name": s.Bucket})
	resp, err := http.Post(s.Endpoint+"/storage/v1/b?project=pullbroker-test", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("fake-gcs-server: create bucket %s: %v", s.Bucket, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("fake-gcs-server: create bucket %s: %s\n%s", s.Bucket, resp.Status, s.p.LogTail())
	}
}

// Keys lists every object name in the bucket.
func (s *GCSServer) Keys(t testing.TB) []string {
	t.Helper()
	var keys []string
	for token := ""; ; {
		u := s.Endpoint + "/storage/v1/b/" + s.Bucket + "/o?pageToken=" + url.QueryEscape(token)
		resp, err := http.Get(u)
		if err != nil {
			t.Fatalf("list bucket %s: %v", s.Bucket, err)
		}
		var page struct {
			Items []struct {
				Name string `json:"name"`
			} `json:"items"`
			NextPageToken string `json:"nextPageToken"`
		}
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("list bucket %s: %s %v", s.Bucket, resp.Status, err)
		}
		for _, o := range page.Items {
			keys = append(keys, o.Name)
		}
		if page.NextPageToken == "" {
			return keys
		}
		token = page.NextPageToken
	}
}
