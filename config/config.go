// Package config holds pullbroker's one configuration struct. It is loaded
// once by cmd/pullbroker and handed down as plain values: no other package
// reads files, flags or the environment for configuration.
package config

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Config is the whole configuration of a pullbroker process.
type Config struct {
	// Listen is the client-facing registry listener.
	Listen Listener `mapstructure:"listen"`
	// Admin is the listener for /metrics, health endpoints and the admin API.
	Admin Admin `mapstructure:"admin"`
	// Storage selects the distribution storage driver that holds the cache.
	Storage Storage `mapstructure:"storage"`
	// Log selects the log format and level.
	Log Log `mapstructure:"log"`
	// Mode is "online" (default) or "offline"; an upstream's own mode wins.
	Mode string `mapstructure:"mode"`
	// DefaultUpstream serves names that carry neither a registry component
	// nor containerd's ?ns= parameter. Empty means such names are refused.
	DefaultUpstream string `mapstructure:"defaultUpstream"`
	// Upstreams are the registries the proxy may talk to. The public
	// registries of PublicUpstreams come first unless disabled; an entry
	// here with the same Name replaces the public one.
	Upstreams []Upstream `mapstructure:"upstreams"`
	// DisableDefaultUpstreams leaves out the public registries, so only
	// the upstreams listed here are reachable.
	DisableDefaultUpstreams bool `mapstructure:"disableDefaultUpstreams"`
	// Access decides which clients may pull.
	Access Access `mapstructure:"access"`
	// Pins are the tag pinning rules, first match wins.
	Pins []PinRule `mapstructure:"pins"`
	// Catalog governs /v2/_catalog.
	Catalog Catalog `mapstructure:"catalog"`
	// Sync re-runs a sync list inside serve.
	Sync Sync `mapstructure:"sync"`
	// Cache decides what eviction must keep beyond pins and lock files.
	Cache Cache `mapstructure:"cache"`
	// Cluster is how replicas sharing one storage work together, and how
	// this replica reaches the Kubernetes API.
	Cluster Cluster `mapstructure:"cluster"`
}

// Cache decides what eviction (storage.maxSizeBytes) and GC must keep
// beyond pinned and locked images.
type Cache struct {
	// KeepRunningImages never evicts an image that a Pod of the cluster
	// runs (any phase but Succeeded and Failed): a Pod informer on every
	// namespace (list and watch on pods), tags resolved through the
	// proxy's own tag records.
	KeepRunningImages bool `mapstructure:"keepRunningImages"`
}

// Cluster is how replicas sharing one storage work together, and how this
// replica reaches the Kubernetes API of its cluster.
type Cluster struct {
	// Name is this replica's name among the replicas: in the leader lease,
	// its journal objects and logs. Empty: the host name (the Pod name in
	// Kubernetes), decided by cmd at start.
	Name string `mapstructure:"name"`
	// Kubeconfig is a kubeconfig path for the Kubernetes API (the Pod
	// informer, the peer Service's EndpointSlices, the Lease of the
	// kubernetes leader election backend); empty means the in-cluster
	// config (the Pod's service account).
	Kubeconfig string `mapstructure:"kubeconfig"`
	// AccountingInterval is how often each replica writes the blobs it
	// read, committed and deleted to storage for the leader, and reads the
	// cluster-wide cache size the leader publishes.
	AccountingInterval time.Duration `mapstructure:"accountingInterval"`
	// Peers is the static peer set: the peer listener address ("host:port")
	// of every replica, this one's included. The owner of a blob or a tag
	// among them fetches it from the upstream once for all of them.
	Peers []string `mapstructure:"peers"`
	// PeerService, instead of Peers, is the "namespace/name" of a
	// headless Service selecting the replicas: its EndpointSlices' ready
	// endpoints, on PeerListen's port, are the peer set, live as Pods
	// come, go and turn unready.
	PeerService string `mapstructure:"peerService"`
	// PeerListen is this replica's peer listener, for example ":5002";
	// empty means no peers: every replica fetches for itself.
	PeerListen string `mapstructure:"peerListen"`
	// PeerTokenFile holds the bearer token every replica sends to and
	// expects from its peers; re-read when it changes.
	PeerTokenFile string `mapstructure:"peerTokenFile"`
	// PeerTLS, when set, is mutual TLS between peers, beside the token.
	PeerTLS PeerTLS `mapstructure:"peerTLS"`
	// LeaderElection decides which replica runs the cluster-wide work.
	LeaderElection LeaderElection `mapstructure:"leaderElection"`
}

