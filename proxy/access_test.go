package proxy

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"golang.org/x/crypto/bcrypt"

	"github.com/pullbroker/pullbroker/config"
)

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func htpasswdLine(t *testing.T, user, pass string) string {
	h, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return user + ":" + string(h) + "\n"
}

func testAccess(t *testing.T, cfg *config.Config) *access {
	t.Helper()
	a, err := newAccess(cfg, slog.New(slog.DiscardHandler), newMetrics(prometheus.NewRegistry()))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestUnknownUserCostsABcryptCompare: an unknown user name is checked
// against a bcrypt hash like a known one, so the answer's timing does not
// tell which user names exist.
func TestUnknownUserCostsABcryptCompare(t *testing.T) {
	htpasswd := writeFile(t, htpasswdLine(t, "alice", "wonderland"))
	a := testAccess(t, &config.Config{Access: config.Access{HtpasswdFile: htpasswd}})
	var compared [][]byte
	a.compareHash = func(hash, password []byte) error {
		compared = append(compared, hash)
		return bcrypt.CompareHashAndPassword(hash, password)
	}
	login := func(user, pass string) int {
		r := httptest.NewRequest(http.MethodGet, "/v2/", nil)
		r.RemoteAddr = "192.0.2.1:1"
		r.SetBasicAuth(user, pass)
		if e := a.checkClient(httptest.NewRecorder(), r); e != nil {
			return e.status
		}
		return 0
	}
	users := a.htpasswd.Get()
	if got := login("mallory", "wonderland"); got != http.StatusUnauthorized || len(compared) != 1 || !bytes.Equal(compared[0], users.unknownUser) {
		t.Fatalf("unknown user: status %d, compared %d hashes, want 401 after one compare with the unknown-user hash", got, len(compared))
	}
	if cost, err := bcrypt.Cost(users.unknownUser); err != nil || cost != bcrypt.MinCost {
		t.Fatalf("unknown-user hash cost %d (%v), want the file's %d", cost, err, bcrypt.MinCost)
	}
	if got := login("alice", "nope"); got != http.StatusUnauthorized || len(compared) != 2 || !bytes.Equal(compared[1], users.hashes["alice"]) {
		t.Fatalf("wrong password: status %d, compared %d hashes", got, len(compared))
	}
	if got := login("alice", "wonderland"); got != 0 {
		t.Fatalf("right password: status %d", got)
	}
}

// TestFailedLoginsThrottled: after maxFailedLogins failures a source is
// answered 429 with Retry-After and TOOMANYREQUESTS, even with the right
// password, until the window ends; other sources are not affected.
func TestFailedLoginsThrottled(t *testing.T) {
	htpasswd := writeFile(t, htpasswdLine(t, "alice", "wonderland"))
	reg := prometheus.NewRegistry()
	m := newMetrics(reg)
	a, err := newAccess(&config.Config{Access: config.Access{HtpasswdFile: htpasswd}}, slog.New(slog.DiscardHandler), m)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	a.logins.now = func() time.Time { return now }
	login := func(remote, pass string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodGet, "/v2/", nil)
		r.RemoteAddr = remote
		r.SetBasicAuth("alice", pass)
		w := httptest.NewRecorder()
		if e := a.checkClient(w, r); e != nil {
			writeError(w, r, e)
		}
		return w
	}
	const attacker = "203.0.113.9:4000"
	for i := range maxFailedLogins {
		if w := login(attacker, "guess"); w.Code != http.StatusUnauthorized {
			t.Fatalf("failure %d: status %d, want 401", i+1, w.Code)
		}
	}
	w := login(attacker, "wonderland")
	if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "60" || !strings.Contains(w.Body.String(), "TOOMANYREQUESTS") {
		t.Fatalf("after %d failures: status %d, Retry-After %q, body %s", maxFailedLogins, w.Code, w.Header().Get("Retry-After"), w.Body)
	}
	// Another port of the same host is the same source; another host is not.
	if w := login("203.0.113.9:4001", "wonderland"); w.Code != http.StatusTooManyRequests {
		t.Fatalf("same host, other port: status %d, want 429", w.Code)
	}
	if w := login("203.0.113.10:4000", "wonderland"); w.Code != http.StatusOK {
		t.Fatalf("other host: status %d, want 200", w.Code)
	}
	if got := testutil.ToFloat64(m.clientAuthFailures.WithLabelValues("invalid")); got != maxFailedLogins {
		t.Fatalf("invalid = %v, want %d", got, maxFailedLogins)
	}
	if got := testutil.ToFloat64(m.clientAuthFailures.WithLabelValues("throttled")); got != 2 {
		t.Fatalf("throttled = %v, want 2", got)
	}
	now = now.Add(failedLoginWindow)
	if w := login(attacker, "wonderland"); w.Code != http.StatusOK {
		t.Fatalf("after the window: status %d, want 200", w.Code)
	}
}

