package peers

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	discoveryclient "k8s.io/client-go/kubernetes/typed/discovery/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// WatchEndpointSlices returns the set of the ready endpoints of service
// ("namespace/name", a headless Service selecting the replicas), kept live
// by an informer on its EndpointSlices until ctx ends: replicas that come,
// go or turn unready change the owners at once. Each endpoint address is a
// member on the port of listen (cluster.peerListen), which every replica
// shares. The set is Known once the first list is in.
func WatchEndpointSlices(ctx context.Context, cfg *rest.Config, service, listen string, log *slog.Logger) (*Set, error) {
	ns, name, ok := strings.Cut(service, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return nil, fmt.Errorf("cluster.peerService %q is not namespace/name", service)
	}
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("cluster.peerListen %q: %w", listen, err)
	}
	isSelf, err := LocalListener(listen)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "pullbroker"
	// The discovery/v1 client alone: the full clientset would link every
	// API group into the binary.
	client, err := discoveryclient.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	lw := cache.NewFilteredListWatchFromClient(client.RESTClient(), "endpointslices", ns, func(o *metav1.ListOptions) {
		o.LabelSelector = discoveryv1.LabelServiceName + "=" + name
	})
	inf := cache.NewSharedIndexInformer(lw, &discoveryv1.EndpointSlice{}, 0, cache.Indexers{})
	w := &sliceWatch{set: NewSet(isSelf), store: inf.GetStore(), port: port, service: service, log: log}
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { w.refresh() },
		UpdateFunc: func(any, any) { w.refresh() },
		DeleteFunc: func(any) { w.refresh() },
	})
	if err != nil {
		return nil, err
	}
	go inf.RunWithContext(ctx)
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), reg.HasSynced) {
			w.synced.Store(true)
			w.refresh()
		}
	}()
	return w.set, nil
}

// sliceWatch turns the EndpointSlices of one Service into the peer set.
type sliceWatch struct {
	set     *Set
	store   cache.Store
	port    string
	service string
	log     *slog.Logger
	// synced: until the first list is in, a partial view must not become
	// the set (it would move owners back and forth at start).
	synced atomic.Bool

	mu   sync.Mutex
	last []string
}

func (w *sliceWatch) refresh() {
	if !w.synced.Load() {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	var members []string
	for _, obj := range w.store.List() {
		slice, ok := obj.(*discoveryv1.EndpointSlice)
		if !ok {
			continue
		}
		for _, ep := range slice.Endpoints {
			// A nil Ready is ready, as the API defines it.
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, addr := range ep.Addresses {
				members = append(members, net.JoinHostPort(addr, w.port))
			}
		}
	}
	slices.Sort(members)
	members = slices.Compact(members)
	if w.set.Known() && slices.Equal(members, w.last) {
		return
	}
	w.last = members
	w.set.Update(members)
	w.log.Info("peer set changed", "service", w.service, "peers", strings.Join(members, ","))
}
