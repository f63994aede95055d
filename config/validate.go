package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/pullbroker/pullbroker/internal/glob"
	"github.com/pullbroker/pullbroker/internal/registryname"
)

// Validate reports every problem in c, each naming its key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}

	if c.Listen.Addr == "" {
		bad("listen.addr", "must be set, for example \":5000\"")
	} else if _, _, err := net.SplitHostPort(c.Listen.Addr); err != nil {
		bad("listen.addr", "%q is not host:port (%v)", c.Listen.Addr, err)
	}
	if (c.Listen.TLSCertFile == "") != (c.Listen.TLSKeyFile == "") {
		bad("listen.tlsCertFile", "tlsCertFile and tlsKeyFile must be set together")
	}
	if c.Listen.DrainTimeout < 0 {
		bad("listen.drainTimeout", "must not be negative")
	}
	if c.Listen.MaxHeaderBytes < 4096 {
		bad("listen.maxHeaderBytes", "%d is too small for registry clients; use at least 4096 (default 65536)", c.Listen.MaxHeaderBytes)
	}
	if c.Listen.ReadHeaderTimeout <= 0 {
		bad("listen.readHeaderTimeout", "must be positive, for example 30s")
	}
	if c.Listen.IdleTimeout <= 0 {
		bad("listen.idleTimeout", "must be positive, for example 2m")
	}
	if c.Admin.Addr != "" {
		if _, _, err := net.SplitHostPort(c.Admin.Addr); err != nil {
			bad("admin.addr", "%q is not host:port (%v)", c.Admin.Addr, err)
		}
	}
	if (c.Admin.TLSCertFile == "") != (c.Admin.TLSKeyFile == "") {
		bad("admin.tlsCertFile", "tlsCertFile and tlsKeyFile must be set together")
	}
	validateStorageDriver(c.Storage, bad)
	validateCluster(c.Cluster, bad)
	if c.Storage.MaxSizeBytes < 0 {
		bad("storage.maxSizeBytes", "must not be negative (0 means unbounded)")
	}
	if c.Storage.EvictMinIdle <= 0 {
		bad("storage.evictMinIdle", "must be positive: it keeps reads in progress and images being pulled from losing their blobs")
	}
	if c.Storage.RecordCacheTTL < 0 {
		bad("storage.recordCacheTTL", "must not be negative (0 reads storage on every request)")
	}
	if c.Storage.Fills.Timeout < 0 {
		bad("storage.fills.timeout", "must be positive")
	}
	if c.Storage.Fills.StallTimeout < 0 || c.Storage.Fills.StallTimeout > c.Storage.Fills.Timeout {
		bad("storage.fills.stallTimeout", "must be positive and at most storage.fills.timeout")
	}
	if c.Storage.Fills.MaxConcurrent < 0 {
		bad("storage.fills.maxConcurrent", "must be positive")
	}
	if c.Storage.GC.Interval < 0 {
		bad("storage.gc.interval", "must not be negative (0 runs no scheduled GC)")
	}
	if c.Storage.GC.Grace <= 0 {
		bad("storage.gc.grace", "must be positive (for example 24h): a pull by digest needs its unreferenced layers to stay that long")
	}
	if c.Storage.Scrub.Interval < 0 {
		bad("storage.scrub.interval", "must not be negative (0 disables the schedule)")
	}
	if c.Storage.Scrub.Interval > 0 && c.Storage.Scrub.BytesPerSecond <= 0 {
		bad("storage.scrub.bytesPerSecond", "must be positive when storage.scrub.interval is set")
	}
	if c.Cluster.AccountingInterval <= 0 {
		bad("cluster.accountingInterval", "must be positive, for example 10s")
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		bad("log.format", "%q is not one of text, json", c.Log.Format)
	}
	switch strings.ToLower(c.Log.Level) {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	if c.Sync.ImagesFile != "" && c.Sync.Interval <= 0 {
		bad("sync.interval", "must be positive when sync.imagesFile is set")
	}
	if c.Catalog.CacheTTL < 0 {
		bad("catalog.cacheTTL", "must not be negative")
	}
	if !validMode(c.Mode) {
		bad("mode", "%q is not one of online, offline", c.Mode)
	}

	names := map[string]string{}
	for i, u := range c.Upstreams {
		key := fmt.Sprintf("upstreams[%d]", i)
		if u.Name != "" {
			key = fmt.Sprintf("upstreams[%s]", u.Name)
		}
		validateUpstream(key, u, bad)
		for _, n := range append([]string{u.Name}, u.Aliases...) {
			if n == "" {
				continue
			}
			if prev, dup := names[n]; dup {
				bad(key+".name", "%q is already used by %s", n, prev)
			}
			names[n] = key
		}
	}
	if c.DefaultUpstream != "" {
		if _, ok := c.Upstream(c.DefaultUpstream); !ok {
			bad("defaultUpstream", "%q is not the name of a configured upstream", c.DefaultUpstream)
		}
	}
	for i, cidr := range c.Access.AllowedNetworks {
		if _, _, err := net.ParseCIDR(cidr); err != nil {
			bad(fmt.Sprintf("access.allowedNetworks[%d]", i), "%q is not a CIDR such as 10.0.0.0/8", cidr)
		}
	}
	for i, p := range c.Pins {
		key := fmt.Sprintf("pins[%d]", i)
		switch p.Policy {
		case PolicyTTL, PolicySticky:
		case PolicyLocked:
			if p.LockFile == "" {
				bad(key+".lockFile", "a locked rule needs a lock file")
			}
		default:
			bad(key+".policy", "%q is not one of ttl, sticky, locked", p.Policy)
		}
		if _, err := glob.Compile(p.Repository); err != nil {
			bad(key+".repository", "bad glob %q", p.Repository)
		}
		if _, err := glob.Compile(p.Tag); err != nil {
			bad(key+".tag", "bad glob %q", p.Tag)
		}
		if p.TTL < 0 {
			bad(key+".ttl", "must not be negative")
		}
	}
	return errors.Join(errs...)
}

