package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/s3"
)

// Measurement (7): pullbroker on S3 storage, against the S3 server itself
// and against pullbroker on the filesystem. The S3 server is versitygw's
// posix backend, started as internal/testenv.StartS3 starts it (the
// tests' S3 server), with its access log on: every request that reaches
// it is a line there, which is how the object-storage requests of a
// phase are counted without a proxy in the data path.

// The gateway's root credentials: loopback-only benchmark values.
const (
	s3AccessKey = "pullbroker-bench"
	s3SecretKey = "pullbroker-bench-secret"
	s3Region    = "us-east-1"
)

// s3RecordCacheTTL is storage.recordCacheTTL of the pullbrokers of (7) and
// (8): longer than any phase that counts object-storage reads, so a read
// in one is one the record cache did not spare, not an expired entry
// being refreshed (which costs about three reads per pinned tag per TTL,
// however many requests there are).
const s3RecordCacheTTL = 5 * time.Minute

// s3Server is a running versitygw.
type s3Server struct {
	endpoint string
	// dataDir is the posix backend's folder: each bucket is a folder in
	// it, each object a file at its key.
	dataDir   string
	accessLog string
	client    *s3.S3
}

// s3Server is versitygw, started on first use on a free port of 127.0.0.1
// over the "s3" working folder.
func (e *env) s3Server(ctx context.Context) (*s3Server, error) {
	if e.s3srv != nil {
		return e.s3srv, nil
	}
	bin, err := tool("versitygw")
	if err != nil {
		return nil, err
	}
	dir := e.dirs["s3"]
	meta, data := filepath.Join(dir, "meta"), filepath.Join(dir, "data")
	for _, d := range []string{meta, data} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	addr := fmt.Sprintf("127.0.0.1:%d", mustPort())
	accessLog := filepath.Join(dir, "access.log")
	// The metadata sidecar folder spares the data folder extended
	// attributes, as in internal/testenv.
	p, err := e.start("versitygw", bin, []string{"--port", addr, "--quiet", "--access-log", accessLog, "posix", "--sidecar", meta, data},
		"ROOT_ACCESS_KEY="+s3AccessKey, "ROOT_SECRET_KEY="+s3SecretKey)
	if err != nil {
		return nil, err
	}
	s := &s3Server{endpoint: "http://" + addr, dataDir: data, accessLog: accessLog}
	// An unsigned request is answered 403: the server is up.
	if err := waitHTTP(ctx, p, s.endpoint+"/"); err != nil {
		return nil, err
	}
	sess, err := session.NewSession(&aws.Config{
		Endpoint:         aws.String(s.endpoint),
		Region:           aws.String(s3Region),
		S3ForcePathStyle: aws.Bool(true),
		Credentials:      credentials.NewStaticCredentials(s3AccessKey, s3SecretKey, ""),
	})
	if err != nil {
		return nil, err
	}
	s.client = s3.New(sess)
	e.s3srv = s
	return s, nil
}

func (s *s3Server) createBucket(ctx context.Context, bucket string) error {
	if _, err := s.client.CreateBucketWithContext(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		return fmt.Errorf("versitygw: create bucket %s: %w", bucket, err)
	}
	return nil
}

// bucketDir is the folder of bucket in the posix backend: a file written
// at bucketDir/<key> is listed and served as the object <key>.
func (s *s3Server) bucketDir(bucket string) string { return filepath.Join(s.dataDir, bucket) }

// storage is the storage section of a pullbroker on bucket.
func (s *s3Server) storage(bucket, spoolDir string, recordCacheTTL time.Duration) string {
	return fmt.Sprintf(`storage:
  driver: s3
  recordCacheTTL: %s
  spoolDir: %s
  parameters:
    bucket: %s
    region: %s
    regionendpoint: %s
    forcepathstyle: true
    accesskey: %s
    secretkey: %s
`, recordCacheTTL, spoolDir, bucket, s3Region, s.endpoint, s3AccessKey, s3SecretKey)
}

