package auth

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
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

// Static AWS credentials the tests put in the environment. The secret key
// and session token must never show up in an error, log line or metric.
const (
	testAWSAccessKey    = "AKIAPULLBROKERTEST01"
	testAWSSecretKey    = "pbTestSecretKey/0123456789abcdefGHIJKLMN"
	testAWSSessionToken = "IQoJb3JpZ2luX2VjEPullbrokerTestSessionToken+0001/abcdefghijklmnop=="
	testECRRegion       = "eu-west-1"
	testECRAccount      = "123456789012"
	ecrTarget           = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"
)

// awsTestEnv gives the AWS SDK static credentials through the environment
// and nothing else to read: empty shared config and credentials files, no
// instance metadata, no profile, role or endpoint variables.
func awsTestEnv(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"config", "credentials"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID":           testAWSAccessKey,
		"AWS_SECRET_ACCESS_KEY":       testAWSSecretKey,
		"AWS_SESSION_TOKEN":           testAWSSessionToken,
		"AWS_EC2_METADATA_DISABLED":   "true",
		"AWS_CONFIG_FILE":             filepath.Join(dir, "config"),
		"AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "credentials"),
	} {
		t.Setenv(k, v)
	}
	for _, k := range []string{
		"AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION",
		"AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
		"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_ECR", "AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT",
		"AWS_CA_BUNDLE",
	} {
		t.Setenv(k, "")
	}
}

// fakeECR answers GetAuthorizationToken in the AWS JSON 1.1 protocol after
// checking that the request is SigV4-signed with the test access key for
// service ecr in the test region, and issues short-lived tokens.
type fakeECR struct {
	t    *testing.T
	srv  *httptest.Server
	life time.Duration

	mu          sync.Mutex
	calls       int
	issued      []issuedToken
	registryIDs [][]string
	// failStatus, when set, is the HTTP status of an error answer whose
	// message echoes the credentials, as a careless server might.
	failStatus int
	failCode   string
	// hold, when set, delays answers until it is closed.
	hold chan struct{}
}

