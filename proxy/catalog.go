package proxy

import (
	"cmp"
	"context"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/flight"
	"github.com/pullbroker/pullbroker/internal/registryname"
)

// catalogListing is the last listing of the cached repositories, reused for
// catalog.cacheTTL: a listing walks all of the storage.
type catalogListing struct {
	mu       sync.Mutex
	repos    []string
	listedAt time.Time
	flight   flight.Group[[]string]
}

// serveCatalog lists the repositories the cache holds that the upstreams'
// repository globs allow, as "<registry>/<repository>", the name a client
// pulls them by.
func (h *Handler) serveCatalog(w http.ResponseWriter, r *http.Request) {
	if h.cfg.Catalog.Disabled {
		writeError(w, r, newAPIError(http.StatusNotFound, errcode.ErrorCodeUnsupported,
			"this proxy does not list its repositories (catalog.disabled)"))
		return
	}
	repos, err := h.cachedRepositories(r.Context())
	if err != nil {
		writeError(w, r, internalError(err))
		return
	}
	page, next, apiErr := paginate(repos, r.URL.Query())
	if apiErr != nil {
		writeError(w, r, apiErr)
		return
	}
	if next != "" {
		w.Header().Set("Link", ownNextLink(r, next))
	}
	writeJSON(w, r, "application/json", map[string][]string{"repositories": page})
}

func (h *Handler) cachedRepositories(ctx context.Context) ([]string, error) {
	c := &h.catalog
	ttl := cmp.Or(h.cfg.Catalog.CacheTTL, config.DefaultCatalogCacheTTL)
	c.mu.Lock()
	repos, fresh := c.repos, c.repos != nil && h.now().Sub(c.listedAt) < ttl
	c.mu.Unlock()
	if fresh {
		return repos, nil
	}
	return c.flight.Do(ctx, "catalog", time.Minute, func(ctx context.Context) ([]string, error) {
		all, err := h.store.Repositories(ctx)
		if err != nil {
			return nil, err
		}
		repos := make([]string, 0, len(all))
		for _, name := range all {
			if h.listable(name) {
				repos = append(repos, name)
			}
		}
		c.mu.Lock()
		c.repos, c.listedAt = repos, h.now()
		c.mu.Unlock()
		return repos, nil
	})
}

// listable reports whether a cached "<registry component>/<repository>" is
// one a client may pull now: its upstream is still configured and its
// repository globs allow it.
func (h *Handler) listable(name string) bool {
	component, repo, _ := strings.Cut(name, "/")
	u, ok := h.cfg.Upstream(registryname.FromPathComponent(component))
	return ok && h.access.allows(u.Name, repo)
}