// presignGet is a signed URL of the object, as pullbroker's
// storage.redirect hands out: a GET of it goes straight to the server.
func (s *s3Server) presignGet(bucket, key string) (string, error) {
	req, _ := s.client.GetObjectRequest(&s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	return req.Presign(time.Hour)
}

// presignGetVia is a signed URL of the object on endpoint, an address
// that relays to the server: the signature covers the Host header the
// server receives, so it is signed for the relay's address.
func (s *s3Server) presignGetVia(endpoint, bucket, key string) (string, error) {
	sess, err := session.NewSession(s.client.Config.Copy(&aws.Config{Endpoint: aws.String(endpoint)}))
	if err != nil {
		return "", err
	}
	req, _ := s3.New(sess).GetObjectRequest(&s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	return req.Presign(time.Hour)
}

// startRelay copies bytes between each connection to its address and a
// connection of its own to target, both ways, and nothing else: the least
// any proxy in front of target costs. Between TCP sockets io.Copy splices
// on Linux, as pullbroker does for a whole blob on plain-HTTP storage.
func startRelay(ctx context.Context, target string) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	context.AfterFunc(ctx, func() { ln.Close() })
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer client.Close()
				server, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer server.Close()
				go func() {
					_, _ = io.Copy(server, client)
					server.(*net.TCPConn).CloseWrite()
				}()
				_, _ = io.Copy(client, server)
			}()
		}
	}()
	return ln.Addr().String(), nil
}

