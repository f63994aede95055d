package auth

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"
	"golang.org/x/oauth2/jwt"
	corev1 "k8s.io/api/core/v1"

	"github.com/pullbroker/pullbroker/config"
)

// GCPScope is the OAuth2 scope requested for access tokens. Artifact
// Registry and Container Registry accept it for pulls.
const GCPScope = "https://www.googleapis.com/auth/cloud-platform"

// Usernames Google's registries expect.
const (
	gcpAccessTokenUser = "oauth2accesstoken"
	gcpJSONKeyUser     = "_json_key"
	gcpJSONKeyB64User  = "_json_key_base64"
)

// DefaultGCPSecretKey is the Secret data key read when secretKey is empty.
const DefaultGCPSecretKey = "key.json"

// gcpRefreshMargin: an access token is replaced when less than
// min(gcpRefreshMargin, a fifth of its lifetime) is left.
const gcpRefreshMargin = 5 * time.Minute

func (s *source) startGCP(ctx context.Context, g *config.GCPServiceAccount) error {
	mode := g.Exchange
	switch mode {
	case "", "accessToken", "jsonKey", "jsonKeyBase64":
	default:
		return fmt.Errorf("gcpServiceAccount: exchange %q is not one of accessToken, jsonKey, jsonKeyBase64", mode)
	}
	parse := func(data []byte) (material, error) { return s.gcpMaterial(data, mode) }
	if g.KeyFile != "" {
		return s.startFileWatch("GCP service-account key file", g.KeyFile, parse)
	}
	key := g.SecretKey
	if key == "" {
		key = DefaultGCPSecretKey
	}
	return s.startSecretWatch(ctx, g.Secret, g.Kubeconfig, func(sec *corev1.Secret) (material, error) {
		data, ok := sec.Data[key]
		if !ok || len(data) == 0 {
			return nil, fmt.Errorf("has no data under key %q", key)
		}
		m, err := parse(data)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", key, err)
		}
		return m, nil
	})
}

type serviceAccountKey struct {
	Type        string `json:"type"`
	ClientEmail string `json:"client_email"`
	PrivateKey  string `json:"private_key"`
	TokenURI    string `json:"token_uri"`
}

// gcpMaterial validates a service-account JSON key and turns it into the
// credential of the chosen exchange mode.
func (s *source) gcpMaterial(data []byte, mode string) (material, error) {
	var k serviceAccountKey
	if err := json.Unmarshal(data, &k); err != nil {
		return nil, jsonError(err)
	}
	if k.Type != "service_account" {
		return nil, errors.New(`is not a service-account key (its "type" is not "service_account")`)
	}
	if k.ClientEmail == "" {
		return nil, errors.New("has no client_email")
	}
	if err := checkRSAKey(k.PrivateKey); err != nil {
		return nil, err
	}
	switch mode {
	case "jsonKey":
		return basicMaterial{username: gcpJSONKeyUser, password: string(data)}, nil
	case "jsonKeyBase64":
		return basicMaterial{username: gcpJSONKeyB64User, password: base64.StdEncoding.EncodeToString(data)}, nil
	}
	cfg, err := google.JWTConfigFromJSON(data, GCPScope)
	if err != nil {
		return nil, errors.New("cannot be used for the JWT-bearer grant")
	}
	if err := checkTokenURL(cfg.TokenURL); err != nil {
		return nil, err
	}
	return newTokenMaterial(s, &gcpExchanger{s: s, cfg: cfg}, gcpRefreshMargin), nil
}

func checkRSAKey(p string) error {
	block, _ := pem.Decode([]byte(p))
	if block == nil {
		return errors.New("private_key is not PEM")
	}
	if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		if _, ok := k.(*rsa.PrivateKey); !ok {
			return errors.New("private_key is not an RSA key")
		}
		return nil
	}
	if _, err := x509.ParsePKCS1PrivateKey(block.Bytes); err != nil {
		return errors.New("private_key is not a PKCS#8 or PKCS#1 RSA private key")
	}
	return nil
}

// checkTokenURL refuses to send a signed assertion in clear text anywhere
// but to this machine.
func checkTokenURL(raw string) error { return checkSecureURL("token_uri", raw) }

// checkSecureURL accepts https URLs, and http ones only to this machine:
// what is sent there, or answered, is a secret.
func checkSecureURL(what, raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%s %q is not a URL", what, raw)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		h := u.Hostname()
		if ip := net.ParseIP(h); (ip != nil && ip.IsLoopback()) || h == "localhost" {
			return nil
		}
	}
	return fmt.Errorf("%s %q must use https", what, raw)
}

// gcpExchanger exchanges a service-account key for OAuth2 access tokens
// (JWT-bearer grant at the key's token_uri), sent as oauth2accesstoken.
type gcpExchanger struct {
	s   *source
	cfg *jwt.Config
}

func (g *gcpExchanger) logAttrs() []any { return []any{"token_uri", g.cfg.TokenURL} }

// exchange runs one JWT-bearer grant. Its errors say what went wrong
// without quoting the response body or the assertion.
func (g *gcpExchanger) exchange(ctx context.Context) (exchangedToken, error) {
	base := g.s.opts.HTTPClient
	rt := &recordingTransport{base: base.Transport}
	if rt.base == nil {
		rt.base = http.DefaultTransport
	}
	client := *base
	client.Transport = rt
	ctx = context.WithValue(ctx, oauth2.HTTPClient, &client)
	tok, err := g.cfg.TokenSource(ctx).Token()
	if err == nil && tok.AccessToken == "" {
		err = errors.New("missing access_token")
	}
	if err == nil {
		return exchangedToken{username: gcpAccessTokenUser, password: tok.AccessToken, expiry: tok.Expiry}, nil
	}
	where := "token endpoint " + g.cfg.TokenURL
	var re *oauth2.RetrieveError
	switch {
	case errors.As(err, &re):
		return exchangedToken{}, fmt.Errorf("%s refused the exchange: %s", where, describeOAuthError(re))
	case rt.err() != nil:
		return exchangedToken{}, fmt.Errorf("%s: %w", where, rt.err())
	default:
		return exchangedToken{}, fmt.Errorf("%s sent no usable token", where)
	}
}

// recordingTransport remembers the transport error of the exchange, which
// golang.org/x/oauth2 flattens into a string together with other causes.
type recordingTransport struct {
	base http.RoundTripper
	mu   sync.Mutex
	last error
}

func (r *recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.base.RoundTrip(req)
	if err != nil {
		r.mu.Lock()
		r.last = err
		r.mu.Unlock()
	}
	return resp, err
}

func (r *recordingTransport) err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

var (
	oauthErrorCode = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)
	// Long runs of token-like characters are redacted from descriptions
	// in case an endpoint echoes an assertion or token.
	tokenLike = regexp.MustCompile(`[A-Za-z0-9_\-.+/=]{32,}`)
)

// describeOAuthError gives the status and the RFC 6749 error code and
// description of a refused exchange.
func describeOAuthError(re *oauth2.RetrieveError) string {
	status := "no response"
	if re.Response != nil {
		status = re.Response.Status
	}
	var body struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	_ = json.Unmarshal(re.Body, &body)
	msg := "HTTP " + status
	if oauthErrorCode.MatchString(body.Error) {
		msg += ", " + body.Error
		if d := strings.TrimSpace(body.Description); d != "" {
			if len(d) > 200 {
				d = d[:200] + "…"
			}
			msg += ": " + tokenLike.ReplaceAllString(d, "[redacted]")
		}
	}
	return msg
}