// LeaderElection chooses one replica to run the cluster-wide work
// (eviction, garbage collection) at a time. The durations mean what they
// mean for client-go's leader election, on either backend.
type LeaderElection struct {
	// Backend is LeaderElectionStorage or LeaderElectionKubernetes.
	Backend string `mapstructure:"backend"`
	// LeaseDuration is how long the other replicas wait, from the last
	// renewal they saw, before taking the lease of a leader that stopped
	// renewing it: the longest a dead leader's work stays undone.
	LeaseDuration time.Duration `mapstructure:"leaseDuration"`
	// RenewDeadline is how long the leader keeps leading without a
	// confirmed renewal; shorter than LeaseDuration, so a cut-off leader
	// stops before another may start.
	RenewDeadline time.Duration `mapstructure:"renewDeadline"`
	// RetryPeriod is the time between two attempts to take or renew the
	// lease: each one reads the lease (and the leader writes it).
	RetryPeriod time.Duration `mapstructure:"retryPeriod"`
	// Namespace of the Lease (kubernetes backend); empty: the namespace of
	// the Pod's service account, or the kubeconfig context's namespace.
	Namespace string `mapstructure:"namespace"`
	// LeaseName is the name of the Lease (kubernetes backend).
	LeaseName string `mapstructure:"leaseName"`
}

// Leader election backends.
const (
	// LeaderElectionStorage keeps a lease object in the cache's storage,
	// which every replica shares: no API server needed.
	LeaderElectionStorage = "storage"
	// LeaderElectionKubernetes uses a coordination.k8s.io Lease.
	LeaderElectionKubernetes = "kubernetes"
)

// PeerTLS is mutual TLS on peer traffic: every replica serves CertFile on
// its peer listener and presents it to the peers it asks, and accepts only
// peers whose certificate CAFile signed (for both server and client
// authentication). Peers are addressed as the peer set lists them, often
// by Pod IP, which their certificates need not name: the CA is the
// identity. The pair is reloaded when its files change.
type PeerTLS struct {
	CertFile string `mapstructure:"certFile"`
	KeyFile  string `mapstructure:"keyFile"`
	CAFile   string `mapstructure:"caFile"`
}

// Enabled reports whether any of the files is set.
func (t PeerTLS) Enabled() bool { return t.CertFile != "" || t.KeyFile != "" || t.CAFile != "" }

// Sync re-runs an image list, as `pullbroker sync -f` takes it, inside a
// running proxy, moving the listed tags' pins to what the upstream has now.
type Sync struct {
	// ImagesFile is the list; empty turns scheduled sync off.
	ImagesFile string `mapstructure:"imagesFile"`
	// Interval is the time between runs; the first runs at start.
	Interval time.Duration `mapstructure:"interval"`
}

// Catalog governs /v2/_catalog, which lists the cached repositories a
// client may pull.
type Catalog struct {
	// Disabled answers /v2/_catalog with 404, for operators who would
	// rather not show what the cache holds.
	Disabled bool `mapstructure:"disabled"`
	// CacheTTL is how long one listing of the storage is reused: listing
	// walks every repository, which costs on object storage.
	CacheTTL time.Duration `mapstructure:"cacheTTL"`
}

// Listener is an HTTP(S) listener.
type Listener struct {
	Addr string `mapstructure:"addr"`
	// TLS is off when both files are empty. The pair is reloaded when
	// either file changes.
	TLSCertFile string `mapstructure:"tlsCertFile"`
	TLSKeyFile  string `mapstructure:"tlsKeyFile"`
	// DrainTimeout bounds how long SIGTERM waits for in-flight pulls.
	DrainTimeout time.Duration `mapstructure:"drainTimeout"`
	// MaxHeaderBytes bounds a request's header block, on this and the
	// admin listener. Registry clients send a few KiB at most (a bearer
	// token included); larger requests get 431.
	MaxHeaderBytes int `mapstructure:"maxHeaderBytes"`
	// ReadHeaderTimeout bounds how long a client may take to send a
	// request's headers, on this and the admin listener. Requests have no
	// body (pushes are refused), so this is all a client sends.
	ReadHeaderTimeout time.Duration `mapstructure:"readHeaderTimeout"`
	// IdleTimeout closes a keep-alive connection that carried no request
	// for this long, on this and the admin listener.
	IdleTimeout time.Duration `mapstructure:"idleTimeout"`
}