// validateStorageDriver checks at start what the storage driver would
// otherwise reject at its first request, or reject without naming the key.
// Driver names are distribution's: its S3 driver (package s3-aws)
// registers as "s3" and "s3aws".
func validateStorageDriver(s Storage, bad func(key, format string, args ...any)) {
	// Both drivers sign URLs too, but their URLs are not tested against a
	// server that checks them (the emulators do not).
	if s.Redirect && (s.Driver == "gcs" || s.Driver == "azure") {
		bad("storage.redirect", "only s3 can redirect; the %s driver's signed URLs are not supported", s.Driver)
	}
	switch s.Driver {
	case "filesystem", "inmemory":
		if s.Redirect {
			bad("storage.redirect", "the %s driver has no URL a client could fetch a blob from; only s3 can redirect", s.Driver)
		}
	case "s3", "s3aws":
		validateS3Parameters(s.Driver, s.Parameters, bad)
	case "gcs":
		validateGCSParameters(s.Parameters, bad)
	case "azure":
		validateAzureParameters(s.Parameters, bad)
	case "s3-aws":
		bad("storage.driver", "%q is the name of distribution's package; its S3 driver is named s3", s.Driver)
	case "":
		bad("storage.driver", "must be set to one of %s", storageDrivers)
	default:
		bad("storage.driver", "%q is not one of %s", s.Driver, storageDrivers)
	}
}

const storageDrivers = "filesystem, s3, gcs, azure, inmemory"

// parameterString is a driver parameter as the drivers read a string: ""
// when unset.
func parameterString(params map[string]any, name string) string {
	v, ok := params[name]
	if !ok || v == nil {
		return ""
	}
	return fmt.Sprint(v)
}

// validateS3Parameters checks the parameters of distribution's S3 driver
// that deployments rely on; the driver checks the rest (chunk sizes,
// storage class, ACL) when it is created at start.
func validateS3Parameters(driver string, params map[string]any, bad func(key, format string, args ...any)) {
	const key = "storage.parameters"
	str := func(name string) string { return parameterString(params, name) }
	if str("bucket") == "" {
		bad(key+".bucket", "required for %s", driver)
	}
	endpoint := str("regionendpoint")
	if str("region") == "" && endpoint == "" {
		bad(key+".region", "required for %s, for example eu-west-1 (an S3-compatible server may set regionendpoint instead)", driver)
	}
	if endpoint != "" && !isHTTPURL(endpoint) {
		bad(key+".regionendpoint", "%q is not a URL such as https://s3.example.com:9000", endpoint)
	}
	// A secret is never echoed: only whether it is set.
	if (str("accesskey") == "") != (str("secretkey") == "") {
		bad(key+".accesskey", "accesskey and secretkey must be set together (or neither, for the AWS default credential chain)")
	}
	for _, name := range []string{"forcepathstyle", "secure", "skipverify", "encrypt", "v4auth", "usedualstack", "accelerate"} {
		switch v := params[name].(type) {
		case nil, bool:
		case string:
			if _, err := strconv.ParseBool(v); err != nil {
				bad(key+"."+name, "%q is not true or false", v)
			}
		default:
			bad(key+"."+name, "%v is not true or false", v)
		}
	}
}