func TestHtpasswdRefusesWhatItCannotCheck(t *testing.T) {
	for name, content := range map[string]string{
		"no hash":    "alice\n",
		"not bcrypt": "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
	} {
		_, err := newAccess(&config.Config{Access: config.Access{HtpasswdFile: writeFile(t, content)}}, slog.New(slog.DiscardHandler), newMetrics(nil))
		if err == nil || strings.Contains(err.Error(), "W6ph5") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestClientAccess(t *testing.T) {
	htpasswd := writeFile(t, htpasswdLine(t, "alice", "wonderland"))
	tokens := writeFile(t, "# CI runners\ntok-123\n")
	req := func(remote string, auth ...string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/v2/", nil)
		r.RemoteAddr = remote
		if len(auth) == 2 {
			r.SetBasicAuth(auth[0], auth[1])
		} else if len(auth) == 1 {
			r.Header.Set("Authorization", "Bearer "+auth[0])
		}
		// A forged forwarding header must not matter.
		r.Header.Set("X-Forwarded-For", "10.1.2.3")
		return r
	}
	tests := []struct {
		name   string
		access config.Access
		req    *http.Request
		want   int // 0 = allowed
	}{
		{"open by default", config.Access{}, req("203.0.113.9:1234"), 0},
		{"inside allowed network", config.Access{AllowedNetworks: []string{"10.0.0.0/8"}}, req("10.9.9.9:1"), 0},
		{"outside, no credentials configured", config.Access{AllowedNetworks: []string{"10.0.0.0/8"}}, req("203.0.113.9:1"), 403},
		{"IPv4-mapped IPv6 inside", config.Access{AllowedNetworks: []string{"10.0.0.0/8"}}, req("[::ffff:10.0.0.1]:1"), 0},
		{"outside, valid htpasswd user", config.Access{AllowedNetworks: []string{"10.0.0.0/8"}, HtpasswdFile: htpasswd}, req("203.0.113.9:1", "alice", "wonderland"), 0},
		{"outside, wrong password", config.Access{AllowedNetworks: []string{"10.0.0.0/8"}, HtpasswdFile: htpasswd}, req("203.0.113.9:1", "alice", "nope"), 401},
		{"outside, unknown user", config.Access{HtpasswdFile: htpasswd}, req("10.0.0.1:1", "bob", "wonderland"), 401},
		{"credentials required everywhere", config.Access{HtpasswdFile: htpasswd}, req("10.0.0.1:1"), 401},
		{"static token", config.Access{TokensFile: tokens}, req("10.0.0.1:1", "tok-123"), 0},
		{"bad token", config.Access{TokensFile: tokens}, req("10.0.0.1:1", "tok-124"), 401},
		{"comment is no token", config.Access{TokensFile: tokens}, req("10.0.0.1:1", "# CI runners"), 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := testAccess(t, &config.Config{Access: tt.access})
			got := 0
			if e := a.checkClient(httptest.NewRecorder(), tt.req); e != nil {
				got = e.status
			}
			if got != tt.want {
				t.Fatalf("status = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestCredentialFilesRotateWithoutRestart(t *testing.T) {
	tokens := writeFile(t, "old-token\n")
	a := testAccess(t, &config.Config{Access: config.Access{TokensFile: tokens}})
	valid := func(token string) bool { return validToken(a.tokens.Get(), token) }
	if !valid("old-token") {
		t.Fatal("old token refused")
	}
	if err := os.WriteFile(tokens, []byte("new-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := a.tokens.Check(); err != nil { // instead of waiting for the interval
		t.Fatal(err)
	}
	if valid("old-token") || !valid("new-token") {
		t.Fatal("rotated token file not picked up")
	}
	if err := os.Remove(tokens); err != nil {
		t.Fatal(err)
	}
	if a.tokens.Check() == nil || !valid("new-token") {
		t.Fatal("a vanished file should keep the last good tokens")
	}
}

func TestRepositoryGlobs(t *testing.T) {
	cfg := &config.Config{Upstreams: []config.Upstream{
		{Name: "private.example", Repositories: []string{"team/*", "shared/**"}},
		{Name: "open.example"},
	}}
	a := testAccess(t, cfg)
	for _, tt := range []struct {
		registry, repo string
		allowed        bool
	}{
		{"private.example", "team/app", true},
		{"private.example", "team/app/sub", false},
		{"private.example", "shared/a/b/c", true},
		{"private.example", "other/app", false},
		{"open.example", "anything/at/all", true},
	} {
		err := a.allowRepository(&route{registry: tt.registry, repository: tt.repo})
		if (err == nil) != tt.allowed {
			t.Errorf("%s/%s allowed = %v, want %v", tt.registry, tt.repo, err == nil, tt.allowed)
		}
		if err != nil && (err.status != 403 || err.err.Code.String() != "DENIED") {
			t.Errorf("%s/%s refused with %d %s", tt.registry, tt.repo, err.status, err.err.Code)
		}
	}
}