// TLSEnabled reports whether the listener serves TLS.
func (l Listener) TLSEnabled() bool { return l.TLSCertFile != "" || l.TLSKeyFile != "" }

// Admin is the operator-facing listener.
type Admin struct {
	Addr string `mapstructure:"addr"`
	// TokenFile holds the bearer token that guards the admin API (not
	// /metrics or the health endpoints). Empty disables the admin API.
	TokenFile string `mapstructure:"tokenFile"`
	// TLS is off when both files are empty; reloaded as for Listener.
	TLSCertFile string `mapstructure:"tlsCertFile"`
	TLSKeyFile  string `mapstructure:"tlsKeyFile"`
}

// TLSEnabled reports whether the admin listener serves TLS.
func (a Admin) TLSEnabled() bool { return a.TLSCertFile != "" || a.TLSKeyFile != "" }

// Storage names a distribution storage driver and its parameters, exactly
// as distribution's own configuration does.
type Storage struct {
	Driver     string         `mapstructure:"driver"`
	Parameters map[string]any `mapstructure:"parameters"`
	// SpoolDir holds blobs while they are being fetched from an upstream,
	// for drivers that are not a local filesystem.
	SpoolDir string `mapstructure:"spoolDir"`
	// MaxSizeBytes bounds the cache: above it, the blobs read least
	// recently (and not within EvictMinIdle) are deleted until the cache
	// is at 90% of it; pinned and locked images are never deleted. 0 means
	// unbounded.
	MaxSizeBytes int64 `mapstructure:"maxSizeBytes"`
	// EvictMinIdle protects blobs read or stored this recently from
	// eviction: a node that just fetched a manifest is about to fetch its
	// layers, and a read still in progress must not lose its blob.
	EvictMinIdle time.Duration `mapstructure:"evictMinIdle"`
	// Redirect answers GETs of cached blobs with a redirect to a
	// short-lived signed URL of the object (the driver's RedirectURL), for
	// clients that can reach the bucket themselves. Only s3 can sign one.
	Redirect bool `mapstructure:"redirect"`
	// RecordCacheTTL keeps pins, tag records and links in memory this long
	// (and verified manifest bodies within a memory bound), so a pinned or
	// fresh tag costs no storage request; a change made by another replica
	// on the same storage is seen within it. 0 reads storage every time.
	RecordCacheTTL time.Duration `mapstructure:"recordCacheTTL"`
	// Fills bound the fetches of missing blobs from upstreams.
	Fills Fills `mapstructure:"fills"`
	// Scrub is the background re-hash of cached blobs that removes corrupt
	// ones (they are fetched again when next pulled).
	Scrub Scrub `mapstructure:"scrub"`
	// GC tunes the removal of blobs nothing references: `pullbroker gc`,
	// and a schedule inside serve.
	GC GC `mapstructure:"gc"`
}

// GC tunes the garbage collection of unreferenced blobs.
type GC struct {
	// Interval is the time between two runs inside serve; 0 (the default)
	// runs none (`pullbroker gc` still runs one).
	Interval time.Duration `mapstructure:"interval"`
	// Grace keeps an unreferenced blob committed or read this recently: a
	// pull by digest that fetched the manifest and still reads the layers,
	// content another replica just stored.
	Grace time.Duration `mapstructure:"grace"`
}

// Fills bound the fetches of missing blobs. Replicas sharing one storage
// should use the same values: a spool left under uploads/ is removed at
// start once it is older than Timeout.
type Fills struct {
	// Timeout bounds one fill from the upstream request to the commit; it
	// must be generous enough for the largest layer on the slowest link.
	Timeout time.Duration `mapstructure:"timeout"`
	// StallTimeout cuts a fill that received less than 32 KiB within it.
	StallTimeout time.Duration `mapstructure:"stallTimeout"`
	// MaxConcurrent caps the fills running at once; a client whose blob
	// would need one more gets 503 with Retry-After.
	MaxConcurrent int `mapstructure:"maxConcurrent"`
}

