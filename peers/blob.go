package peers

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/cache"
)

// BlobFetcher returns the fetcher a fill of dgst should run: fromUpstream
// when this replica owns the digest, else one that streams the blob from
// its owner (which fetches it from the upstream once for every replica)
// and uses fromUpstream instead when the owner cannot be asked, sends no
// first byte within the bound, answers an error, or fails mid-stream (the
// upstream then sends what the owner did not). Bytes from the owner are
// verified like an upstream's: the fill checks them, and a peer whose
// bytes do not match the digest is not asked for it again.
func (c *Cluster) BlobFetcher(registry, repository string, dgst digest.Digest, size int64, fromUpstream cache.Fetcher) cache.Fetcher {
	return func(ctx context.Context) (io.ReadCloser, int64, error) {
		key := dgst.String()
		owner := c.remoteOwner(key)
		if owner == "" {
			return fromUpstream(ctx)
		}
		c.metrics.forwards.WithLabelValues("blob").Inc()
		body, n, err := c.openBlob(ctx, owner, registry, repository, dgst, size)
		if err != nil {
			if ctx.Err() != nil {
				return nil, 0, err
			}
			c.metrics.ownerUnreachable.WithLabelValues("blob").Inc()
			c.log.Warn("owner of a blob did not serve it; fetching it from the upstream", "peer", owner, "digest", dgst, "error", err)
			return fromUpstream(ctx)
		}
		return &peerBody{c: c, ctx: ctx, owner: owner, dgst: dgst, r: body, fromUpstream: fromUpstream}, n, nil
	}
}

var (
	errNoFirstByte = errors.New("no first byte within the bound")
	errStalled     = errors.New("no byte within the bound")
)

