package cache

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// Streaming a cached blob from object storage to a client.
//
// Through the driver's Reader every byte is copied twice in user space,
// 32 KiB per read and per write, by the storage client and by net/http.
// When the storage hands out plain-HTTP URLs (an in-cluster S3 such as
// MinIO), a blob is instead fetched from its presigned URL over a
// connection of its own, whose socket io.Copy hands to the client's
// connection: on Linux, http.response.ReadFrom passes an
// *io.LimitedReader over a *net.TCPConn to splice, and the body never
// enters user space. Anything else is copied with large pooled buffers.

// directGetMinBytes: smaller blobs are read through the driver, whose
// client keeps its connections alive; a connection of their own would
// cost more than the copies it saves.
const directGetMinBytes = 1 << 20

// directDialTimeout bounds connecting to the storage's URL; the driver's
// path serves the blob when it fails.
const directDialTimeout = 5 * time.Second

// copyBufferBytes is the size of the buffers streaming a driver object:
// 8 times fewer system calls than io.Copy's 32 KiB.
const copyBufferBytes = 256 << 10

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, copyBufferBytes); return &b }}

// directBody is the body of a GET of an object over a plain-HTTP
// connection of its own.
type directBody struct {
	conn *net.TCPConn
	// head is the part of the body read along with the response's header.
	head []byte
	// rest is what follows head on the connection.
	rest int64
	stop func() bool
}

// openDirectGet sends a GET of rawURL from offset and reads the answer's
// header. It expects exactly the length bytes that follow offset, in a
// plain (not chunked, not encoded) body; any other answer is an error, and
// the caller reads the object through the driver instead.
func openDirectGet(ctx context.Context, rawURL string, offset, length int64) (*directBody, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" {
		return nil, fmt.Errorf("storage URL scheme %q: only plain http is read directly", u.Scheme)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "80")
	}
	d := net.Dialer{Timeout: directDialTimeout}
	c, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, err
	}
	conn, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("connection to %s is not TCP", u.Host)
	}
	// A cancelled request unblocks the reads and writes on conn.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	body, err := sendDirectGet(ctx, conn, u, offset, length)
	if err != nil {
		stop()
		conn.Close()
		return nil, err
	}
	body.stop = stop
	return body, nil
}

func sendDirectGet(ctx context.Context, conn *net.TCPConn, u *url.URL, offset, length int64) (*directBody, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	want := http.StatusOK
	if offset > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
		want = http.StatusPartialContent
	}
	req.Close = true // the connection is used once
	if err := req.Write(conn); err != nil {
		return nil, err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, err
	}
	switch {
	case resp.StatusCode != want:
		return nil, fmt.Errorf("storage answered %s", resp.Status)
	case resp.ContentLength != length:
		return nil, fmt.Errorf("storage announced %d bytes, expected %d", resp.ContentLength, length)
	case len(resp.TransferEncoding) > 0 || resp.Header.Get("Content-Encoding") != "":
		return nil, fmt.Errorf("storage sent an encoded body")
	}
	head, _ := br.Peek(min(br.Buffered(), int(length)))
	return &directBody{conn: conn, head: head, rest: length - int64(len(head))}, nil
}

// writeTo copies the body to w. The part after head goes to w as an
// *io.LimitedReader over the connection, which net/http splices.
func (b *directBody) writeTo(w io.Writer) (int64, error) {
	n, err := w.Write(b.head)
	if err != nil {
		return int64(n), err
	}
	m, err := io.Copy(w, &io.LimitedReader{R: b.conn, N: b.rest})
	n64 := int64(n) + m
	if err == nil && m < b.rest {
		err = fmt.Errorf("storage ended the object after %d of %d bytes: %w", n64, int64(len(b.head))+b.rest, io.ErrUnexpectedEOF)
	}
	return n64, err
}

func (b *directBody) Close() error {
	b.stop()
	return b.conn.Close()
}

// writerOnly and readerOnly hide io.ReaderFrom and io.WriterTo, so that
// io.CopyBuffer uses the buffer it is given.
type writerOnly struct{ io.Writer }
type readerOnly struct{ io.Reader }

// copyPooled copies src to w through a pooled buffer of copyBufferBytes.
func copyPooled(w io.Writer, src io.Reader) (int64, error) {
	buf := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(buf)
	return io.CopyBuffer(writerOnly{w}, readerOnly{src}, *buf)
}