func newFakeECR(t *testing.T, life time.Duration) *fakeECR {
	f := &fakeECR{t: t, life: life}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

// newFakeECRTLS is a fakeECR on https with a certificate of its own CA.
func newFakeECRTLS(t *testing.T, life time.Duration) *fakeECR {
	f := &fakeECR{t: t, life: life}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	f.srv.Config.ErrorLog = nilLogger() // the refused handshakes
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

var sigV4Auth = regexp.MustCompile(`^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, SignedHeaders=([a-z0-9;-]+), Signature=[0-9a-f]{64}$`)

// checkRequest returns what is wrong with a GetAuthorizationToken request.
func (f *fakeECR) checkRequest(r *http.Request) error {
	if r.Method != http.MethodPost || r.URL.Path != "/" {
		return fmt.Errorf("%s %s", r.Method, r.URL.Path)
	}
	if got := r.Header.Get("X-Amz-Target"); got != ecrTarget {
		return fmt.Errorf("X-Amz-Target %q", got)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/x-amz-json-1.1" {
		return fmt.Errorf("Content-Type %q", ct)
	}
	m := sigV4Auth.FindStringSubmatch(r.Header.Get("Authorization"))
	if m == nil {
		return fmt.Errorf("Authorization %q is not a SigV4 signature", r.Header.Get("Authorization"))
	}
	key, date, region, service, signed := m[1], m[2], m[3], m[4], strings.Split(m[5], ";")
	if key != testAWSAccessKey || region != testECRRegion || service != "ecr" {
		return fmt.Errorf("credential scope %s/%s/%s/%s, want %s/…/%s/ecr", key, date, region, service, testAWSAccessKey, testECRRegion)
	}
	if amzDate := r.Header.Get("X-Amz-Date"); !strings.HasPrefix(amzDate, date) {
		return fmt.Errorf("X-Amz-Date %q is not of the scope's day %s", amzDate, date)
	}
	for _, h := range []string{"host", "x-amz-date", "x-amz-target", "x-amz-security-token"} {
		if !slices.Contains(signed, h) {
			return fmt.Errorf("SignedHeaders %s lacks %s", m[5], h)
		}
	}
	if got := r.Header.Get("X-Amz-Security-Token"); got != testAWSSessionToken {
		return fmt.Errorf("X-Amz-Security-Token is not the session token from the environment")
	}
	return nil
}

func (f *fakeECR) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if err := f.checkRequest(r); err != nil {
		f.t.Errorf("ECR request: %v", err)
		f.answerError(w, http.StatusBadRequest, "InvalidSignatureException", err.Error())
		return
	}
	var in struct {
		RegistryIDs []string `json:"registryIds"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		f.t.Errorf("ECR request body %q: %v", body, err)
	}
	f.mu.Lock()
	f.calls++
	f.registryIDs = append(f.registryIDs, in.RegistryIDs)
	hold, failStatus, failCode := f.hold, f.failStatus, f.failCode
	f.mu.Unlock()
	if hold != nil {
		<-hold
	}
	if failStatus != 0 {
		f.answerError(w, failStatus, failCode, "The security token included in the request is invalid: "+
			testAWSSessionToken+" signed by "+testAWSSecretKey+" ("+r.Header.Get("Authorization")+")")
		return
	}
	f.mu.Lock()
	tok := issuedToken{
		token:   fmt.Sprintf("eyJwYXlsb2FkIjoiZWNyLXRlc3QtdG9rZW4-%d", len(f.issued)+1),
		expires: time.Now().Add(f.life),
	}
	f.issued = append(f.issued, tok)
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"authorizationData": []map[string]any{{
			"authorizationToken": b64("AWS:" + tok.token),
			"expiresAt":          float64(tok.expires.UnixMilli()) / 1000,
			"proxyEndpoint":      "https://" + testECRAccount + ".dkr.ecr." + testECRRegion + ".amazonaws.com",
		}},
	})
}

func (f *fakeECR) answerError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-Requestid", "0b0a7a1e-test")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"__type": code, "message": msg})
}

func (f *fakeECR) failWith(status int, code string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failStatus, f.failCode = status, code
}

func (f *fakeECR) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// current reports whether password is one this fake issued and that has
// not expired.
func (f *fakeECR) current(password string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, it := range f.issued {
		if it.token == password {
			return time.Now().Before(it.expires)
		}
	}
	return false
}

func (f *fakeECR) issuedTokens() []issuedToken {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.issued)
}

func ecrUpstream(e *config.ECR) config.Upstream {
	host := testECRAccount + ".dkr.ecr." + testECRRegion + ".amazonaws.com"
	return config.Upstream{Name: host, Endpoint: "https://" + host, Credentials: &config.Credentials{ECR: e}}
}

func tokenMaterialOf(t *testing.T, src Source) *tokenMaterial {
	t.Helper()
	return src.(*source).cur.Load().m.(*tokenMaterial)
}

// ecrSecrets are the values no error, log line or metric may contain.
func ecrSecrets(f *fakeECR) []string {
	s := []string{testAWSSecretKey, testAWSSessionToken}
	for _, it := range f.issuedTokens() {
		s = append(s, it.token, "AWS:"+it.token)
	}
	return s
}

// TestECRTokenCachedAndRefreshed: the token is asked for on first use (by
// one request however many callers wait), decoded to AWS:<password>,
// served from the cache while fresh, and replaced before it expires.
func TestECRTokenCachedAndRefreshed(t *testing.T) {
	awsTestEnv(t)
	f := newFakeECR(t, 3*time.Second)
	logger, logs := newTestLogger(t)
	reg := prometheus.NewRegistry()
	up := ecrUpstream(&config.ECR{Region: testECRRegion, RegistryID: testECRAccount, Endpoint: f.srv.URL})
	src, err := For(context.Background(), up, Options{Logger: logger, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if src.Kind() != KindECR || f.callCount() != 0 {
		t.Fatalf("kind %s, %d ECR calls before the first use", src.Kind(), f.callCount())
	}

	// 16 callers at once, then 200 more: one GetAuthorizationToken.
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			if a, err := src.Authorization(); err != nil || a.Username != "AWS" || !f.current(a.Password) {
				t.Errorf("Authorization = %+v, %v", a, err)
			}
		})
	}
	wg.Wait()
	start := time.Now()
	for range 200 {
		expectAuth(t, src, "AWS", "eyJwYXlsb2FkIjoiZWNyLXRlc3QtdG9rZW4-1")
	}
	perCall := time.Since(start) / 200
	if n := f.callCount(); n != 1 {
		t.Fatalf("%d GetAuthorizationToken calls for 216 Authorization calls, want 1", n)
	}
	if ids := f.registryIDs[0]; !slices.Equal(ids, []string{testECRAccount}) {
		t.Fatalf("registryIds = %q", ids)
	}
	t.Logf("cached Authorization: %s per call", perCall)

	first := f.issuedTokens()[0]
	early := awaitTokenRefresh(t, src, f.current, "eyJwYXlsb2FkIjoiZWNyLXRlc3QtdG9rZW4-2", first.expires)
	t.Logf("token 1 (3 s) replaced %s before its expiry", early)
	if n := f.callCount(); n != 2 {
		t.Fatalf("%d ECR calls, want 2", n)
	}
	if got := metricValue(t, reg, metricReloads, up.Name); got != 3 { // configured + 2 tokens
		t.Fatalf("reloads = %v, want 3", got)
	}
	if !src.Healthy() || metricValue(t, reg, metricHealthy, up.Name) != 1 || metricValue(t, reg, metricErrors, up.Name) != 0 {
		t.Fatal("not healthy")
	}
	assertNoSecrets(t, ecrSecrets(f), logs.String(), metricsText(t, reg))
}

// TestECRKeepsValidTokenWhenRefreshFails: the ECR API starts refusing, and
// even echoes the credentials in its message. The token in hand is served
// until shortly before it expires; the failure is counted, logged and
// returned once nothing valid is left, without a secret in any of them; a
// later good refresh makes the source healthy again.
func TestECRKeepsValidTokenWhenRefreshFails(t *testing.T) {
	awsTestEnv(t)
	f := newFakeECR(t, time.Hour)
	logger, logs := newTestLogger(t)
	reg := prometheus.NewRegistry()
	up := ecrUpstream(&config.ECR{Region: testECRRegion, Endpoint: f.srv.URL})
	src, err := For(context.Background(), up, Options{Logger: logger, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	const tok1 = "eyJwYXlsb2FkIjoiZWNyLXRlc3QtdG9rZW4-1"
	expectAuth(t, src, "AWS", tok1)
	if ids := f.registryIDs[0]; ids != nil {
		t.Fatalf("registryIds = %q without registryID", ids)
	}
	tm := tokenMaterialOf(t, src)
	tm.mu.Lock()
	refreshAt, validTo := tm.refreshAt, tm.validTo
	tm.refreshAt = time.Now().Add(-time.Second) // due
	tm.mu.Unlock()
	issued := f.issuedTokens()[0].expires
	t.Logf("1 h token: refresh due %s, sent until %s before expiry", issued.Sub(refreshAt).Round(time.Second), issued.Sub(validTo).Round(time.Second))

	f.failWith(http.StatusForbidden, "AccessDeniedException")
	expectAuth(t, src, "AWS", tok1)
	if src.Healthy() || metricValue(t, reg, metricErrors, up.Name) != 1 || metricValue(t, reg, metricHealthy, up.Name) != 0 {
		t.Fatal("the failed refresh is not reported")
	}
	if !strings.Contains(logs.String(), "token refresh failed; the current token is still valid") {
		t.Fatalf("no warning logged:\n%s", logs.String())
	}
	// Within the back-off: the token in hand, no new request.
	n := f.callCount()
	expectAuth(t, src, "AWS", tok1)
	if f.callCount() != n {
		t.Fatal("retried within the back-off")
	}

	// The token is no longer valid: the error comes back.
	tm.mu.Lock()
	tm.validTo, tm.retryAt = time.Now().Add(-time.Second), time.Time{}
	tm.mu.Unlock()
	_, err = src.Authorization()
	if err == nil || !strings.Contains(err.Error(), "HTTP 403, AccessDeniedException") || !strings.Contains(err.Error(), up.Name) {
		t.Fatalf("Authorization with an expired token and a refusing ECR: %v", err)
	}
	texts := []string{err.Error()}

	// A server error: the SDK retries it before giving up.
	f.failWith(http.StatusServiceUnavailable, "ServiceUnavailableException")
	tm.mu.Lock()
	tm.retryAt = time.Time{}
	tm.mu.Unlock()
	n = f.callCount()
	start := time.Now()
	_, err = src.Authorization()
	if err == nil || !strings.Contains(err.Error(), "HTTP 503") {
		t.Fatalf("Authorization against a failing ECR: %v", err)
	}
	t.Logf("a 503 took %d attempts and %s", f.callCount()-n, time.Since(start).Round(time.Millisecond))
	texts = append(texts, err.Error())

	// ECR is back.
	f.failWith(0, "")
	tm.mu.Lock()
	tm.retryAt = time.Time{}
	tm.mu.Unlock()
	expectAuth(t, src, "AWS", "eyJwYXlsb2FkIjoiZWNyLXRlc3QtdG9rZW4-2")
	if !src.Healthy() || metricValue(t, reg, metricHealthy, up.Name) != 1 {
		t.Fatal("not healthy after a good refresh")
	}

	// The endpoint is gone: the valid token stays in use, then the error
	// comes back.
	f.srv.Close()
	tm.mu.Lock()
	tm.refreshAt = time.Now().Add(-time.Second)
	tm.mu.Unlock()
	start = time.Now()
	expectAuth(t, src, "AWS", "eyJwYXlsb2FkIjoiZWNyLXRlc3QtdG9rZW4-2")
	t.Logf("a refresh against a closed endpoint took %s", time.Since(start).Round(time.Millisecond))
	tm.mu.Lock()
	tm.validTo, tm.retryAt = time.Now().Add(-time.Second), time.Time{}
	tm.mu.Unlock()
	_, err = src.Authorization()
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Authorization against a closed endpoint: %v", err)
	}
	texts = append(texts, err.Error())

	texts = append(texts, logs.String(), metricsText(t, reg))
	assertNoSecrets(t, ecrSecrets(f), texts...)
	t.Logf("errors seen:\n%s", strings.Join(texts[:len(texts)-2], "\n"))
}

// TestECRRefreshDoesNotStallOtherPulls: while one caller waits for a slow
// refresh, the others are served the token in hand at once.
func TestECRRefreshDoesNotStallOtherPulls(t *testing.T) {
	awsTestEnv(t)
	f := newFakeECR(t, time.Hour)
	src, err := For(context.Background(), ecrUpstream(&config.ECR{Region: testECRRegion, Endpoint: f.srv.URL}), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	expectAuth(t, src, "AWS", "eyJwYXlsb2FkIjoiZWNyLXRlc3QtdG9rZW4-1")
	tm := tokenMaterialOf(t, src)
	tm.mu.Lock()
	tm.refreshAt = time.Now().Add(-time.Second)
	tm.mu.Unlock()
	hold := make(chan struct{})
	f.mu.Lock()
	f.hold = hold
	f.mu.Unlock()

	refreshed := make(chan string)
	go func() {
		a, err := src.Authorization()
		if err != nil {
			t.Errorf("refreshing caller: %v", err)
		}
		refreshed <- a.Password
	}()
	eventually(t, 5*time.Second, "refresh request sent", func() bool { return f.callCount() == 2 })
	var slowest time.Duration
	for range 100 {
		start := time.Now()
		expectAuth(t, src, "AWS", "eyJwYXlsb2FkIjoiZWNyLXRlc3QtdG9rZW4-1")
		slowest = max(slowest, time.Since(start))
	}
	t.Logf("slowest of 100 Authorization calls during a refresh: %s", slowest)
	if slowest > time.Second {
		t.Fatalf("callers waited %s for a refresh while a valid token was held", slowest)
	}
	close(hold)
	if got := <-refreshed; got != "eyJwYXlsb2FkIjoiZWNyLXRlc3QtdG9rZW4-2" {
		t.Fatalf("refreshing caller got %q", got)
	}
	expectAuth(t, src, "AWS", "eyJwYXlsb2FkIjoiZWNyLXRlc3QtdG9rZW4-2")
	if f.callCount() != 2 {
		t.Fatalf("%d ECR calls, want 2", f.callCount())
	}
}

// TestECRThroughGGCR pushes to and reads from a registry that accepts only
// AWS:<a token the fake ECR issued>, through go-containerregistry's own
// transport.
func TestECRThroughGGCR(t *testing.T) {
	awsTestEnv(t)
	f := newFakeECR(t, time.Hour)
	reg := registry.New(registry.Logger(nilLogger()))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "AWS" || !f.current(p) {
			w.Header().Set("WWW-Authenticate", `Basic realm="ecr"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	src, err := For(context.Background(), ecrUpstream(&config.ECR{Region: testECRRegion, Endpoint: f.srv.URL}), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://")+"/team/app:v1", name.Insecure)
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
	if _, err := remote.Image(ref, remote.WithAuth(src)); err != nil {
		t.Fatalf("get: %v", err)
	}
	if n := f.callCount(); n != 1 {
		t.Fatalf("%d ECR calls for a push and a pull, want 1", n)
	}
}

// TestECRCustomCABundle: an https endpoint whose certificate only
// AWS_CA_BUNDLE vouches for, as with a VPC endpoint behind a private CA.
func TestECRCustomCABundle(t *testing.T) {
	awsTestEnv(t)
	f := newFakeECRTLS(t, time.Hour)
	up := ecrUpstream(&config.ECR{Region: testECRRegion, Endpoint: f.srv.URL})

	src, err := For(context.Background(), up, Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = src.Authorization()
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("Authorization without the CA: %v", err)
	}
	t.Logf("without the CA: %v", err)

	bundle := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_CA_BUNDLE", bundle)
	src, err = For(context.Background(), up, Options{})
	if err != nil {
		t.Fatal(err)
	}
	expectAuth(t, src, "AWS", "eyJwYXlsb2FkIjoiZWNyLXRlc3QtdG9rZW4-1")
}

// TestECRStartErrors: what For refuses, naming the upstream and the cause.
func TestECRStartErrors(t *testing.T) {
	awsTestEnv(t)
	for _, tt := range []struct {
		e    config.ECR
		env  string
		want string
	}{
		{config.ECR{}, "", "ecr: region is empty"},
		{config.ECR{Region: testECRRegion, Endpoint: "http://api.ecr.example.com"}, "", `ecr: endpoint "http://api.ecr.example.com" must use https`},
		{config.ECR{Region: testECRRegion}, "no-such-profile", "ecr: AWS configuration: failed to get shared config profile, no-such-profile"},
	} {
		t.Setenv("AWS_PROFILE", tt.env)
		_, err := For(context.Background(), ecrUpstream(&tt.e), Options{})
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), testECRAccount) {
			t.Errorf("For(%+v, AWS_PROFILE=%q) = %v, want an error with %q", tt.e, tt.env, err, tt.want)
		}
	}
}

func TestRedactSecrets(t *testing.T) {
	got := redactSecrets("bad key hunter2 and token "+strings.Repeat("A", 40)+" at https://api.ecr.eu-west-1.amazonaws.com", []string{"hunter2", ""})
	if want := "bad key [redacted] and token [redacted] at https://api.ecr.eu-west-1.amazonaws.com"; got != want {
		t.Fatalf("redactSecrets = %q, want %q", got, want)
	}
	if got := redactSecrets(strings.Repeat("ab ", 200), nil); len(got) > 310 {
		t.Fatalf("not cut short: %d bytes", len(got))
	}
}