// Scrub schedules the re-hash of every cached blob.
type Scrub struct {
	// Interval is the time between the starts of two passes; 0 disables
	// the schedule (`pullbroker verify` still runs one pass).
	Interval time.Duration `mapstructure:"interval"`
	// BytesPerSecond caps the read rate of a pass, so that it does not
	// compete with pulls for the disk.
	BytesPerSecond int64 `mapstructure:"bytesPerSecond"`
}

// Log configures the process logger.
type Log struct {
	Format string `mapstructure:"format"` // "text" or "json"
	Level  string `mapstructure:"level"`  // "debug", "info", "warn", "error"
}

// Upstream is one registry the proxy pulls from.
type Upstream struct {
	// Name is the registry as clients name it: "docker.io", "ghcr.io",
	// "registry.example.com:5000". It is the first path component in the
	// image-prefix form and the ?ns= value in containerd's mirror form.
	Name string `mapstructure:"name"`
	// Aliases are other names that mean the same registry
	// ("index.docker.io" for docker.io).
	Aliases []string `mapstructure:"aliases"`
	// Endpoint is the base URL requests go to; http is allowed.
	Endpoint string `mapstructure:"endpoint"`
	// Mode is "online" or "offline"; empty inherits the global mode.
	Mode string `mapstructure:"mode"`
	// TagTTL is how long a tag resolution is answered from the cache
	// without asking the upstream.
	TagTTL time.Duration `mapstructure:"tagTTL"`
	// DialTimeout bounds connection set-up; ResponseTimeout bounds the
	// wait for response headers; neither bounds a long blob body.
	DialTimeout     time.Duration `mapstructure:"dialTimeout"`
	ResponseTimeout time.Duration `mapstructure:"responseTimeout"`
	// WorkTimeout bounds the whole upstream work for a manifest, tag or
	// tag list that concurrent clients share: it outlives the client that
	// started it, so it needs a bound of its own.
	WorkTimeout time.Duration `mapstructure:"workTimeout"`
	// Credentials, when set, authenticate the proxy to the upstream.
	Credentials *Credentials `mapstructure:"credentials"`
	// Repositories are globs of the repositories that may be served
	// (path.Match syntax, plus "**" for any depth). Empty allows all.
	Repositories []string `mapstructure:"repositories"`
	// AllowPrivateRedirects lets blob redirects reach loopback, private and
	// link-local addresses (an in-cluster registry backed by MinIO). Off,
	// such a redirect is refused where the connection is dialled.
	AllowPrivateRedirects bool `mapstructure:"allowPrivateRedirects"`
	// AllowedRealmHosts are the hosts ("auth.example.com", or
	// "*.example.com" for every subdomain) whose token realm may receive the
	// upstream's credentials, besides the registry's own host. Empty allows
	// the registry's registrable domain (auth.docker.io for
	// registry-1.docker.io) and the hosts a public registry is known to
	// use (*.pkg.dev for registry.k8s.io).
	AllowedRealmHosts []string `mapstructure:"allowedRealmHosts"`
}

// Credentials names exactly one source of upstream credentials. The secret
// itself can stay out of the config file.
type Credentials struct {
	Basic             *BasicCredentials  `mapstructure:"basic"`
	GCPServiceAccount *GCPServiceAccount `mapstructure:"gcpServiceAccount"`
	DockerConfig      *DockerConfig      `mapstructure:"dockerConfig"`
	KubernetesSecret  *KubernetesSecret  `mapstructure:"kubernetesSecret"`
	ECR               *ECR               `mapstructure:"ecr"`
}

// BasicCredentials is a username with a password or access token given
// inline, from a file, or from an environment variable.
type BasicCredentials struct {
	Username     string `mapstructure:"username"`
	Password     string `mapstructure:"password"`
	PasswordFile string `mapstructure:"passwordFile"`
	PasswordEnv  string `mapstructure:"passwordEnv"`
}

// GCPServiceAccount is a Google service-account JSON key.
type GCPServiceAccount struct {
	KeyFile string `mapstructure:"keyFile"`
	// Secret is "namespace/name" of a Secret holding the key under SecretKey
	// (default "key.json"), watched live like KubernetesSecret.
	Secret    string `mapstructure:"secret"`
	SecretKey string `mapstructure:"secretKey"`
	// Kubeconfig is a kubeconfig path used to watch Secret; empty means
	// in-cluster config.
	Kubeconfig string `mapstructure:"kubeconfig"`
	// Exchange is "accessToken" (default: an OAuth2 token sent as
	// oauth2accesstoken), "jsonKey" (_json_key) or "jsonKeyBase64".
	Exchange string `mapstructure:"exchange"`
}

