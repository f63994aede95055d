package proxy

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/internal/filewatch"
	"github.com/pullbroker/pullbroker/tags"
)

// AdminHandler serves the pin API under /api/v1/, guarded by the bearer
// token in tokenFile (admin.tokenFile; empty disables the API). The file is
// watched (internal/filewatch), so a rotated token takes effect within a
// second; a file that cannot be read at start is an error.
func (h *Handler) AdminHandler(tokenFile string) (http.Handler, error) {
	var token *filewatch.Value[string]
	if tokenFile != "" {
		var err error
		parse := func(b []byte) (string, error) {
			token := strings.TrimSpace(string(b))
			if token == "" {
				return "", fmt.Errorf("%s is empty: put the admin token in it, or unset admin.tokenFile to disable the admin API", tokenFile)
			}
			return token, nil
		}
		token, err = filewatch.New(tokenFile, parse, filewatch.Options[string]{
			OnError: func(err error) {
				h.log.Warn("admin token file does not load; keeping the previous token", "file", tokenFile, "error", err)
			},
		})
		if err != nil {
			return nil, fmt.Errorf("admin.tokenFile: %w", err)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/pins", h.adminListPins)
	mux.HandleFunc("GET /api/v1/pins/{image...}", h.adminShowPin)
	mux.HandleFunc("PUT /api/v1/pins/{image...}", h.adminSetPin)
	mux.HandleFunc("DELETE /api/v1/pins/{image...}", h.adminDeletePin)
	mux.HandleFunc("POST /api/v1/refresh/{image...}", h.adminRefreshPin)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := checkBearer(r, token); err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="pullbroker-admin"`)
			adminError(w, http.StatusUnauthorized, err)
			return
		}
		mux.ServeHTTP(w, r)
	}), nil
}

func checkBearer(r *http.Request, token *filewatch.Value[string]) error {
	if token == nil {
		return errors.New("the admin API is disabled: set admin.tokenFile")
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(token.Get())) != 1 {
		return errors.New("a valid bearer token is required")
	}
	return nil
}

func (h *Handler) adminListPins(w http.ResponseWriter, r *http.Request) {
	pins, err := h.tags.Pins(r.Context())
	if err != nil {
		h.log.Error("listing pins failed", "error", err)
		adminError(w, http.StatusInternalServerError, errors.New("listing pins failed; the proxy's log has the cause"))
		return
	}
	adminJSON(w, map[string]any{"pins": pins})
}

func (h *Handler) adminShowPin(w http.ResponseWriter, r *http.Request) {
	img, ok := h.adminImage(w, r)
	if !ok {
		return
	}
	pin, err := h.tags.GetPin(r.Context(), img)
	if err != nil {
		h.adminFailure(w, img, err)
		return
	}
	adminJSON(w, pin)
}

// adminSetPin pins a tag to the digest in the body, or, with no digest,
// to what the upstream resolves it to now.
func (h *Handler) adminSetPin(w http.ResponseWriter, r *http.Request) {
	img, ok := h.adminImage(w, r)
	if !ok {
		return
	}
	var body struct {
		Digest digest.Digest `json:"digest"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&body); err != nil && !errors.Is(err, io.EOF) {
		adminError(w, http.StatusBadRequest, fmt.Errorf("body must be {\"digest\": \"sha256:…\"} or empty: %v", err))
		return
	}
	if body.Digest != "" {
		if err := body.Digest.Validate(); err != nil {
			adminError(w, http.StatusBadRequest, fmt.Errorf("digest %q: %v", body.Digest, err))
			return
		}
	}
	pin, err := h.tags.SetPin(r.Context(), img, body.Digest)
	if err != nil {
		h.adminFailure(w, img, err)
		return
	}
	adminJSON(w, pin)
}

func (h *Handler) adminDeletePin(w http.ResponseWriter, r *http.Request) {
	img, ok := h.adminImage(w, r)
	if !ok {
		return
	}
	if err := h.tags.Unpin(r.Context(), img); err != nil {
		h.adminFailure(w, img, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *Handler) adminRefreshPin(w http.ResponseWriter, r *http.Request) {
	img, ok := h.adminImage(w, r)
	if !ok {
		return
	}
	res, err := h.tags.RefreshPin(r.Context(), img)
	if err != nil {
		h.adminFailure(w, img, err)
		return
	}
	adminJSON(w, res)
}

// adminImage parses the {image...} of a pin path: a tag, not a digest.
func (h *Handler) adminImage(w http.ResponseWriter, r *http.Request) (tags.Image, bool) {
	ref := r.PathValue("image")
	img, err := tags.ParseImage(h.cfg, ref)
	if err == nil && img.Digest != "" {
		err = fmt.Errorf("%q: pins bind a tag; give registry/repository:tag without a digest", ref)
	}
	if err != nil {
		status := http.StatusBadRequest
		if ne := new(tags.NameError); errors.As(err, &ne) && !ne.Invalid {
			status = http.StatusNotFound
		}
		adminError(w, status, err)
		return tags.Image{}, false
	}
	return img, true
}

// adminFailure answers with the status and message the registry API would
// give for the same failure, and logs its cause.
func (h *Handler) adminFailure(w http.ResponseWriter, img tags.Image, err error) {
	rt := &route{kind: kindManifest, registry: img.Registry, repository: img.Repository, reference: img.Tag}
	apiErr := fromUpstream(rt, err)
	h.log.Warn("admin request failed", "image", img, "status", apiErr.status, "error", err)
	adminError(w, apiErr.status, errors.New(apiErr.err.Message))
}

func adminJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func adminError(w http.ResponseWriter, status int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
}
