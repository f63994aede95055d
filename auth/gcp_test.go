package auth

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullbroker/pullbroker/config"
)

const (
	testClientEmail = "puller@test-project.iam.gserviceaccount.com"
	testKeyID       = "0123456789abcdef"
)

// googleTokenServer is a token endpoint that checks a JWT-bearer grant the
// way Google's does and issues short-lived access tokens.
type googleTokenServer struct {
	t     *testing.T
	srv   *httptest.Server
	pub   *rsa.PublicKey
	email string
	life  time.Duration

	mu         sync.Mutex
	issued     []issuedToken
	refuse     bool
	assertions []string // every assertion received, for the leak check
}

type issuedToken struct {
	token   string
	expires time.Time
}

func newGoogleTokenServer(t *testing.T, pub *rsa.PublicKey, life time.Duration) *googleTokenServer {
	g := &googleTokenServer{t: t, pub: pub, email: testClientEmail, life: life}
	g.srv = httptest.NewServer(http.HandlerFunc(g.serve))
	t.Cleanup(g.srv.Close)
	return g
}

func (g *googleTokenServer) tokenURL() string { return g.srv.URL + "/token" }

func (g *googleTokenServer) fail(w http.ResponseWriter, code int, errCode, desc string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": errCode, "error_description": desc})
}

func (g *googleTokenServer) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/token" {
		g.fail(w, http.StatusNotFound, "not_found", "")
		return
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/x-www-form-urlencoded") {
		g.fail(w, http.StatusBadRequest, "invalid_request", "content type "+ct)
		return
	}
	if err := r.ParseForm(); err != nil {
		g.fail(w, http.StatusBadRequest, "invalid_request", "bad form")
		return
	}
	if gt := r.PostForm.Get("grant_type"); gt != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
		g.fail(w, http.StatusBadRequest, "unsupported_grant_type", "grant_type "+gt)
		return
	}
	assertion := r.PostForm.Get("assertion")
	g.mu.Lock()
	g.assertions = append(g.assertions, assertion)
	refuse := g.refuse
	g.mu.Unlock()
	if refuse {
		// Echo the assertion, as a careless endpoint might: the client
		// must not repeat it in errors or logs.
		g.fail(w, http.StatusBadRequest, "invalid_grant", "Invalid JWT Signature for "+assertion)
		return
	}
	if err := g.verify(assertion); err != nil {
		g.t.Errorf("token endpoint: %v", err)
		g.fail(w, http.StatusBadRequest, "invalid_grant", err.Error())
		return
	}
	g.mu.Lock()
	tok := issuedToken{token: fmt.Sprintf("ya29.test-token-%d", len(g.issued)+1), expires: time.Now().Add(g.life)}
	g.issued = append(g.issued, tok)
	g.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"access_token": tok.token,
		"expires_in":   int(g.life / time.Second),
		"token_type":   "Bearer",
	})
}

// verify checks an RS256 JWT assertion: header, signature with the
// service account's public key, issuer, audience, scope, and lifetime.
func (g *googleTokenServer) verify(assertion string) error {
	parts := strings.Split(assertion, ".")
	if len(parts) != 3 {
		return fmt.Errorf("assertion has %d parts", len(parts))
	}
	var header struct {
		Alg, Typ, Kid string
	}
	if err := decodeSegment(parts[0], &header); err != nil {
		return fmt.Errorf("header: %v", err)
	}
	if header.Alg != "RS256" || header.Typ != "JWT" {
		return fmt.Errorf("header alg %q typ %q", header.Alg, header.Typ)
	}
	if header.Kid != testKeyID {
		return fmt.Errorf("kid %q, want %q", header.Kid, testKeyID)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return fmt.Errorf("signature encoding: %v", err)
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(g.pub, crypto.SHA256, sum[:], sig); err != nil {
		return fmt.Errorf("signature: %v", err)
	}
	var claims struct {
		Iss   string `json:"iss"`
		Aud   string `json:"aud"`
		Scope string `json:"scope"`
		Iat   int64  `json:"iat"`
		Exp   int64  `json:"exp"`
	}
	if err := decodeSegment(parts[1], &claims); err != nil {
		return fmt.Errorf("claims: %v", err)
	}
	if claims.Iss != g.email {
		return fmt.Errorf("iss %q, want %q", claims.Iss, g.email)
	}
	if claims.Aud != g.tokenURL() {
		return fmt.Errorf("aud %q, want %q", claims.Aud, g.tokenURL())
	}
	scopes := strings.Fields(claims.Scope)
	if !slices.Contains(scopes, "https://www.googleapis.com/auth/cloud-platform") &&
		!slices.Contains(scopes, "https://www.googleapis.com/auth/devstorage.read_only") {
		return fmt.Errorf("scope %q has neither cloud-platform nor devstorage.read_only", claims.Scope)
	}
	now := time.Now().Unix()
	if claims.Iat == 0 || claims.Exp == 0 || claims.Exp-claims.Iat > 3600 || claims.Exp <= claims.Iat {
		return fmt.Errorf("iat %d exp %d: lifetime must be positive and at most 1h", claims.Iat, claims.Exp)
	}
	if claims.Iat > now+60 || claims.Exp < now-60 {
		return fmt.Errorf("iat %d exp %d out of range at %d", claims.Iat, claims.Exp, now)
	}
	return nil
}

func decodeSegment(seg string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// current reports whether token is one this server issued and that has not
// expired.
func (g *googleTokenServer) current(token string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, it := range g.issued {
		if it.token == token {
			return time.Now().Before(it.expires)
		}
	}
	return false
}

func (g *googleTokenServer) issuedCount() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.issued)
}

