package cache

import (
	"time"

	"github.com/opencontainers/go-digest"
)

// recentCommitWindow is how long a commit is remembered: far longer than
// a request takes from a miss in storage to FillAbsent, on this replica
// or through a peer.
const recentCommitWindow = time.Minute

// recentCommits remembers which blobs were committed within the window,
// so that FillAbsent knows when a miss it was told of may be stale. The
// caller holds Store.mu.
type recentCommits struct {
	at map[digest.Digest]time.Time
	// queue holds the commits in order, oldest first, to forget them.
	queue []commitAt
}

type commitAt struct {
	dgst digest.Digest
	at   time.Time
}

func (r *recentCommits) add(dgst digest.Digest, now time.Time) {
	if r.at == nil {
		r.at = map[digest.Digest]time.Time{}
	}
	r.forget(now)
	r.at[dgst] = now
	r.queue = append(r.queue, commitAt{dgst, now})
}

func (r *recentCommits) has(dgst digest.Digest, now time.Time) bool {
	at, ok := r.at[dgst]
	return ok && now.Sub(at) < recentCommitWindow
}

// forget drops the commits older than the window.
func (r *recentCommits) forget(now time.Time) {
	n := 0
	for _, c := range r.queue {
		if now.Sub(c.at) < recentCommitWindow {
			break
		}
		if r.at[c.dgst].Equal(c.at) {
			delete(r.at, c.dgst)
		}
		n++
	}
	// The array behind the queue is replaced when append outgrows it,
	// which leaves what was forgotten behind.
	r.queue = r.queue[n:]
}
