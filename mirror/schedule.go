package mirror

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/metricsreg"
	"github.com/pullbroker/pullbroker/tags"
)

// Schedule re-runs a sync list inside a running proxy (sync.imagesFile,
// sync.interval), so seeded images follow their upstream without a human:
// each run moves the pins of the listed tags to what the upstream has now
// (one HEAD each; a GET only when a tag moved), then fetches whatever the
// cache lacks. The list is read again at every run, so an edited list
// takes effect at the next one.
type Schedule struct {
	Config      *config.Config
	RegistryAPI http.Handler
	Tags        *tags.Resolver
	Logger      *slog.Logger
	Registerer  prometheus.Registerer
}

// Run syncs at once and then every sync.interval until ctx ends.
func (s Schedule) Run(ctx context.Context) {
	runs := metricsreg.Shared(s.Registerer, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pullbroker_sync_runs_total",
		Help: "Scheduled sync runs (sync.imagesFile) by result: ok, or failed when any image failed.",
	}, []string{"result"}))
	lastOK := metricsreg.Shared(s.Registerer, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pullbroker_sync_last_success_timestamp_seconds",
		Help: "When a scheduled sync last synced every image of its list.",
	}))
	ticker := time.NewTicker(s.Config.Sync.Interval)
	defer ticker.Stop()
	for {
		if s.runOnce(ctx) {
			runs.WithLabelValues("ok").Inc()
			lastOK.SetToCurrentTime()
		} else {
			runs.WithLabelValues("failed").Inc()
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

func (s Schedule) runOnce(ctx context.Context) bool {
	start := time.Now()
	file := s.Config.Sync.ImagesFile
	list, err := ReadImageList(s.Config, file)
	if err != nil {
		s.Logger.Error("scheduled sync: cannot read the image list; the cache keeps what it has", "file", file, "error", err)
		return false
	}
	ok := true
	for _, e := range list.Images {
		img, err := tags.ParseImage(s.Config, e.Image)
		if err != nil || img.Tag == "" || img.Digest != "" {
			continue // ReadImageList checked the names; a digest reference has no pin to move
		}
		if res, err := s.Tags.RefreshPin(ctx, img); err != nil {
			ok = false
			s.Logger.Warn("scheduled sync: could not refresh a pin; it keeps its digest", "image", img, "error", err)
		} else if res.Changed {
			s.Logger.Info("scheduled sync: tag moved upstream", "image", img, "old", res.Old, "new", res.New)
		}
	}
	results, err := Sync(ctx, s.Config, s.RegistryAPI, s.Tags, list, io.Discard)
	failed := 0
	for _, r := range results {
		if r.Err != nil {
			failed++
			s.Logger.Warn("scheduled sync: image failed; retried at the next run", "image", r.Image, "error", r.Err)
		}
	}
	if err != nil || failed > 0 {
		ok = false
	}
	s.Logger.Info("scheduled sync done", "images", len(list.Images), "failed", failed, "duration", time.Since(start).Round(time.Millisecond))
	return ok && err == nil
}
