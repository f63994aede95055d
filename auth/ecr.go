package auth

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ecr"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/pullbroker/pullbroker/config"
)

// ECR tuning. ecrRefreshMargin bounds how long before its expiry an
// authorization token is replaced; with ECR's 12-hour tokens the other
// bound, a fifth of the lifetime, is the smaller one: a token is replaced
// 2.4 h before it expires, so an outage of the ECR API or of the AWS
// credential chain that long goes unnoticed by pulls. ecrCallTimeout bounds
// one refresh, the SDK's retries included.
const (
	ecrRefreshMargin = 3 * time.Hour
	ecrCallTimeout   = 30 * time.Second
)

// startECR sets up the AWS SDK with the default credential chain: the
// AWS_* environment, the shared config and credentials files, web identity
// (IRSA, EKS Pod Identity), ECS and EC2 metadata. Nothing is fetched
// here: the first Authorization asks ECR for a token, as the GCP source
// exchanges its key on first use. Errors are those of an AWS configuration
// that cannot be loaded (a named profile that does not exist, a malformed
// shared config file).
func (s *source) startECR(ctx context.Context, e *config.ECR) error {
	if e.Region == "" {
		return errors.New("ecr: region is empty")
	}
	if e.Endpoint != "" {
		if err := checkSecureURL("ecr: endpoint", e.Endpoint); err != nil {
			return err
		}
	}
	// The SDK keeps its own HTTP client, not Options.HTTPClient: that one
	// honours AWS_CA_BUNDLE and the shared config's ca_bundle. Every call,
	// the credential chain's included, is bounded by ecrCallTimeout.
	cfg, err := awsconfig.LoadDefaultConfig(ctx,
		awsconfig.WithRegion(e.Region),
		// The SDK logs nothing of requests or responses.
		awsconfig.WithLogger(logging.Nop{}),
		awsconfig.WithClientLogMode(0),
	)
	if err != nil {
		return fmt.Errorf("ecr: AWS configuration: %s", redactSecrets(err.Error(), nil))
	}
	if cfg.Credentials == nil {
		return errors.New("ecr: the AWS SDK found no credential provider")
	}
	x := &ecrExchanger{region: e.Region, endpoint: e.Endpoint, registryID: e.RegistryID}
	x.creds.base = cfg.Credentials
	cfg.Credentials = &x.creds
	x.client = ecr.NewFromConfig(cfg, func(o *ecr.Options) {
		if e.Endpoint != "" {
			o.BaseEndpoint = aws.String(e.Endpoint)
		}
	})
	what := "the AWS default credential chain, for ECR in " + e.Region
	if e.Endpoint != "" {
		what += " at " + e.Endpoint
	}
	s.rotated(newTokenMaterial(s, x, ecrRefreshMargin), what)
	return nil
}

// ecrExchanger asks ECR for an authorization token, a base64
// "AWS:<password>" valid for 12 hours.
type ecrExchanger struct {
	region, endpoint, registryID string
	client                       *ecr.Client
	creds                        recordingCredentials
}

func (x *ecrExchanger) logAttrs() []any {
	if x.endpoint != "" {
		return []any{"region", x.region, "ecr_endpoint", x.endpoint}
	}
	return []any{"region", x.region}
}

func (x *ecrExchanger) where() string {
	w := "ECR GetAuthorizationToken in " + x.region
	if x.endpoint != "" {
		w += " at " + x.endpoint
	}
	return w
}

func (x *ecrExchanger) exchange(ctx context.Context) (exchangedToken, error) {
	ctx, cancel := context.WithTimeout(ctx, ecrCallTimeout)
	defer cancel()
	in := &ecr.GetAuthorizationTokenInput{}
	if x.registryID != "" {
		// Deprecated in the API, still honoured: see config.ECR.RegistryID.
		in.RegistryIds = []string{x.registryID}
	}
	out, err := x.client.GetAuthorizationToken(ctx, in)
	if err != nil {
		return exchangedToken{}, x.describe(err)
	}
	if len(out.AuthorizationData) == 0 {
		return exchangedToken{}, fmt.Errorf("%s: the answer has no authorizationData", x.where())
	}
	d := out.AuthorizationData[0]
	if d.AuthorizationToken == nil || *d.AuthorizationToken == "" {
		return exchangedToken{}, fmt.Errorf("%s: the answer has no authorizationToken", x.where())
	}
	raw, err := base64.StdEncoding.DecodeString(*d.AuthorizationToken)
	if err != nil {
		return exchangedToken{}, fmt.Errorf("%s: the authorizationToken is not base64", x.where())
	}
	defer clear(raw)
	user, pass, ok := strings.Cut(string(raw), ":")
	if !ok || user == "" || pass == "" {
		return exchangedToken{}, fmt.Errorf("%s: the authorizationToken is not user:password", x.where())
	}
	tok := exchangedToken{username: user, password: pass}
	if d.ExpiresAt != nil {
		tok.expiry = *d.ExpiresAt
	}
	return tok, nil
}

var requestID = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)

// describe turns an SDK error into one that says what failed (the API's
// error code and HTTP status, the credential chain, the connection)
// without any secret: the message parts the SDK or the server chose are
// cut short and stripped of token-like runs and of the credentials used.
func (x *ecrExchanger) describe(err error) error {
	secrets := x.creds.seen()
	var api smithy.APIError
	var resp *smithyhttp.ResponseError
	switch {
	case errors.As(err, &api):
		msg := x.where() + " refused"
		if errors.As(err, &resp) {
			msg += fmt.Sprintf(": HTTP %d", resp.HTTPStatusCode())
		}
		if code := api.ErrorCode(); oauthErrorCode.MatchString(code) {
			msg += ", " + code
		}
		if m := strings.TrimSpace(api.ErrorMessage()); m != "" {
			msg += ": " + redactSecrets(m, secrets)
		}
		var rid interface{ ServiceRequestID() string }
		if errors.As(err, &rid) && requestID.MatchString(rid.ServiceRequestID()) {
			msg += " (request ID " + rid.ServiceRequestID() + ")"
		}
		return errors.New(msg)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: no answer within %s", x.where(), ecrCallTimeout)
	}
	var op *smithy.OperationError
	if errors.As(err, &op) {
		err = op.Err
	}
	return fmt.Errorf("%s: %s", x.where(), redactSecrets(err.Error(), secrets))
}

// awsTokenLike are runs that may be a secret access key, a session or
// web identity token, or an ECR token: base64 of 32 characters or more.
// Unlike tokenLike it stops at dots, so that host names stay readable.
var awsTokenLike = regexp.MustCompile(`[A-Za-z0-9+/=_-]{32,}`)

// redactSecrets cuts s short and replaces the given secrets and any long
// token-like run in it.
func redactSecrets(s string, secrets []string) string {
	for _, sec := range secrets {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, "[redacted]")
		}
	}
	s = awsTokenLike.ReplaceAllString(s, "[redacted]")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

// recordingCredentials passes the credential chain's answers to the signer
// and remembers the secret parts of the last one, so that no error text
// can quote them.
type recordingCredentials struct {
	base aws.CredentialsProvider

	mu                      sync.Mutex
	secretKey, sessionToken string
}

func (r *recordingCredentials) Retrieve(ctx context.Context) (aws.Credentials, error) {
	c, err := r.base.Retrieve(ctx)
	if err == nil {
		r.mu.Lock()
		r.secretKey, r.sessionToken = c.SecretAccessKey, c.SessionToken
		r.mu.Unlock()
	}
	return c, err
}

func (r *recordingCredentials) seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return []string{r.secretKey, r.sessionToken}
}