// gcsChunkUnit is the GCS resumable-upload granule: the gcs driver's
// chunksize must be a multiple of it.
const gcsChunkUnit = 256 << 10

// validateGCSParameters checks the parameters of distribution's gcs driver.
// Credentials are a service-account key, from the file keyfile names or
// inline under credentials, or else Google's application default
// credentials (GOOGLE_APPLICATION_CREDENTIALS, the metadata server).
func validateGCSParameters(params map[string]any, bad func(key, format string, args ...any)) {
	const key = "storage.parameters"
	if parameterString(params, "bucket") == "" {
		bad(key+".bucket", "required for gcs")
	}
	_, hasKeyfile := params["keyfile"]
	if hasKeyfile {
		if s, ok := params["keyfile"].(string); !ok || s == "" {
			bad(key+".keyfile", "must be the path of a service-account JSON key file")
		}
	}
	if creds, ok := params["credentials"]; ok {
		if hasKeyfile {
			bad(key+".credentials", "set keyfile or credentials, not both (the driver would ignore credentials)")
		}
		fields, ok := creds.(map[string]any)
		if !ok {
			bad(key+".credentials", "must be the fields of a service-account JSON key (type, client_email, private_key, ...)")
		} else {
			// The private key is never echoed: only whether it is set.
			if t := parameterString(fields, "type"); t != "service_account" {
				bad(key+".credentials.type", "%q is not service_account", t)
			}
			for _, name := range []string{"client_email", "private_key"} {
				if parameterString(fields, name) == "" {
					bad(key+".credentials."+name, "required in a service-account key")
				}
			}
		}
	}
	if v, ok := params["chunksize"]; ok {
		if n, ok := parameterInt(v); !ok || n < gcsChunkUnit || n%gcsChunkUnit != 0 {
			bad(key+".chunksize", "%v is not a positive multiple of %d bytes (256 KiB)", v, gcsChunkUnit)
		}
	}
	if v, ok := params["maxconcurrency"]; ok {
		if n, ok := parameterInt(v); !ok || n <= 0 {
			bad(key+".maxconcurrency", "%v is not a positive whole number", v)
		}
	}
}

// parameterInt reads a whole number as YAML or an environment override
// gives it.
func parameterInt(v any) (int64, bool) {
	switch n := v.(type) {
	case int:
		return int64(n), true
	case int64:
		return n, true
	case uint64:
		return int64(n), n <= math.MaxInt64
	case string:
		i, err := strconv.ParseInt(n, 10, 64)
		return i, err == nil
	}
	return 0, false
}

// validateAzureParameters checks the parameters of distribution's azure
// driver, which decodes them strictly by type and needs credentials.type.
func validateAzureParameters(params map[string]any, bad func(key, format string, args ...any)) {
	const key = "storage.parameters"
	stringsOnly := func(prefix string, params map[string]any, names ...string) {
		for _, name := range names {
			if v, ok := params[name]; ok {
				if _, ok := v.(string); !ok {
					bad(prefix+name, "must be a string")
				}
			}
		}
	}
	stringsOnly(key+".", params, "accountname", "accountkey", "container", "realm", "serviceurl", "rootdirectory", "retry_delay")
	for _, name := range []string{"accountname", "container"} {
		if parameterString(params, name) == "" {
			bad(key+"."+name, "required for azure")
		}
	}
	if _, ok := params["connectionstring"]; ok {
		bad(key+".connectionstring", "distribution's azure driver ignores it; set accountname, accountkey and serviceurl (or realm) instead")
	}
	if u := parameterString(params, "serviceurl"); u != "" && !isHTTPURL(u) {
		bad(key+".serviceurl", "%q is not a URL such as https://ACCOUNT.blob.core.windows.net", u)
	}
	if v, ok := params["max_retries"]; ok {
		// At -1 the driver aborts a copy still pending and reports the
		// move done: a committed blob would be missing.
		if n, ok := v.(int); !ok || n < 0 {
			bad(key+".max_retries", "%v is not a whole number of at least 0 (0 means the default, 5)", v)
		}
	}
	if d := parameterString(params, "retry_delay"); d != "" {
		if _, err := time.ParseDuration(d); err != nil {
			bad(key+".retry_delay", "%q is not a duration such as 100ms", d)
		}
	}
	if v, ok := params["skipverify"]; ok {
		if _, ok := v.(bool); !ok {
			bad(key+".skipverify", "%v is not true or false", v)
		}
	}
	creds, ok := params["credentials"].(map[string]any)
	if !ok && params["credentials"] != nil {
		bad(key+".credentials", "must be a map with type (and clientid, tenantid, secret for client_secret)")
		return
	}
	stringsOnly(key+".credentials.", creds, "type", "clientid", "tenantid", "secret")
	// Secrets are never echoed: only whether they are set.
	switch t := parameterString(creds, "type"); t {
	case "shared_key":
		if k := parameterString(params, "accountkey"); k == "" {
			bad(key+".accountkey", "required with credentials.type shared_key")
		} else if _, err := base64.StdEncoding.DecodeString(k); err != nil {
			bad(key+".accountkey", "is not base64, as the storage account's access keys are")
		}
	case "client_secret":
		for _, name := range []string{"clientid", "tenantid", "secret"} {
			if parameterString(creds, name) == "" {
				bad(key+".credentials."+name, "required with credentials.type client_secret")
			}
		}
	case "default_credentials":
	case "":
		bad(key+".credentials.type", "required for azure: shared_key (with accountkey), client_secret or default_credentials")
	default:
		bad(key+".credentials.type", "%q is not one of shared_key, client_secret, default_credentials", t)
	}
}

func isHTTPURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && u.Host != "" && (u.Scheme == "http" || u.Scheme == "https")
}

func validateUpstream(key string, u Upstream, bad func(key, format string, args ...any)) {
	if u.Name == "" {
		bad(key+".name", "must be set to the registry host clients use, for example ghcr.io")
	} else if !validRegistryName(u.Name) {
		bad(key+".name", "%q is not a registry host[:port]", u.Name)
	} else if _, err := registryname.ToPathComponent(u.Name); err != nil {
		bad(key+".name", "%q cannot be the first path component of an image name (%v); use a host name", u.Name, err)
	}
	for _, a := range u.Aliases {
		if !validRegistryName(a) {
			bad(key+".aliases", "%q is not a registry host[:port]", a)
		}
	}
	if ep, err := url.Parse(u.Endpoint); err != nil || u.Endpoint == "" {
		bad(key+".endpoint", "%q is not a URL such as https://registry.example.com", u.Endpoint)
	} else if ep.Scheme != "http" && ep.Scheme != "https" {
		bad(key+".endpoint", "%q must use http or https", u.Endpoint)
	} else if ep.Host == "" || (ep.Path != "" && ep.Path != "/") || ep.RawQuery != "" || ep.User != nil {
		bad(key+".endpoint", "%q must be scheme://host[:port] with no path, query or user", u.Endpoint)
	}
	if !validMode(u.Mode) {
		bad(key+".mode", "%q is not one of online, offline", u.Mode)
	}
	if u.TagTTL < 0 {
		bad(key+".tagTTL", "must not be negative")
	}
	if u.DialTimeout < 0 {
		bad(key+".dialTimeout", "must not be negative")
	}
	if u.ResponseTimeout < 0 {
		bad(key+".responseTimeout", "must not be negative")
	}
	if u.WorkTimeout < 0 {
		bad(key+".workTimeout", "must not be negative")
	}
	for i, g := range u.Repositories {
		if _, err := glob.Compile(g); err != nil {
			bad(fmt.Sprintf("%s.repositories[%d]", key, i), "bad glob %q", g)
		}
	}
	for i, h := range u.AllowedRealmHosts {
		if !validRealmHost(h) {
			bad(fmt.Sprintf("%s.allowedRealmHosts[%d]", key, i), "%q is not a host name or *.domain (no scheme, port or path)", h)
		}
	}
	if c := u.Credentials; c != nil {
		validateCredentials(key+".credentials", c, bad)
		if c.ECR != nil {
			validateECR(key+".credentials.ecr", c.ECR, u.Endpoint, bad)
		}
	}
}

