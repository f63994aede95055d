// Package flight shares one piece of work between concurrent callers that
// ask for the same key, the way singleflight does, with the two rules a
// proxy needs: the work runs on a context that outlives any one caller (a
// client hanging up must not fail the fetch the others wait for), bounded
// by a timeout; and each caller still stops waiting when its own context
// ends.
package flight

import (
	"context"
	"time"

	"golang.org/x/sync/singleflight"
)

// Group runs work for a key at most once at a time.
type Group[T any] struct {
	g singleflight.Group
}

// Do runs fn once for all concurrent callers with the same key and returns
// its result to each of them. The run keeps the first caller's context
// values, not its cancellation, and ends after timeout.
func (g *Group[T]) Do(ctx context.Context, key string, timeout time.Duration, fn func(context.Context) (T, error)) (T, error) {
	ch := g.g.DoChan(key, func() (any, error) {
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
		defer cancel()
		return fn(wctx)
	})
	select {
	case res := <-ch:
		v, _ := res.Val.(T)
		return v, res.Err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}
