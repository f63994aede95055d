package peers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/tags"
)

// manifestAnswer is the owner's answer to what an image reference means:
// the manifest it stored under that digest, and how it decided; or that
// it could not resolve it (its log says why).
type manifestAnswer struct {
	Digest  digest.Digest `json:"digest,omitempty"`
	Outcome tags.Outcome  `json:"outcome,omitempty"`
	Failed  bool          `json:"failed,omitempty"`
}

// OwnedElsewhere reports whether another replica owns img and may be asked
// now (tags.Owners).
func (c *Cluster) OwnedElsewhere(img tags.Image) bool { return c.remoteOwner(img.String()) != "" }

// Resolve asks the owner of img which manifest it means now (tags.Owners).
// The owner of "registry/repository:tag" resolves the tag, so a sticky pin
// is decided once; ok is false when this replica owns img or the owner did
// not answer within the bound, and then this replica resolves it itself.
func (c *Cluster) Resolve(ctx context.Context, img tags.Image, accept []string) (digest.Digest, tags.Outcome, bool) {
	key := img.String()
	owner := c.remoteOwner(key)
	if owner == "" {
		return "", "", false
	}
	c.metrics.forwards.WithLabelValues("manifest").Inc()
	ans, err := c.askManifest(ctx, owner, img, accept)
	if err != nil {
		if ctx.Err() == nil {
			c.metrics.ownerUnreachable.WithLabelValues("manifest").Inc()
			c.log.Warn("owner of an image reference did not resolve it; resolving it here", "peer", owner, "image", key, "error", err)
		}
		return "", "", false
	}
	return ans.Digest, ans.Outcome, true
}

func (c *Cluster) askManifest(ctx context.Context, owner string, img tags.Image, accept []string) (manifestAnswer, error) {
	q := url.Values{"registry": {img.Registry}, "repository": {img.Repository}, "accept": accept}
	if img.Tag != "" {
		q.Set("tag", img.Tag)
	}
	if img.Digest != "" {
		q.Set("digest", img.Digest.String())
	}
	// The owner answers its status at once, then asks the upstream; the
	// rest of the answer is due within the upstream's own bounds.
	ctx, cancel := context.WithTimeoutCause(ctx, c.byteTimeout+30*time.Second, errors.New("the owner did not resolve the image in time"))
	defer cancel()
	resp, err := c.askWorking(ctx, owner, "manifests?"+q.Encode())
	if err != nil {
		return manifestAnswer{}, err
	}
	defer resp.Body.Close()
	var ans manifestAnswer
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxAnswer)).Decode(&ans); err != nil {
		if cause := context.Cause(ctx); cause != nil {
			err = cause
		}
		return manifestAnswer{}, fmt.Errorf("peer's answer: %w", err)
	}
	if ans.Failed {
		return manifestAnswer{}, errors.New("the owner could not resolve it")
	}
	if err := ans.Digest.Validate(); err != nil {
		return manifestAnswer{}, fmt.Errorf("peer's answer: %w", err)
	}
	if img.Digest != "" && ans.Digest != img.Digest {
		return manifestAnswer{}, fmt.Errorf("peer answered %s for %s", ans.Digest, img)
	}
	return ans, nil
}
