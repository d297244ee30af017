package serve

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"
)

// Body bounds: a body must arrive at MinBodyRate bytes per second after bodyGrace, so that a client sending one
// byte a second holds a connection for seconds, not minutes, and never a stream slot (the body is read whole
// before a slot is taken).
const (
	MinBodyRate = 16 << 10
	bodyGrace   = 5 * time.Second
)

// Server is the HTTP server of the API with every wait bounded: headers, bodies (by rate), idle keep-alives.
// No ReadTimeout: a streamed reply may last minutes, and the body's own deadline is lifted once it is read.
func (a *API) Server() *http.Server {
	idle := a.Limits.IdleTimeout
	if idle <= 0 {
		idle = DefaultLimits().IdleTimeout
	}
	return &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: idle, MaxHeaderBytes: 64 << 10}
}

// errSlowBody is a body that fell under the rate floor.
var errSlowBody = errors.New("slow body")

// readBody reads a request's body whole under the size bound and the rate floor, then lifts the read deadline.
func readBody(w http.ResponseWriter, r *http.Request, max int64) ([]byte, error) {
	rc := http.NewResponseController(w)
	start := time.Now()
	var buf bytes.Buffer
	chunk := make([]byte, 32<<10)
	for {
		deadline := start.Add(bodyGrace + time.Duration(float64(buf.Len())/MinBodyRate*float64(time.Second)))
		rc.SetReadDeadline(deadline) // an error means the connection cannot take one (HTTP/2 over tests): bounded by ReadHeaderTimeout only
		n, err := r.Body.Read(chunk)
		buf.Write(chunk[:n])
		if int64(buf.Len()) > max {
			return nil, &http.MaxBytesError{Limit: max}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, errSlowBody
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil, errSlowBody
			}
			return nil, err
		}
	}
	rc.SetReadDeadline(time.Time{})
	return buf.Bytes(), nil
}

// bodyError answers a body that could not be read.
func (a *API) bodyError(w http.ResponseWriter, err error) {
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		apiError(w, http.StatusRequestEntityTooLarge, "invalid_request_error", "request_too_large", fmt.Sprintf("the request body passes %d bytes", a.Limits.MaxBodyBytes))
	case errors.Is(err, errSlowBody):
		apiError(w, http.StatusRequestTimeout, "invalid_request_error", "request_timeout", fmt.Sprintf("the request body arrived slower than %d bytes a second: send it whole", MinBodyRate))
	default:
		apiError(w, http.StatusBadRequest, "invalid_request_error", "unreadable_body", "the request body could not be read")
	}
}

// LimitListener closes, at accept, every connection past max open at once, so that no client can hold the
// process's file descriptors.
func LimitListener(ln net.Listener, max int) net.Listener {
	return &limitListener{Listener: ln, max: int64(max)}
}

type limitListener struct {
	net.Listener
	max  int64
	open atomic.Int64
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > l.max {
			l.open.Add(-1)
			c.Close()
			continue
		}
		return &countedConn{Conn: c, l: l}, nil
	}
}

type countedConn struct {
	net.Conn
	l      *limitListener
	closed atomic.Bool
}

func (c *countedConn) Close() error {
	if !c.closed.Swap(true) {
		c.l.open.Add(-1)
	}
	return c.Conn.Close()
}
