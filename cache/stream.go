package cache

import (
	"context"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
)

// Stream passes a blob that the cache cannot store (Fill refused it, or
// its Wait failed, with ErrNotStored) from the upstream to one reader,
// with every check of a fill: the expected size (-1 unknown), the digest,
// the fill timeout and the stall bound. The reader withholds the last byte
// until the digest matched and fails instead when it did not, so a client
// never gets a whole response of unverified bytes. Nothing is written and
// nothing is shared. It takes a fill slot until Close (ErrTooManyFills
// beyond Options.MaxConcurrentFills). The size returned is the one the
// reader delivers, -1 if unknown.
func (s *Store) Stream(ctx context.Context, dgst digest.Digest, size int64, fetch Fetcher) (io.ReadCloser, int64, error) {
	if err := dgst.Validate(); err != nil {
		return nil, 0, fmt.Errorf("blob digest %q: %w", dgst, err)
	}
	select {
	case s.fillSlots <- struct{}{}:
	default:
		s.metrics.fillsRefused.WithLabelValues("concurrency").Inc()
		return nil, 0, fmt.Errorf("%w (%d): retry shortly", ErrTooManyFills, cap(s.fillSlots))
	}
	ctx, cancel := s.fillContext(ctx, dgst)
	ctx, progress, stopWatch := s.watchStall(ctx, dgst)
	release := func() {
		stopWatch()
		cancel()
		<-s.fillSlots
	}
	body, announced, err := fetch(ctx)
	if err != nil {
		err = fillError(ctx, err)
		release()
		return nil, 0, err
	}
	size, err = expectedSize(dgst, size, announced)
	if err != nil {
		body.Close()
		release()
		return nil, 0, err
	}
	s.metrics.streams.Inc()
	return &streamReader{
		ctx: ctx, body: body, checked: newCheckedBody(body, dgst, size),
		progress: progress, release: release, buf: make([]byte, 0, fillBufferSize),
	}, size, nil
}

type streamReader struct {
	ctx      context.Context
	body     io.ReadCloser
	checked  *checkedBody
	progress func(int)
	release  func()
	// pending holds bytes read but not yet returned; its last byte is
	// held back until the body is verified.
	pending  []byte
	buf      []byte
	verified bool
	err      error
	closed   bool
}

func (r *streamReader) Read(p []byte) (int, error) {
	for {
		out := len(r.pending)
		if !r.verified && out > 0 {
			out--
		}
		if out > 0 {
			n := copy(p, r.pending[:out])
			r.pending = r.pending[n:]
			return n, nil
		}
		if r.verified {
			return 0, io.EOF
		}
		if r.err != nil {
			return 0, r.err
		}
		r.readMore()
	}
}

// readMore reads the next chunk after the held-back byte.
func (r *streamReader) readMore() {
	buf := r.buf[:cap(r.buf)]
	kept := copy(buf, r.pending)
	n, err := r.checked.Read(buf[kept:])
	r.progress(n)
	r.pending = buf[:kept+n]
	switch {
	case err == io.EOF:
		r.verified = true
	case err != nil:
		reportMismatch(r.body, err)
		r.err = fillError(r.ctx, err)
	}
}

func (r *streamReader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	err := r.body.Close()
	r.release()
	return err
}
