package upstream

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"
)

// maxResponseHeaderBytes bounds the headers of one upstream answer. A real
// registry's are a few KiB, a presigned Location included; net/http's
// default of 10 MiB would let 40 strangers' answers take 400 MiB.
const maxResponseHeaderBytes = 256 << 10

// newTransport is the one place upstream connections are configured: every
// wait is bounded by timeout, every dial goes through the hop policy, and a
// private CA is added to the system roots. Each upstream has a transport of
// its own; nothing process-wide is touched.
func newTransport(caFile string, timeout time.Duration, hops *HopPolicy) (*http.Transport, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = hops.dialContext(timeout)
	tr.TLSHandshakeTimeout = timeout
	tr.ResponseHeaderTimeout = timeout
	tr.ExpectContinueTimeout = time.Second
	tr.MaxIdleConnsPerHost = 32
	tr.MaxResponseHeaderBytes = maxResponseHeaderBytes
	tr.Proxy = hops.proxyFunc
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read ca_file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s: no PEM certificate found", caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return tr, nil
}

// refusals reports the hops the dialer refused, whichever call dialed
// them: an API request, a redirect hop or a token request.
type refusals struct {
	next    http.RoundTripper
	refused func(host, reason string)
}

func (r refusals) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.next.RoundTrip(req)
	var hr *HopRefused
	if err != nil && errors.As(err, &hr) {
		r.refused(hr.Host, hr.Reason)
	}
	return resp, err
}

// observer reports every upstream round trip, for metrics.
type observer struct {
	next    http.RoundTripper
	observe func(method string, status int, d time.Duration, h http.Header, err error)
}

func (o observer) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := o.next.RoundTrip(req)
	if err != nil {
		o.observe(req.Method, 0, time.Since(start), nil, err)
		return nil, err
	}
	o.observe(req.Method, resp.StatusCode, time.Since(start), resp.Header, nil)
	return resp, nil
}