// openBlob asks owner for the blob and waits for its first byte at most
// c.byteTimeout.
func (c *Cluster) openBlob(ctx context.Context, owner, registry, repository string, dgst digest.Digest, size int64) (*ownerStream, int64, error) {
	q := url.Values{"registry": {registry}, "repository": {repository}, "size": {strconv.FormatInt(size, 10)}}
	ctx, cancel := context.WithCancelCause(ctx)
	timer := time.AfterFunc(c.byteTimeout, func() { cancel(fmt.Errorf("%w (%s)", errNoFirstByte, c.byteTimeout)) })
	fail := func(err error) (*ownerStream, int64, error) {
		timer.Stop()
		if cause := context.Cause(ctx); errors.Is(cause, errNoFirstByte) {
			err = cause
		}
		cancel(nil)
		return nil, 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.scheme+"://"+owner+ProtocolPrefix+"blobs/"+dgst.String()+"?"+q.Encode(), nil)
	if err != nil {
		return fail(err)
	}
	c.authorize(req)
	resp, err := c.client.Do(req)
	if err != nil {
		if isDialError(err) {
			c.markDown(owner)
		}
		return fail(err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return fail(fmt.Errorf("peer answered %s", resp.Status))
	}
	if size >= 0 && resp.ContentLength >= 0 && resp.ContentLength != size {
		resp.Body.Close()
		c.verificationFailed(owner, dgst, fmt.Errorf("announced %d bytes, the descriptor says %d", resp.ContentLength, size))
		return fail(fmt.Errorf("peer announced %d bytes of %s, its descriptor says %d", resp.ContentLength, dgst, size))
	}
	br := bufio.NewReaderSize(resp.Body, 32<<10)
	if _, err := br.Peek(1); err != nil && !(err == io.EOF && resp.ContentLength == 0) {
		resp.Body.Close()
		return fail(err)
	}
	if !timer.Stop() {
		resp.Body.Close()
		return fail(context.Cause(ctx))
	}
	return &ownerStream{r: br, body: resp.Body, cancel: cancel, bound: c.byteTimeout}, resp.ContentLength, nil
}

// isDialError reports whether err is a failed connection: the peer is
// down, not merely slow with one request.
func isDialError(err error) bool {
	var opErr *net.OpError
	return errors.As(err, &opErr) && opErr.Op == "dial"
}

func (c *Cluster) verificationFailed(owner string, dgst digest.Digest, why error) {
	c.metrics.verificationFailure.Inc()
	c.avoidKey(owner, dgst.String())
	c.log.Error("a peer sent a blob that failed verification; not asking it for this blob again", "peer", owner, "digest", dgst, "error", why)
}

// ownerStream is the body of an owner's answer. A Read that gets no byte
// within the bound ends the request: an owner that hangs mid-stream is
// left like one that was cut off.
type ownerStream struct {
	r      io.Reader
	body   io.Closer
	cancel context.CancelCauseFunc
	bound  time.Duration
}

func (s *ownerStream) Read(p []byte) (int, error) {
	stall := time.AfterFunc(s.bound, func() { s.cancel(fmt.Errorf("%w (%s)", errStalled, s.bound)) })
	n, err := s.r.Read(p)
	if !stall.Stop() && err != nil {
		err = fmt.Errorf("owner stalled: %w", errStalled)
	}
	return n, err
}

func (s *ownerStream) Close() error {
	defer s.cancel(nil)
	return s.body.Close()
}

// peerBody is a blob streamed from its owner. A read error mid-stream
// continues from the upstream past the bytes already received; a digest
// mismatch at the end, which the fill finds, is the owner's lie
// (Rejected).
type peerBody struct {
	c            *Cluster
	ctx          context.Context
	owner        string
	dgst         digest.Digest
	r            *ownerStream
	n            int64
	fromUpstream cache.Fetcher
	// upstream, once set, is where the rest comes from.
	upstream io.ReadCloser
}

func (b *peerBody) Read(p []byte) (int, error) {
	if b.upstream != nil {
		return b.upstream.Read(p)
	}
	n, err := b.r.Read(p)
	b.n += int64(n)
	b.c.metrics.forwardBytes.Add(float64(n))
	switch {
	case err == io.EOF:
		return n, io.EOF
	case err != nil:
		if b.ctx.Err() != nil {
			return n, err
		}
		if err := b.continueFromUpstream(err); err != nil {
			return n, err
		}
		if n == 0 {
			return b.upstream.Read(p)
		}
	}
	return n, nil
}

// continueFromUpstream switches to the upstream after the owner failed
// mid-stream, skipping the bytes the owner already sent.
func (b *peerBody) continueFromUpstream(cause error) error {
	b.c.metrics.ownerUnreachable.WithLabelValues("blob").Inc()
	b.c.avoidKey(b.owner, b.dgst.String())
	b.c.log.Warn("owner of a blob failed mid-stream; fetching the rest from the upstream", "peer", b.owner, "digest", b.dgst, "received", b.n, "error", cause)
	b.r.Close()
	up, _, err := b.fromUpstream(b.ctx)
	if err != nil {
		return fmt.Errorf("owner %s failed mid-stream (%v) and the upstream failed too: %w", b.owner, cause, err)
	}
	if _, err := io.CopyN(io.Discard, up, b.n); err != nil {
		up.Close()
		return fmt.Errorf("skipping the %d bytes of %s the owner sent: %w", b.n, b.dgst, err)
	}
	b.upstream = up
	return nil
}

// Rejected marks the owner as a liar for this blob when all the bytes the
// fill rejected came from it.
func (b *peerBody) Rejected(err error) {
	if b.upstream == nil {
		b.c.verificationFailed(b.owner, b.dgst, fmt.Errorf("peer %s: %w", b.owner, err))
	}
}

// WaitCommitted waits until the owner's fill of the blob has ended, so
// that the fill here finds the owner's commit in storage and writes
// nothing: every replica that streamed the blob from its owner would
// write it once more otherwise.
func (b *peerBody) WaitCommitted(ctx context.Context) error {
	if b.upstream != nil {
		return errors.New("the owner did not send the whole blob")
	}
	resp, err := b.c.askWorking(ctx, b.owner, "fills/"+b.dgst.String())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var ans fillAnswer
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxAnswer)).Decode(&ans); err != nil {
		return fmt.Errorf("waiting for the owner's fill to end: %w", err)
	}
	if !ans.Ended {
		return errors.New("the owner did not say that its fill ended")
	}
	return nil
}

// fillAnswer is the owner's answer once it runs no fill of a blob: a cut
// connection ends with no answer.
type fillAnswer struct {
	Ended bool `json:"ended"`
}

func (b *peerBody) Close() error {
	if b.upstream != nil {
		return b.upstream.Close()
	}
	return b.r.Close()
}