func validateCredentials(key string, c *Credentials, bad func(key, format string, args ...any)) {
	n := 0
	if b := c.Basic; b != nil {
		n++
		if b.Username == "" {
			bad(key+".basic.username", "must be set")
		}
		given := 0
		for _, s := range []string{b.Password, b.PasswordFile, b.PasswordEnv} {
			if s != "" {
				given++
			}
		}
		if given != 1 {
			bad(key+".basic", "set exactly one of password, passwordFile, passwordEnv")
		}
	}
	if g := c.GCPServiceAccount; g != nil {
		n++
		if (g.KeyFile == "") == (g.Secret == "") {
			bad(key+".gcpServiceAccount", "set exactly one of keyFile, secret")
		}
		if g.Secret != "" && !validNamespacedName(g.Secret) {
			bad(key+".gcpServiceAccount.secret", "%q is not namespace/name", g.Secret)
		}
		if g.Secret == "" && (g.SecretKey != "" || g.Kubeconfig != "") {
			bad(key+".gcpServiceAccount", "secretKey and kubeconfig apply only with secret")
		}
		switch g.Exchange {
		case "", "accessToken", "jsonKey", "jsonKeyBase64":
		default:
			bad(key+".gcpServiceAccount.exchange", "%q is not one of accessToken, jsonKey, jsonKeyBase64", g.Exchange)
		}
	}
	if d := c.DockerConfig; d != nil {
		n++
		if d.File == "" {
			bad(key+".dockerConfig.file", "must be set")
		}
	}
	if k := c.KubernetesSecret; k != nil {
		n++
		if !validNamespacedName(k.Name) {
			bad(key+".kubernetesSecret.name", "%q is not namespace/name", k.Name)
		}
	}
	if c.ECR != nil {
		n++
	}
	if n != 1 {
		bad(key, "set exactly one of basic, gcpServiceAccount, dockerConfig, kubernetesSecret, ecr (found %d)", n)
	}
}

var (
	awsRegion    = regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)+$`)
	awsAccountID = regexp.MustCompile(`^[0-9]{12}$`)
	// ecrRegistryHost is a private ECR registry's host, with its region:
	// 123456789012.dkr.ecr.eu-west-1.amazonaws.com, the -fips and
	// dual-stack (dkr-ecr ... on.aws) forms, the .cn partition.
	ecrRegistryHost = regexp.MustCompile(`^[0-9]{12}\.dkr[.-]ecr(?:-fips)?\.([a-z0-9-]+)\.`)
)

func validateECR(key string, e *ECR, upstreamEndpoint string, bad func(key, format string, args ...any)) {
	if e.Region == "" {
		bad(key+".region", "must be set to the registry's AWS region, for example eu-west-1")
	} else if !awsRegion.MatchString(e.Region) {
		bad(key+".region", "%q is not an AWS region such as eu-west-1", e.Region)
	} else if ep, err := url.Parse(upstreamEndpoint); err == nil {
		if m := ecrRegistryHost.FindStringSubmatch(ep.Hostname()); m != nil && m[1] != e.Region {
			bad(key+".region", "%q is not the region of the upstream endpoint %s (%s); ECR tokens are regional", e.Region, ep.Host, m[1])
		}
	}
	if e.RegistryID != "" && !awsAccountID.MatchString(e.RegistryID) {
		bad(key+".registryID", "%q is not a 12-digit AWS account ID", e.RegistryID)
	}
	if e.Endpoint != "" {
		ep, err := url.Parse(e.Endpoint)
		switch {
		case err != nil || ep.Host == "" || (ep.Scheme != "http" && ep.Scheme != "https"):
			bad(key+".endpoint", "%q is not a URL such as https://api.ecr.eu-west-1.amazonaws.com", e.Endpoint)
		case (ep.Path != "" && ep.Path != "/") || ep.RawQuery != "" || ep.User != nil:
			bad(key+".endpoint", "%q must be scheme://host[:port] with no path, query or user", e.Endpoint)
		case ep.Scheme == "http" && !isLoopback(ep.Hostname()):
			bad(key+".endpoint", "%q must use https (http only on a loopback address)", e.Endpoint)
		}
	}
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// validRealmHost accepts a host name, or "*." and a domain.
func validRealmHost(h string) bool {
	name := strings.TrimPrefix(h, "*.")
	return name != "" && !strings.ContainsAny(name, "/:*@?#[] ") && !strings.HasPrefix(name, ".") && !strings.HasSuffix(name, ".")
}

// replicaName is what a replica may be called: a host or Pod name, which
// also becomes one path component in storage.
var replicaName = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$`)

func validMode(m string) bool { return m == "" || m == ModeOnline || m == ModeOffline }

func validNamespacedName(s string) bool {
	ns, name, ok := strings.Cut(s, "/")
	return ok && ns != "" && name != "" && !strings.Contains(name, "/")
}