// waitObject waits until the bucket holds key with size bytes: a fill is
// committed to the bucket after the client that caused it was answered.
func (s *s3Server) waitObject(ctx context.Context, bucket, key string, size int64) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		out, err := s.client.HeadObjectWithContext(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
		if err == nil && aws.Int64Value(out.ContentLength) == size {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("object %s not in bucket %s a minute after its fill (last: %v)", key, bucket, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// s3Ops counts the requests the server answered, by operation
// ("GetObject", "HeadObject", "ListObjectsV2", "PutObject", ...).
type s3Ops map[string]int64

// s3Requests is what the access log holds: every request, and apart those
// on objects that are not cache content (see onBookkeeping).
type s3Requests struct {
	all, bookkeeping s3Ops
}

// requests reads the access log: see countRequests.
func (s *s3Server) requests() (s3Requests, error) {
	out := s3Requests{all: s3Ops{}, bookkeeping: s3Ops{}}
	f, err := os.Open(s.accessLog)
	if os.IsNotExist(err) {
		return out, nil
	}
	if err != nil {
		return out, err
	}
	defer f.Close()
	return countRequests(f)
}

// countRequests counts the requests of a versitygw access log. Each
// request is one line whose 8th field is the operation (as s3_GetObject),
// 9th the key ("-" for none, as in a listing) and 10th the request URI
// (with a listing's prefix).
func countRequests(log io.Reader) (s3Requests, error) {
	out := s3Requests{all: s3Ops{}, bookkeeping: s3Ops{}}
	sc := bufio.NewScanner(log)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || !strings.HasPrefix(fields[7], "s3_") {
			continue
		}
		op := strings.TrimPrefix(fields[7], "s3_")
		out.all[op]++
		if onBookkeeping(fields[8], fields[9]) {
			out.bookkeeping[op]++
		}
	}
	return out, sc.Err()
}

// onBookkeeping reports whether a request is on an object that is not
// cache content: its key, or a listing's prefix, is under cluster/ (the
// replicas' lease, accounting journal and usage) or uploads/ (the
// temporary copy that every write makes and then moves into place, which
// the S3 driver looks at and lists to move and delete it).
func onBookkeeping(key, uri string) bool {
	if key == "-" {
		u, err := url.Parse(uri)
		if err != nil {
			return false
		}
		key = u.Query().Get("prefix")
	}
	return strings.HasPrefix(key, "cluster/") || strings.HasPrefix(key, "uploads/")
}

// since is what was counted after before.
func (r s3Requests) since(before s3Requests) s3Requests {
	sub := func(now, then s3Ops) s3Ops {
		d := s3Ops{}
		for op, n := range now {
			if n -= then[op]; n != 0 {
				d[op] = n
			}
		}
		return d
	}
	return s3Requests{all: sub(r.all, before.all), bookkeeping: sub(r.bookkeeping, before.bookkeeping)}
}

// reads counts the requests that read: GETs, HEADs and listings.
func (o s3Ops) reads() int64 {
	var n int64
	for op, v := range o {
		if strings.HasPrefix(op, "Get") || strings.HasPrefix(op, "Head") || strings.HasPrefix(op, "List") {
			n += v
		}
	}
	return n
}

// cacheReads are the reads of cache content (blobs, manifests, tags,
// pins, links): what a request can cause. Reads of cluster/ (a lease, the
// accounting journal) are the replicas' own, paced by time, not traffic,
// and those of uploads/ are part of a write, which shows as one.
func (r s3Requests) cacheReads() int64 { return r.all.reads() - r.bookkeeping.reads() }

// s3Bucket holds the cache of measurement (7).
const s3Bucket = "pullbroker-s3"

// headImage pushes the small image whose tag "pinned" the HEAD
// measurements ask for (bench/head, tags pinned, ttl and plain), once.
func (e *env) headImage(ctx context.Context) error {
	if e.headPushed {
		return nil
	}
	small, err := randomFile(filepath.Join(e.dirs["data"], "small"), 4096, 30)
	if err != nil {
		return err
	}
	if _, err := pushImage(ctx, e.upHost, "bench/head", []string{"pinned", "ttl", "plain"}, []*fileLayer{small}); err != nil {
		return err
	}
	e.headPushed = true
	return nil
}

// s3 is measurement (7): cached blob GETs from pullbroker on S3 against
// signed GETs of the same object from the server, and pinned-tag HEADs
// on S3 against the same on the filesystem, with the object-storage
// requests they cost.
func (e *env) s3(ctx context.Context, r *results, sz sizes) error {
	srv, err := e.s3Server(ctx)
	if err != nil {
		return err
	}
	if err := srv.createBucket(ctx, s3Bucket); err != nil {
		return err
	}
	res := &s3Result{blobSize: sz.s3Blob, rounds: sz.s3Rounds, perClient: sz.perClient, headWorkers: sz.headWorkers,
		headRounds: sz.headRounds, recordCacheTTL: s3RecordCacheTTL, throughput: map[int]map[string][]float64{}}
	r.s3 = res

	log.Printf("(7) pushing a %s blob and the HEAD image to the upstream", mib(sz.s3Blob))
	blob, err := randomFile(filepath.Join(e.dirs["data"], "s3-blob"), sz.s3Blob, 50)
	if err != nil {
		return err
	}
	img, err := pushImage(ctx, e.upHost, "bench/s3", []string{"v1"}, []*fileLayer{blob})
	if err != nil {
		return err
	}
	if err := e.headImage(ctx); err != nil {
		return err
	}

	spool, err := e.freshDir("s3-spool")
	if err != nil {
		return err
	}
	fsRoot, err := e.freshDir("s3-reference-data")
	if err != nil {
		return err
	}
	pbS3, err := e.launchPullbroker("pullbroker-s3", srv.storage(s3Bucket, spool, s3RecordCacheTTL))
	if err != nil {
		return err
	}
	pbS3NoCache, err := e.launchPullbroker("pullbroker-s3-no-record-cache", srv.storage(s3Bucket, spool, 0))
	if err != nil {
		return err
	}
	pbFS, err := e.launchPullbroker("pullbroker-fs", filesystemStorage(fsRoot, s3RecordCacheTTL))
	if err != nil {
		return err
	}
	for _, pb := range []*pbInstance{pbS3, pbS3NoCache, pbFS} {
		if err := pb.waitReady(ctx); err != nil {
			return err
		}
	}

	// The blob's cold GET fills the bucket; the direct reference is a
	// signed GET of the object pullbroker committed.
	c := newClient(1)
	if _, err := getManifest(ctx, c, pbS3.url, img.repo, img.tag); err != nil {
		return err
	}
	if err := getBlob(ctx, c, blobURL(pbS3.url, img.repo, blob.digest.String()), blob.size, blob.digest.String(), true); err != nil {
		return fmt.Errorf("(7) cold GET through pullbroker on S3: %w", err)
	}
	c.CloseIdleConnections()
	key := blobFile("", blob.digest.Hex)
	if err := srv.waitObject(ctx, s3Bucket, key, blob.size); err != nil {
		return err
	}
	direct, err := srv.presignGet(s3Bucket, key)
	if err != nil {
		return err
	}
	relay, err := startRelay(ctx, strings.TrimPrefix(srv.endpoint, "http://"))
	if err != nil {
		return err
	}
	relayed, err := srv.presignGetVia("http://"+relay, s3Bucket, key)
	if err != nil {
		return err
	}
	servers := []struct{ name, url string }{
		{srvS3Direct, direct},
		{srvS3Relay, relayed},
		{srvPullbrokerS3, blobURL(pbS3.url, img.repo, blob.digest.String())},
	}
	for round := range sz.s3Rounds {
		for _, clients := range []int{1, 8} {
			if res.throughput[clients] == nil {
				res.throughput[clients] = map[string][]float64{}
			}
			for i := range servers {
				s := servers[(i+round)%len(servers)]
				log.Printf("(7) round %d: %d client(s) from %s", round+1, clients, s.name)
				bps, err := throughput(ctx, s.url, sz.s3Blob, clients, sz.perClient[clients])
				if err != nil {
					return fmt.Errorf("(7) %s: %w", s.name, err)
				}
				res.throughput[clients][s.name] = append(res.throughput[clients][s.name], bps)
			}
		}
	}

	// Pinned-tag HEADs: the filesystem reference and S3 alternate, each
	// round; S3 without the record cache once, for what a HEAD costs
	// without it.
	pinnedURL := func(pb *pbInstance) string { return manifestURL(pb.url, "bench/head", "pinned") }
	for _, pb := range []*pbInstance{pbFS, pbS3, pbS3NoCache} {
		if _, err := headLoad(ctx, pinnedURL(pb), 1, 1, time.Minute); err != nil { // resolves and pins the tag
			return fmt.Errorf("(7) warm-up HEAD: %w", err)
		}
	}
	heads := []struct {
		name string
		pb   *pbInstance
	}{{headFSRecordCache, pbFS}, {headS3RecordCache, pbS3}}
	for round := range sz.headRounds {
		for i := range heads {
			h := heads[(i+round)%len(heads)]
			row, err := e.s3Heads(ctx, srv, h.name, pinnedURL(h.pb), sz)
			if err != nil {
				return err
			}
			res.head = append(res.head, row)
		}
	}
	row, err := e.s3Heads(ctx, srv, headS3NoRecordCache, pinnedURL(pbS3NoCache), sz)
	if err != nil {
		return err
	}
	res.head = append(res.head, row)
	return nil
}

// s3Heads runs one HEAD load and counts the object-storage requests and
// the upstream requests made meanwhile.
func (e *env) s3Heads(ctx context.Context, srv *s3Server, name, url string, sz sizes) (s3HeadRow, error) {
	log.Printf("(7) HEADs: %s", name)
	if err := e.resetCounts(ctx); err != nil {
		return s3HeadRow{}, err
	}
	before, err := srv.requests()
	if err != nil {
		return s3HeadRow{}, err
	}
	res, err := headLoad(ctx, url, sz.headWorkers, sz.headReqs, sz.headMax)
	if err != nil {
		return s3HeadRow{}, fmt.Errorf("(7) %s: %w", name, err)
	}
	after, err := srv.requests()
	if err != nil {
		return s3HeadRow{}, err
	}
	st, err := e.stats(ctx)
	if err != nil {
		return s3HeadRow{}, err
	}
	// headLoad's own warm-up HEAD is in the window: it is a request like
	// the others.
	return s3HeadRow{name: name, requests: res.requests + 1, rate: res.rate(), storage: after.since(before), upstream: st.Requests}, nil
}
