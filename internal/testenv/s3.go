package testenv

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/s3"
)

// S3Server is a versitygw gateway started by StartS3, serving one bucket over plain HTTP with
// path-style addressing.
type S3Server struct {
	// Endpoint is "http://127.0.0.1:PORT".
	Endpoint string
	Bucket   string
	// AccessKey and SecretKey are the gateway's root credentials.
	AccessKey, SecretKey string
	p                    *Process
	accessLog            string
}

// The gateway's root credentials: test-only values on a loopback server.
const (
	s3AccessKey = "pullbroker-test"
	s3SecretKey = "pullbroker-test-secret"
	s3Bucket    = "pullbroker-cache"
)

// StartS3 runs versitygw (the posix backend over a temp dir, metadata in a sidecar dir so that the
// temp filesystem needs no extended attributes) on a free 127.0.0.1 port, waits until it answers
// and creates one empty bucket.
func StartS3(t testing.TB) *S3Server {
	t.Helper()
	bin := Tool(t, "versitygw")
	dir := t.TempDir()
	for _, d := range []string{"meta", "data"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	var accessLog string
	p, addr := startOnFreePort(t, "versitygw", func(port int) *exec.Cmd {
		// A log of its own per attempt: Operations counts what this server answered.
		accessLog = filepath.Join(dir, fmt.Sprintf("access-%d.log", port))
		cmd := exec.Command(bin, "--port", fmt.Sprintf("127.0.0.1:%d", port), "--quiet", "--access-log", accessLog, "posix",
			"--sidecar", filepath.Join(dir, "meta"), filepath.Join(dir, "data"))
		cmd.Env = append(cmd.Environ(), "ROOT_ACCESS_KEY="+s3AccessKey, "ROOT_SECRET_KEY="+s3SecretKey)
		return cmd
	}, func(addr string) bool { return httpAnswers("http://" + addr) })
	s := &S3Server{Endpoint: "http://" + addr, Bucket: s3Bucket, AccessKey: s3AccessKey, SecretKey: s3SecretKey, p: p, accessLog: accessLog}
	if _, err := s.Client(t).CreateBucket(&s3.CreateBucketInput{Bucket: aws.String(s.Bucket)}); err != nil {
		t.Fatalf("versitygw: create bucket %s: %v\n%s", s.Bucket, err, p.LogTail())
	}
	return s
}

// Parameters are the s3 storage driver parameters that reach the bucket, as
// storage.parameters takes them.
func (s *S3Server) Parameters() map[string]any {
	return map[string]any{
		"bucket":         s.Bucket,
		"region":         "us-east-1",
		"regionendpoint": s.Endpoint,
		"forcepathstyle": true,
		"accesskey":      s.AccessKey,
		"secretkey":      s.SecretKey,
	}
}

// Client is an S3 client of the gateway, for tests that look into the bucket directly.
func (s *S3Server) Client(t testing.TB) *s3.S3 {
	t.Helper()
	sess, err := session.NewSession(&aws.Config{
		Endpoint:         aws.String(s.Endpoint),
		Region:           aws.String("us-east-1"),
		S3ForcePathStyle: aws.Bool(true),
		Credentials:      credentials.NewStaticCredentials(s.AccessKey, s.SecretKey, ""),
	})
	if err != nil {
		t.Fatalf("s3 session: %v", err)
	}
	return s3.New(sess)
}

// Keys lists every object key in the bucket.
func (s *S3Server) Keys(t testing.TB) []string {
	t.Helper()
	var keys []string
	err := s.Client(t).ListObjectsV2Pages(&s3.ListObjectsV2Input{Bucket: aws.String(s.Bucket)},
		func(page *s3.ListObjectsV2Output, _ bool) bool {
			for _, o := range page.Contents {
				keys = append(keys, aws.StringValue(o.Key))
			}
			return true
		})
	if err != nil {
		t.Fatalf("list bucket %s: %v", s.Bucket, err)
	}
	return keys
}

// Operations counts the S3 operations the server has answered so far, by name ("GetObject",
// "PutObject", "ListObjectsV2", ...), from its access log: what pullbroker costs in
// object-storage requests. With prefixes, only requests on a key (or a listing of a prefix)
// under one of them count: "repos/" and "blobs/" leave out the replicas' own coordination
// (cluster/) and uploads.
func (s *S3Server) Operations(t testing.TB, prefixes ...string) map[string]int {
	t.Helper()
	log, err := os.ReadFile(s.accessLog)
	if err != nil {
		t.Fatalf("versitygw access log: %v", err)
	}
	ops := map[string]int{}
	for _, line := range strings.Split(string(log), "\n") {
		// Each request is one line; its 8th field is the operation (as s3_GetObject), its 9th
		// the key ("-" for none) and its 10th the request URI (a listing's prefix is there).
		f := strings.Fields(line)
		if len(f) < 10 || !strings.HasPrefix(f[7], "s3_") {
			continue
		}
		if len(prefixes) > 0 && !underAny(requestKey(f[8], f[9]), prefixes) {
			continue
		}
		ops[strings.TrimPrefix(f[7], "s3_")]++
	}
	return ops
}

// requestKey is the key a request named, or the prefix a listing asked for.
func requestKey(key, uri string) string {
	if key != "-" {
		return key
	}
	if u, err := url.Parse(uri); err == nil {
		return u.Query().Get("prefix")
	}
	return ""
}

func underAny(key string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

// httpAnswers reports whether anything answers HTTP at base (an S3 server answers an unsigned
// request with 403).
func httpAnswers(base string) bool {
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(base + "/")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return true
}
