package config

import "time"

// Default tuning applied to every upstream that leaves a value unset.
const (
	DefaultTagTTL          = 5 * time.Minute
	DefaultDialTimeout     = 5 * time.Second
	DefaultResponseTimeout = 30 * time.Second
	DefaultWorkTimeout     = 2 * time.Minute
	// DefaultCatalogCacheTTL is catalog.cacheTTL when unset.
	DefaultCatalogCacheTTL = 30 * time.Second
)

// Default bounds of blob fills, applied when storage.fills leaves them unset.
const (
	DefaultFillTimeout        = time.Hour
	DefaultFillStallTimeout   = time.Minute
	DefaultMaxConcurrentFills = 64
)

// DefaultAccountingInterval is cluster.accountingInterval when unset.
const DefaultAccountingInterval = 10 * time.Second

// Default leader election, applied when cluster.leaderElection leaves a
// value unset: client-go's own defaults, and the Lease name of deploy/.
const (
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
	DefaultLeaseName     = "pullbroker"
)

// DefaultFilesystemRoot is storage.parameters.rootdirectory of the
// filesystem driver when unset. It is applied after loading rather than
// written in the embedded default, where a file choosing another driver
// would inherit it as a parameter of that driver.
const DefaultFilesystemRoot = "./pullbroker-data"

// PublicUpstreams are the registries known anonymously out of the box.
func PublicUpstreams() []Upstream {
	return []Upstream{
		{Name: "docker.io", Aliases: []string{"index.docker.io", "registry-1.docker.io"}, Endpoint: "https://registry-1.docker.io"},
		{Name: "ghcr.io", Endpoint: "https://ghcr.io"},
		{Name: "gcr.io", Endpoint: "https://gcr.io"},
		{Name: "quay.io", Endpoint: "https://quay.io"},
		{Name: "registry.k8s.io", Endpoint: "https://registry.k8s.io"},
		{Name: "public.ecr.aws", Endpoint: "https://public.ecr.aws"},
	}
}
