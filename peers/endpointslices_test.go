package peers

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	discoveryclient "k8s.io/client-go/kubernetes/typed/discovery/v1"
	"k8s.io/client-go/rest"

	"github.com/pullbroker/pullbroker/internal/testenv"
)

// TestPeersFromEndpointSlices: on a real API server, the set follows the EndpointSlices of the
// peer Service as the EndpointSlice controller writes them while Pods come, turn unready and go:
// only ready endpoints count, every slice of the Service counts, other Services' slices do not.
func TestPeersFromEndpointSlices(t *testing.T) {
	cfg := testenv.StartAPIServer(t)
	client, err := discoveryclient.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	slicesAPI := client.EndpointSlices("default")
	ready := func(b bool) discoveryv1.EndpointConditions { return discoveryv1.EndpointConditions{Ready: &b} }
	slice := func(name, service string, endpoints ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: service}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   endpoints,
		}
	}
	endpoint := func(ip string, isReady bool) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: ready(isReady)}
	}
	create := func(s *discoveryv1.EndpointSlice) {
		t.Helper()
		if _, err := slicesAPI.Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	update := func(s *discoveryv1.EndpointSlice) {
		t.Helper()
		cur, err := slicesAPI.Get(ctx, s.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s.ResourceVersion = cur.ResourceVersion
		if _, err := slicesAPI.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	create(slice("pb-peers-a", "pb-peers", endpoint("10.0.0.1", true), endpoint("10.0.0.2", true), endpoint("10.0.0.3", false)))
	create(slice("other-a", "other", endpoint("10.9.9.9", true)))

	set, err := WatchEndpointSlices(ctx, cfg, "default/pb-peers", ":5002", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	want := func(what string, members ...string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !set.Known() || !slices.Equal(set.Members(), members) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: peers %v (known: %v), want %v", what, set.Members(), set.Known(), members)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	want("at start", "10.0.0.1:5002", "10.0.0.2:5002")

	update(slice("pb-peers-a", "pb-peers", endpoint("10.0.0.1", true), endpoint("10.0.0.2", true), endpoint("10.0.0.3", true)))
	want("a Pod turned ready", "10.0.0.1:5002", "10.0.0.2:5002", "10.0.0.3:5002")

	update(slice("pb-peers-a", "pb-peers", endpoint("10.0.0.1", true), endpoint("10.0.0.2", false), endpoint("10.0.0.3", true)))
	want("a Pod turned unready", "10.0.0.1:5002", "10.0.0.3:5002")

	create(slice("pb-peers-b", "pb-peers", discoveryv1.Endpoint{Addresses: []string{"10.0.0.4"}}))
	want("a Pod came in a second slice (no ready condition: ready)", "10.0.0.1:5002", "10.0.0.3:5002", "10.0.0.4:5002")

	update(slice("pb-peers-a", "pb-peers", endpoint("10.0.0.3", true)))
	want("Pods went", "10.0.0.3:5002", "10.0.0.4:5002")

	if err := slicesAPI.Delete(ctx, "pb-peers-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	want("a slice was deleted", "10.0.0.3:5002")

	// An API server that cannot be reached leaves the set unknown (the replica not ready), rather
	// than empty (every replica its own owner).
	unreachable := rest.CopyConfig(cfg)
	unreachable.Host = "https://127.0.0.1:1"
	lost, err := WatchEndpointSlices(ctx, unreachable, "default/pb-peers", ":5002", nil)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if lost.Known() {
		t.Errorf("the set of an unreachable API server is known: %v", lost.Members())
	}

	for _, bad := range []string{"pb-peers", "/pb-peers", "default/"} {
		if _, err := WatchEndpointSlices(ctx, cfg, bad, ":5002", nil); err == nil || !strings.Contains(err.Error(), "cluster.peerService") {
			t.Errorf("peerService %q: %v, want an error naming cluster.peerService", bad, err)
		}
	}
}
