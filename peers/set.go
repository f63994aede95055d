// Package peers makes replicas that share one storage behave as one cache.
// Every key (a blob digest, an image reference) has one owner among the live
// peers, chosen by rendezvous hashing so that a peer coming or going moves
// only the keys it owned. The owner fetches a blob from the upstream once
// for all replicas and resolves a tag once for all of them; the others ask
// it over the peer listener (Handler) and fetch for themselves when it
// cannot answer: availability beats de-duplication.
//
// The peer protocol is plain HTTP under a versioned prefix (/peer/v1/),
// guarded by a shared bearer token, on a listener of its own: the registry
// port never serves it.
package peers

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
)

// Set is the live peer set: the peer listener addresses of every replica,
// this one's included. A source (the static cluster.peers list, or a
// watch of Kubernetes EndpointSlices) replaces it with Update whenever it
// changes; ownership follows at once.
type Set struct {
	isSelf func(member string) bool

	mu      sync.RWMutex
	members []string
	known   bool
}

// NewSet returns an empty set, not Known until the first Update. isSelf
// tells this replica's own entry (LocalListener); nil means none is.
func NewSet(isSelf func(member string) bool) *Set {
	if isSelf == nil {
		isSelf = func(string) bool { return false }
	}
	return &Set{isSelf: isSelf}
}

// StaticSet is the set of the cluster.peers list, which must name this
// replica's listener (cluster.peerListen).
func StaticSet(listen string, members []string) (*Set, error) {
	isSelf, err := LocalListener(listen)
	if err != nil {
		return nil, err
	}
	if !slices.ContainsFunc(members, isSelf) {
		return nil, fmt.Errorf("cluster.peers does not list this replica's peer listener %s: list it under this host's name or address, the way the other replicas reach it", listen)
	}
	s := NewSet(isSelf)
	s.Update(members)
	return s, nil
}

// Update replaces the members. Duplicates are dropped.
func (s *Set) Update(members []string) {
	m := slices.Clone(members)
	slices.Sort(m)
	m = slices.Compact(m)
	s.mu.Lock()
	s.members, s.known = m, true
	s.mu.Unlock()
}

// Known reports whether a source has told the set its members yet: until
// then no replica can tell who owns what.
func (s *Set) Known() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.known
}

// Members returns the current members, sorted.
func (s *Set) Members() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Clone(s.members)
}

// IsSelf reports whether member is this replica.
func (s *Set) IsSelf(member string) bool { return s.isSelf(member) }

// Owner is the member that owns key: the one with the highest rendezvous
// score. Every replica with the same members picks the same owner. It is
// "" when the set is empty.
func (s *Set) Owner(key string) string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var owner string
	var best uint64
	for _, m := range s.members {
		if score := rendezvousScore(m, key); owner == "" || score > best {
			owner, best = m, score
		}
	}
	return owner
}

// rendezvousScore hashes a member and a key together. FNV-1a alone mixes
// the last bytes poorly; the finalizer of splitmix64 spreads them.
func rendezvousScore(member, key string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(member))
	h.Write([]byte{0})
	h.Write([]byte(key))
	x := binary.BigEndian.Uint64(h.Sum(nil))
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// LocalListener tells the entry of a peer set that is the listener listen
// (cluster.peerListen) of this replica: the entry equal to it, or else one
// on its port whose host is this machine's host name or one of its
// addresses (a listener on ":5002" listed as "10.0.3.7:5002" or
// "pullbroker-0.pullbroker-peers:5002").
func LocalListener(listen string) (func(member string) bool, error) {
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("cluster.peerListen %q: %w", listen, err)
	}
	hostname, _ := os.Hostname()
	local := map[string]bool{}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if ipNet, ok := a.(*net.IPNet); ok {
				local[ipNet.IP.String()] = true
			}
		}
	}
	return func(member string) bool {
		if member == listen {
			return true
		}
		host, mport, err := net.SplitHostPort(member)
		if err != nil || mport != port {
			return false
		}
		return local[host] || (hostname != "" && (host == hostname || strings.HasPrefix(host, hostname+".")))
	}, nil
}