// DockerConfig is a docker config.json or .dockerconfigjson file.
type DockerConfig struct {
	File string `mapstructure:"file"`
}

// KubernetesSecret is a Secret watched live.
type KubernetesSecret struct {
	// Name is "namespace/name".
	Name string `mapstructure:"name"`
	// Kubeconfig is a kubeconfig path; empty means in-cluster config.
	Kubeconfig string `mapstructure:"kubeconfig"`
}

// ECR is Amazon ECR: an authorization token from the ECR API's
// GetAuthorizationToken, signed with the AWS default credential chain
// (environment, shared config and credentials files, web identity / IRSA,
// ECS and EC2 metadata), sent as Basic "AWS:<token>" and refreshed before
// its 12-hour expiry.
type ECR struct {
	// Region is the AWS region of the registry, such as "eu-west-1".
	Region string `mapstructure:"region"`
	// RegistryID is the 12-digit account ID of the registry; empty means
	// the caller's own. (ECR's token is valid for every registry the
	// principal may read, so this rarely matters.)
	RegistryID string `mapstructure:"registryID"`
	// Endpoint overrides the ECR API URL (a VPC interface endpoint, a
	// test server); https, or http on a loopback address only.
	Endpoint string `mapstructure:"endpoint"`
}

// Access decides which clients may pull through the proxy.
type Access struct {
	// AllowedNetworks are CIDRs; empty allows every source address.
	AllowedNetworks []string `mapstructure:"allowedNetworks"`
	// HtpasswdFile holds bcrypt users for clients outside the cluster.
	HtpasswdFile string `mapstructure:"htpasswdFile"`
	// TokensFile holds static bearer tokens, one per line.
	TokensFile string `mapstructure:"tokensFile"`
}

// PinRule decides how tags that match it are resolved.
type PinRule struct {
	Registry   string `mapstructure:"registry"`
	Repository string `mapstructure:"repository"` // glob
	Tag        string `mapstructure:"tag"`        // glob
	// Policy is PolicyTTL, PolicySticky or PolicyLocked.
	Policy string        `mapstructure:"policy"`
	TTL    time.Duration `mapstructure:"ttl"`
	// LockFile lists the digests of locked tags.
	LockFile string `mapstructure:"lockFile"`
}

// Pin rule policies, and the policy of pins set by hand.
const (
	// PolicyTTL revalidates matching tags after the rule's own TTL.
	PolicyTTL = "ttl"
	// PolicySticky pins a tag to its first resolution.
	PolicySticky = "sticky"
	// PolicyLocked answers tags from a lock file only.
	PolicyLocked = "locked"
	// PolicyManual marks pins set by an operator, sync or import.
	PolicyManual = "manual"
)

// Modes.
const (
	ModeOnline  = "online"
	ModeOffline = "offline"
)

// EffectiveMode is the upstream's mode, falling back to the global one.
func (c *Config) EffectiveMode(u Upstream) string {
	if u.Mode != "" {
		return u.Mode
	}
	if c.Mode != "" {
		return c.Mode
	}
	return ModeOnline
}

// Upstream returns the upstream that a client-facing registry name or alias
// designates.
func (c *Config) Upstream(name string) (Upstream, bool) {
	for _, u := range c.Upstreams {
		if u.Name == name {
			return u, true
		}
		for _, a := range u.Aliases {
			if a == name {
				return u, true
			}
		}
	}
	return Upstream{}, false
}

// SelectUpstreams returns the upstreams that names designate, by name or
// alias (case does not matter in a host name), each once, in the order
// named; every upstream when names is empty.
func SelectUpstreams(upstreams []Upstream, names []string) ([]Upstream, error) {
	if len(names) == 0 {
		return upstreams, nil
	}
	var out []Upstream
	seen := map[string]bool{}
	for _, n := range names {
		i := slices.IndexFunc(upstreams, func(u Upstream) bool {
			return strings.EqualFold(u.Name, n) || slices.ContainsFunc(u.Aliases, func(a string) bool { return strings.EqualFold(a, n) })
		})
		if i < 0 {
			return nil, fmt.Errorf("registry %q is not a configured upstream", n)
		}
		if u := upstreams[i]; !seen[u.Name] {
			seen[u.Name] = true
			out = append(out, u)
		}
	}
	return out, nil
}
