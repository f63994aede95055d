package proxy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strconv"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	v2 "github.com/distribution/distribution/v3/registry/api/v2"
	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/tags"
	"github.com/pullbroker/pullbroker/upstream"
)

const maxListPage = 10000

// paginate applies n and last to a sorted list; next is the last item
// returned when more follow.
func paginate(items []string, q url.Values) (page []string, next string, apiErr *apiError) {
	n := len(items)
	if s := q.Get("n"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 0 {
			return nil, "", newAPIError(http.StatusBadRequest, v2.ErrorCodePaginationNumberInvalid, "n=%q is not a non-negative number", s)
		}
		n = min(v, maxListPage)
	}
	if last := q.Get("last"); last != "" {
		i := sort.SearchStrings(items, last)
		if i < len(items) && items[i] == last {
			i++
		}
		items = items[i:]
	}
	page = make([]string, 0, min(n, len(items)))
	page = append(page, items[:min(n, len(items))]...)
	if len(page) < len(items) && len(page) > 0 {
		next = page[len(page)-1]
	}
	return page, next, nil
}

// serveTags passes the tag list through from the upstream, n, last and
// Link included; when the upstream is offline or down, the tags the cache
// knows are listed instead.
func (h *Handler) serveTags(w http.ResponseWriter, r *http.Request, rt *route, info *requestInfo) {
	ctx := r.Context()
	if !h.offline(rt) {
		body, link, err := h.client(rt).Tags(ctx, rt.repository, r.URL.Query())
		if err == nil {
			page, next, apiErr := pageUpstreamTags(rt, body, r.URL.Query())
			if apiErr != nil {
				writeError(w, r, apiErr)
				return
			}
			switch {
			case next != "":
				w.Header().Set("Link", ownNextLink(r, next))
			case link != "":
				if rewritten, ok := rewriteNextLink(link, r); ok {
					w.Header().Set("Link", rewritten)
				}
			}
			writeBody(w, r, "application/json", page)
			return
		}
		if !upstream.IsUnavailable(err) {
			writeError(w, r, fromUpstream(rt, err))
			return
		}
		h.log.Warn("listing cached tags: upstream unavailable", "registry", rt.registry, "repository", rt.repository, "error", err)
	}
	cached, err := h.store.Tags(ctx, rt.registry, rt.repository)
	if err != nil {
		writeError(w, r, internalError(err))
		return
	}
	if len(cached) == 0 {
		writeError(w, r, fromUpstream(rt, upstream.ErrOffline))
		return
	}
	info.outcome = string(tags.Stale)
	page, next, apiErr := paginate(cached, r.URL.Query())
	if apiErr != nil {
		writeError(w, r, apiErr)
		return
	}
	if next != "" {
		w.Header().Set("Link", ownNextLink(r, next))
	}
	writeJSON(w, r, "application/json", tagList{Name: rt.name, Tags: page})
}

// pageUpstreamTags applies n and last to an upstream's tag list, in the
// lexical order the distribution spec requires (some upstreams ignore both
// and list tags in storage order: distribution 2.8, the registry Debian
// ships), and names the repository as the client asked for it, as the spec
// also requires. next is the last tag of a page this cut short. A body
// that is not a tag list is refused, never passed on.
func pageUpstreamTags(rt *route, body []byte, q url.Values) (out []byte, next string, apiErr *apiError) {
	var list struct {
		Tags []string `json:"tags"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return nil, "", newAPIError(http.StatusBadGateway, errcode.ErrorCodeUnknown,
			"upstream %s answered the tag list of %s with something that is not a tag list", rt.registry, rt.repository).withCause(err)
	}
	sort.Strings(list.Tags)
	page, next, apiErr := paginate(list.Tags, q)
	if apiErr != nil {
		return nil, "", apiErr
	}
	out, err := json.Marshal(tagList{Name: rt.name, Tags: page})
	if err != nil {
		return nil, "", internalError(err)
	}
	return out, next, nil
}

// tagList is the body of a tags/list answer.
type tagList struct {
	Name string   `json:"name"`
	Tags []string `json:"tags"`
}

// ownNextLink is the Link to the page after last on this proxy's own path,
// keeping n and containerd's ns.
func ownNextLink(r *http.Request, last string) string {
	q := url.Values{"last": {last}}
	for _, k := range []string{"n", "ns"} {
		if v := r.URL.Query().Get(k); v != "" {
			q.Set(k, v)
		}
	}
	return fmt.Sprintf(`<%s?%s>; rel="next"`, r.URL.Path, q.Encode())
}

var linkTarget = regexp.MustCompile(`^\s*<([^>]*)>(.*)$`)

// rewriteNextLink points the upstream's Link at this proxy's own path for
// the same repository, keeping only the pagination parameters, so a
// client never follows a link to another host.
func rewriteNextLink(link string, r *http.Request) (string, bool) {
	m := linkTarget.FindStringSubmatch(link)
	if m == nil {
		return "", false
	}
	target, err := url.Parse(m[1])
	if err != nil {
		return "", false
	}
	q := url.Values{}
	for _, k := range []string{"n", "last"} {
		if v := target.Query().Get(k); v != "" {
			q.Set(k, v)
		}
	}
	if ns := r.URL.Query().Get("ns"); ns != "" {
		q.Set("ns", ns)
	}
	return fmt.Sprintf("<%s?%s>%s", r.URL.Path, q.Encode(), m[2]), true
}

// serveReferrers answers the referrers index of a manifest under the tag
// policy (tags.Resolver.Referrers).
func (h *Handler) serveReferrers(w http.ResponseWriter, r *http.Request, rt *route, info *requestInfo) {
	ans, err := h.tags.Referrers(r.Context(), tags.Image{Registry: rt.registry, Repository: rt.repository},
		digest.Digest(rt.reference), r.URL.Query().Get("artifactType"))
	if err != nil {
		writeError(w, r, fromUpstream(rt, err))
		return
	}
	h.cacheResult(info, "referrers", rt.registry, ans.Outcome)
	if ans.Outcome == tags.Stale {
		w.Header().Set("Warning", `110 pullbroker "Response is Stale: upstream `+rt.registry+` is unavailable"`)
	}
	writeBody(w, r, ans.ContentType, ans.Body)
}

func writeJSON(w http.ResponseWriter, r *http.Request, contentType string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, r, newAPIError(http.StatusInternalServerError, errcode.ErrorCodeUnknown, "encoding response: %v", err))
		return
	}
	writeBody(w, r, contentType, b)
}

// writeBody answers 200 with body, which a HEAD request gets only the
// length of.
func writeBody(w http.ResponseWriter, r *http.Request, contentType string, body []byte) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(body)
	}
}
