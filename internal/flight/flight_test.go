package flight

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestConcurrentCallersShareOneRun(t *testing.T) {
	var g Group[int]
	var runs atomic.Int32
	release := make(chan struct{})
	var wg sync.WaitGroup
	results := make([]int, 10)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := g.Do(context.Background(), "k", time.Minute, func(context.Context) (int, error) {
				runs.Add(1)
				<-release
				return 42, nil
			})
			if err != nil {
				t.Error(err)
			}
			results[i] = v
		}()
	}
	time.Sleep(50 * time.Millisecond) // let every caller join the one run
	close(release)
	wg.Wait()
	if n := runs.Load(); n != 1 {
		t.Errorf("work ran %d times, want 1", n)
	}
	for i, v := range results {
		if v != 42 {
			t.Errorf("caller %d got %d", i, v)
		}
	}
}

func TestCallerLeavingDoesNotCancelTheWork(t *testing.T) {
	var g Group[string]
	ctx, cancel := context.WithCancel(context.Background())
	workCtxErr := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		_, err := g.Do(ctx, "k", time.Minute, func(wctx context.Context) (string, error) {
			close(started)
			time.Sleep(100 * time.Millisecond)
			workCtxErr <- wctx.Err()
			return "done", nil
		})
		if !errors.Is(err, context.Canceled) {
			t.Errorf("leaving caller got %v, want context.Canceled", err)
		}
	}()
	<-started
	cancel()
	// A second caller joins the run the first one left, and gets its result.
	v, err := g.Do(context.Background(), "k", time.Minute, func(context.Context) (string, error) { return "second run", nil })
	if err != nil || v != "done" {
		t.Errorf("joining caller got %q, %v; want the shared run's result", v, err)
	}
	if err := <-workCtxErr; err != nil {
		t.Errorf("shared work saw its context end: %v", err)
	}
}

func TestTimeoutBoundsTheSharedRun(t *testing.T) {
	var g Group[int]
	_, err := g.Do(context.Background(), "k", 20*time.Millisecond, func(ctx context.Context) (int, error) {
		<-ctx.Done()
		return 0, ctx.Err()
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v, want the shared run's deadline", err)
	}
}
