package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/multiproxy/multiproxy/internal/admin"
)

// healthcheckTimeout bounds the whole probe. Docker's own HEALTHCHECK
// timeout defaults to 30s; answering well inside it means a hung server is
// reported as unhealthy by us, with a message, rather than killed by Docker.
const healthcheckTimeout = 3 * time.Second

// healthcheckCmd probes the running server's admin /healthz. It exists so
// the container image needs no curl for its HEALTHCHECK.
//
// Every failure exits 1, including a broken config: Docker reads 1 as
// unhealthy and reserves 2, which loadConfig would otherwise return.
func healthcheckCmd(stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "healthcheck",
		Short: "Exit 0 if the running server's admin /healthz answers 200 within 3s, else 1",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			addr, _ := cmd.Flags().GetString("admin")
			if addr == "" {
				cfg, err := loadConfig(cmd)
				if err != nil {
					return &exitError{code: 1, err: fmt.Errorf("healthcheck: %w", err)}
				}
				addr = cfg.Admin.Listen
			}
			url := admin.BaseURL(dialableAddr(addr)) + "/healthz"
			if err := probe(cmd.Context(), url); err != nil {
				return &exitError{code: 1, err: fmt.Errorf("healthcheck: %w", err)}
			}
			fmt.Fprintf(stdout, "healthy: %s answered 200\n", url)
			return nil
		},
	}
	cmd.Flags().String("admin", "", "admin listener address or URL (default: the config's admin.listen)")
	return cmd
}

func probe(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, healthcheckTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	// No proxy: a container's HTTP_PROXY must not reroute a probe that is
	// meant for this very process.
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("GET %s: no answer within %s", url, healthcheckTimeout)
		}
		return fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s, want 200", url, resp.Status)
	}
	return nil
}

// dialableAddr turns a wildcard listen address (0.0.0.0:9090, [::]:9090)
// into the loopback address of the same family: the probe runs next to the
// server, and a wildcard is something to bind, not to connect to.
func dialableAddr(addr string) string {
	if strings.Contains(addr, "://") {
		return addr
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	ip := net.ParseIP(host)
	switch {
	case host == "" || (ip != nil && ip.Equal(net.IPv4zero)):
		return net.JoinHostPort("127.0.0.1", port)
	case ip != nil && ip.Equal(net.IPv6unspecified):
		return net.JoinHostPort("::1", port)
	}
	return addr
}