// validRegistryName accepts a DNS host or IP literal with an optional port,
// the way image references name registries.
func validRegistryName(s string) bool {
	host := s
	if h, p, err := net.SplitHostPort(s); err == nil {
		if p == "" {
			return false
		}
		host = h
	}
	if host == "" || strings.ContainsAny(host, "/@?#") {
		return false
	}
	if net.ParseIP(host) != nil {
		return true
	}
	for _, label := range strings.Split(host, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

func validateCluster(c Cluster, bad func(key, format string, args ...any)) {
	if c.Name != "" && !replicaName.MatchString(c.Name) {
		bad("cluster.name", "%q is not a host name: letters, digits, '.', '-' and '_', starting and ending with a letter or digit, at most 253", c.Name)
	}
	le := c.LeaderElection
	switch le.Backend {
	case LeaderElectionStorage, LeaderElectionKubernetes:
	default:
		bad("cluster.leaderElection.backend", "%q is not one of storage, kubernetes", le.Backend)
	}
	if le.RetryPeriod <= 0 {
		bad("cluster.leaderElection.retryPeriod", "must be positive, for example 2s")
	}
	// client-go jitters retries by up to 1.2 times the period; a renewal
	// must have room for at least one.
	if float64(le.RenewDeadline) <= 1.2*float64(le.RetryPeriod) {
		bad("cluster.leaderElection.renewDeadline", "%s must be more than 1.2 times retryPeriod (%s), for example 10s", le.RenewDeadline, le.RetryPeriod)
	}
	if le.LeaseDuration <= le.RenewDeadline {
		bad("cluster.leaderElection.leaseDuration", "%s must be longer than renewDeadline (%s): a leader cut off from the lease must stop before another may start", le.LeaseDuration, le.RenewDeadline)
	}
	if le.Backend == LeaderElectionKubernetes && le.LeaseDuration%time.Second != 0 {
		bad("cluster.leaderElection.leaseDuration", "%s is not a whole number of seconds, which is what a Lease records", le.LeaseDuration)
	}
	// Checked whatever the backend, so that switching to kubernetes does
	// not reveal an old mistake.
	for _, msg := range validation.IsDNS1123Subdomain(le.LeaseName) {
		bad("cluster.leaderElection.leaseName", "%q is not a Kubernetes object name: %s", le.LeaseName, msg)
	}
	if le.Namespace != "" {
		for _, msg := range validation.IsDNS1123Label(le.Namespace) {
			bad("cluster.leaderElection.namespace", "%q is not a Kubernetes namespace name: %s", le.Namespace, msg)
		}
	}
	if c.PeerListen == "" {
		if len(c.Peers) > 0 || c.PeerService != "" {
			bad("cluster.peerListen", "must be set when cluster.peers or cluster.peerService is, for example \":5002\"")
		}
		return
	}
	if _, _, err := net.SplitHostPort(c.PeerListen); err != nil {
		bad("cluster.peerListen", "%q is not host:port (%v)", c.PeerListen, err)
	}
	if c.PeerTokenFile == "" {
		bad("cluster.peerTokenFile", "must be set when cluster.peerListen is: peers authenticate with the token in it")
	}
	if t := c.PeerTLS; t.Enabled() && (t.CertFile == "" || t.KeyFile == "" || t.CAFile == "") {
		bad("cluster.peerTLS", "set certFile, keyFile and caFile together, or none of them")
	}
	switch ns, name, ok := strings.Cut(c.PeerService, "/"); {
	case c.PeerService != "" && len(c.Peers) > 0:
		bad("cluster.peerService", "set either cluster.peers (a static list) or cluster.peerService, not both")
	case c.PeerService != "" && (!ok || ns == "" || name == "" || strings.Contains(name, "/")):
		bad("cluster.peerService", "%q is not namespace/name", c.PeerService)
	case c.PeerService == "" && len(c.Peers) == 0:
		bad("cluster.peers", "must list every replica's peer listener (\"host:port\", this one's included), or set cluster.peerService, when cluster.peerListen is set")
	}
	seen := map[string]bool{}
	for i, p := range c.Peers {
		host, port, err := net.SplitHostPort(p)
		if err != nil || host == "" || port == "" {
			bad(fmt.Sprintf("cluster.peers[%d]", i), "%q is not host:port", p)
			continue
		}
		if seen[p] {
			bad(fmt.Sprintf("cluster.peers[%d]", i), "%q is listed twice", p)
		}
		seen[p] = true
	}
}