func (g *googleTokenServer) assertionCount() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.assertions)
}

func nilLogger() *log.Logger { return log.New(io.Discard, "", 0) }

func (g *googleTokenServer) lastIssued() issuedToken {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.issued[len(g.issued)-1]
}

// testServiceAccountKey makes an RSA key and the JSON key file Google would
// hand out for it.
func testServiceAccountKey(t *testing.T, tokenURI string) (*rsa.PrivateKey, []byte) {
	t.Helper()
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return priv, serviceAccountJSON(t, priv, tokenURI)
}

func serviceAccountJSON(t *testing.T, priv *rsa.PrivateKey, tokenURI string) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	key := map[string]string{
		"type":                        "service_account",
		"project_id":                  "test-project",
		"private_key_id":              testKeyID,
		"private_key":                 string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email":                testClientEmail,
		"client_id":                   "123456789",
		"auth_uri":                    "https://accounts.google.com/o/oauth2/auth",
		"token_uri":                   tokenURI,
		"auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
	}
	b, err := json.MarshalIndent(key, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeKeyFile(t *testing.T, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "key.json")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func gcpUpstream(g *config.GCPServiceAccount) config.Upstream {
	return config.Upstream{
		Name:        "europe-docker.pkg.dev",
		Endpoint:    "https://europe-docker.pkg.dev",
		Credentials: &config.Credentials{GCPServiceAccount: g},
	}
}

// TestGCPAccessTokenRefresh exchanges a service-account key at a local
// token endpoint that checks the assertion as Google does, and follows the
// token through its expiry: it is cached while fresh and replaced before it
// expires.
func TestGCPAccessTokenRefresh(t *testing.T) {
	priv, _ := testServiceAccountKey(t, "")
	ts := newGoogleTokenServer(t, &priv.PublicKey, 3*time.Second)
	keyFile := writeKeyFile(t, serviceAccountJSON(t, priv, ts.tokenURL()))
	reg := prometheus.NewRegistry()
	log, logs := newTestLogger(t)
	up := gcpUpstream(&config.GCPServiceAccount{KeyFile: keyFile})
	src, err := For(context.Background(), up, Options{Logger: log, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if ts.issuedCount() != 0 {
		t.Fatal("a token was fetched before it was needed")
	}

	expectAuth(t, src, "oauth2accesstoken", "ya29.test-token-1")
	expectAuth(t, src, "oauth2accesstoken", "ya29.test-token-1")
	if n := ts.issuedCount(); n != 1 {
		t.Fatalf("%d tokens issued for two calls, want 1 (cached)", n)
	}
	first := ts.lastIssued()

	early := awaitTokenRefresh(t, src, ts.current, "ya29.test-token-2", first.expires)
	t.Logf("token 1 replaced %s before its expiry", early)
	if got := metricValue(t, reg, metricReloads, up.Name); got != 3 { // key loaded + 2 tokens
		t.Fatalf("reloads = %v, want 3", got)
	}
	assertNoSecrets(t, []string{"ya29.test-token-1", "ya29.test-token-2"}, logs.String(), metricsText(t, reg))
}

// TestGCPThroughGGCR pulls through go-containerregistry's own transport
// from a registry that accepts only oauth2accesstoken with a token the
// token endpoint issued and that has not expired: the pull keeps working
// across the token's expiry because the transport asks the Source again.
func TestGCPThroughGGCR(t *testing.T) {
	priv, _ := testServiceAccountKey(t, "")
	ts := newGoogleTokenServer(t, &priv.PublicKey, 3*time.Second)
	keyFile := writeKeyFile(t, serviceAccountJSON(t, priv, ts.tokenURL()))

	var mu sync.Mutex
	seen := map[string]bool{}
	reg := registry.New(registry.Logger(nilLogger()))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || u != "oauth2accesstoken" || !ts.current(p) {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		mu.Lock()
		seen[p] = true
		mu.Unlock()
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")

	src, err := For(context.Background(), gcpUpstream(&config.GCPServiceAccount{KeyFile: keyFile}), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	ref, err := name.ParseReference(host+"/proj/repo/img:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithAuth(src)); err != nil {
		t.Fatalf("push: %v", err)
	}
	deadline := time.Now().Add(4 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := remote.Head(ref, remote.WithAuth(src)); err != nil {
			t.Fatalf("head at %s: %v", time.Now().Format(time.StampMilli), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) < 2 {
		t.Fatalf("the registry saw %d distinct tokens over 4 s of 3 s tokens, want ≥ 2", len(seen))
	}
}

func TestGCPJSONKeyModes(t *testing.T) {
	_, key := testServiceAccountKey(t, "https://oauth2.googleapis.com/token")
	keyFile := writeKeyFile(t, key)

	src, err := For(context.Background(), gcpUpstream(&config.GCPServiceAccount{KeyFile: keyFile, Exchange: "jsonKey"}), Options{})
	if err != nil {
		t.Fatal(err)
	}
	expectAuth(t, src, "_json_key", string(key))

	src, err = For(context.Background(), gcpUpstream(&config.GCPServiceAccount{KeyFile: keyFile, Exchange: "jsonKeyBase64"}), Options{})
	if err != nil {
		t.Fatal(err)
	}
	expectAuth(t, src, "_json_key_base64", base64.StdEncoding.EncodeToString(key))
}

// TestGCPFailuresDoNotLeak: a bad key file, a refusing token endpoint (that
// even echoes the assertion), an unreachable one: each error and log line
// says what is wrong without the private key, the assertion or a token.
func TestGCPFailuresDoNotLeak(t *testing.T) {
	priv, _ := testServiceAccountKey(t, "")
	ts := newGoogleTokenServer(t, &priv.PublicKey, time.Hour)
	key := serviceAccountJSON(t, priv, ts.tokenURL())
	var k map[string]string
	if err := json.Unmarshal(key, &k); err != nil {
		t.Fatal(err)
	}
	pemKey := k["private_key"]
	secrets := []string{pemKey, strings.Split(pemKey, "\n")[1], string(key)}
	var texts []string

	logger, logs := newTestLogger(t)
	reg := prometheus.NewRegistry()
	opts := Options{Logger: logger, Registerer: reg}

	// Malformed keys are refused at start, naming the file.
	for _, bad := range [][]byte{
		[]byte(strings.Replace(string(key), "BEGIN PRIVATE KEY", "BEGIN PRIVATE KEZ", 1)),
		[]byte(strings.Replace(string(key), `"service_account"`, `"authorized_user"`, 1)),
		[]byte(strings.Replace(string(key), ts.tokenURL(), "http://token.example.com/token", 1)),
		key[:strings.Index(string(key), "BEGIN PRIVATE KEY")+200], // cut off inside the private key
	} {
		f := writeKeyFile(t, bad)
		_, err := For(context.Background(), gcpUpstream(&config.GCPServiceAccount{KeyFile: f}), opts)
		if err == nil || !strings.Contains(err.Error(), f) {
			t.Fatalf("For with a bad key: %v", err)
		}
		texts = append(texts, err.Error())
	}

	// The endpoint refuses.
	ts.mu.Lock()
	ts.refuse = true
	ts.mu.Unlock()
	up := gcpUpstream(&config.GCPServiceAccount{KeyFile: writeKeyFile(t, key)})
	src, err := For(context.Background(), up, opts)
	if err != nil {
		t.Fatal(err)
	}
	_, err = src.Authorization()
	if err == nil || !strings.Contains(err.Error(), "invalid_grant") {
		t.Fatalf("Authorization against a refusing endpoint: %v", err)
	}
	texts = append(texts, err.Error())
	if src.Healthy() || metricValue(t, reg, metricErrors, up.Name) != 1 {
		t.Fatal("a refused exchange is not counted")
	}
	// Within the back-off the same error comes back without a new request.
	n := ts.assertionCount()
	if _, err2 := src.Authorization(); err2 == nil || ts.assertionCount() != n {
		t.Fatalf("retried within the back-off: %v", err2)
	}
	ts.mu.Lock()
	secrets = append(secrets, ts.assertions...)
	ts.mu.Unlock()

	// The endpoint is gone.
	ts.srv.Close()
	tm := src.(*source).cur.Load().m.(*tokenMaterial)
	tm.mu.Lock()
	tm.retryAt = time.Time{} // skip the back-off
	tm.mu.Unlock()
	_, err = src.Authorization()
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Authorization against a closed endpoint: %v", err)
	}
	texts = append(texts, err.Error())

	texts = append(texts, logs.String(), metricsText(t, reg))
	assertNoSecrets(t, secrets, texts...)
	t.Logf("errors seen:\n%s", strings.Join(texts[:len(texts)-2], "\n"))
}

// TestGCPKeepsValidTokenWhenRefreshFails: once a refresh is due but fails,
// the token in hand is still used until shortly before it expires.
func TestGCPKeepsValidTokenWhenRefreshFails(t *testing.T) {
	priv, _ := testServiceAccountKey(t, "")
	ts := newGoogleTokenServer(t, &priv.PublicKey, time.Hour)
	reg := prometheus.NewRegistry()
	up := gcpUpstream(&config.GCPServiceAccount{KeyFile: writeKeyFile(t, serviceAccountJSON(t, priv, ts.tokenURL()))})
	src, err := For(context.Background(), up, Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	expectAuth(t, src, "oauth2accesstoken", "ya29.test-token-1")
	tm := src.(*source).cur.Load().m.(*tokenMaterial)
	tm.mu.Lock()
	tm.refreshAt = time.Now().Add(-time.Second) // due
	tm.mu.Unlock()
	ts.mu.Lock()
	ts.refuse = true
	ts.mu.Unlock()
	expectAuth(t, src, "oauth2accesstoken", "ya29.test-token-1")
	if src.Healthy() || metricValue(t, reg, metricErrors, up.Name) != 1 {
		t.Fatal("the failed refresh is not reported")
	}
	ts.mu.Lock()
	ts.refuse = false
	ts.mu.Unlock()
	tm.mu.Lock()
	tm.retryAt = time.Time{}
	tm.mu.Unlock()
	expectAuth(t, src, "oauth2accesstoken", "ya29.test-token-2")
	if !src.Healthy() {
		t.Fatal("not healthy after a good refresh")
	}
}

func TestCheckTokenURL(t *testing.T) {
	for u, ok := range map[string]bool{
		"https://oauth2.googleapis.com/token": true,
		"http://127.0.0.1:8080/token":         true,
		"http://localhost:8080/token":         true,
		"http://[::1]:8080/token":             true,
		"http://oauth2.googleapis.com/token":  false,
		"http://10.0.0.1/token":               false,
		"ftp://x/token":                       false,
		"/token":                              false,
	} {
		if err := checkTokenURL(u); (err == nil) != ok {
			t.Errorf("checkTokenURL(%q) = %v", u, err)
		}
	}
}

// TestGCPHealthIsKeyAndToken: a good token refresh does not make a source
// healthy again while the last rotation of its key file was refused.
func TestGCPHealthIsKeyAndToken(t *testing.T) {
	priv, _ := testServiceAccountKey(t, "")
	ts := newGoogleTokenServer(t, &priv.PublicKey, time.Hour)
	key := serviceAccountJSON(t, priv, ts.tokenURL())
	file := writeKeyFile(t, key)
	src, err := For(context.Background(), gcpUpstream(&config.GCPServiceAccount{KeyFile: file}), Options{FileCheckInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	expectAuth(t, src, "oauth2accesstoken", "ya29.test-token-1")
	if err := os.WriteFile(file, []byte(`{"type":"service_account"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	expectAuth(t, src, "oauth2accesstoken", "ya29.test-token-1")
	if src.Healthy() {
		t.Fatal("healthy after a refused key rotation")
	}
	tm := src.(*source).cur.Load().m.(*tokenMaterial)
	tm.mu.Lock()
	tm.refreshAt = time.Now().Add(-time.Second)
	tm.mu.Unlock()
	expectAuth(t, src, "oauth2accesstoken", "ya29.test-token-2")
	if src.Healthy() {
		t.Fatal("a token refresh hid the refused key rotation")
	}
	if err := os.WriteFile(file, key, 0o600); err != nil {
		t.Fatal(err)
	}
	expectAuth(t, src, "oauth2accesstoken", "ya29.test-token-2") // same key: same material, cached token
	if !src.Healthy() {
		t.Fatal("not healthy with the good key back")
	}
}
