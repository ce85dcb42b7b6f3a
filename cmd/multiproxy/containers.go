package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/containers"
	"github.com/multiproxy/multiproxy/internal/nodefile"
)

// containersCmd groups the node-side commands for containers/image, the
// library CRI-O, Podman, Buildah and skopeo pull with.
func containersCmd(stdout, stderr io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "containers",
		Short: "Write registries.conf for CRI-O, Podman, Buildah and skopeo (containers/image) for this cache",
	}
	cmd.AddCommand(registriesConfCmd(stdout, stderr))
	return cmd
}

// addTLSFlag adds --tls, for a cache reached over HTTPS that multiproxy's
// own config does not show (TLS terminated in front of it).
func addTLSFlag(cmd *cobra.Command) {
	cmd.Flags().Bool("tls", false, "the cache is reached over HTTPS on every port even where the config sets no tls (e.g. a TLS-terminating proxy in front)")
}

// generatorOptions are the options every node-side generator shares: the
// cache's address, the one-port endpoint in listen_all mode, and whether
// that one port, or every port (--tls), serves HTTPS. In per-port mode each
// upstream's own tls (the top-level one, unless it sets its own) decides
// for its port.
func generatorOptions(cmd *cobra.Command, cfg config.Config, address string) containers.Options {
	forced, _ := cmd.Flags().GetBool("tls")
	endpoint := onePortEndpoint(cfg, address)
	return containers.Options{
		Address:  address,
		Endpoint: endpoint,
		TLS:      forced || (endpoint != "" && cfg.TLS.Enabled()),
	}
}

func registriesConfCmd(stdout, stderr io.Writer) *cobra.Command {
	var (
		address, out, pull string
		force              bool
	)
	cmd := &cobra.Command{
		Use:   "registries-conf --address HOST [--out FILE|-]",
		Short: "Write a registries.conf.d drop-in sending every upstream's pulls through this cache",
		Long: `Write a containers-registries.conf(5) v2 drop-in (default ` + containers.DefaultDropIn + `)
with one [[registry]] per configured upstream (and per alias): prefix is the
upstream's name as image references spell it, location the registry its remote
names (Docker Hub as docker.io), and the cache its one mirror, at HOST:<the
upstream's listen port>, or in one-port mode (listen_all) at HOST:PORT/<name>,
the path prefix the one port routes by. When the cache cannot be reached,
clients pull from location. A cache port serving plain HTTP is written with
insecure = true; one serving HTTPS (tls in the config, or --tls) without it,
and its CA, if private, goes in ` + containers.CertsDir + `/HOST:PORT/ca.crt.

--pull-from-mirror all|digest-only|tag-only is written on every mirror when
given (containers/image 5.21+). A file that already has this content is left
alone; one that multiproxy did not write, or that was edited since, is kept
unless --force (which saves a .bak copy). Podman, Buildah and skopeo read the
file on every run; CRI-O on start and on systemctl reload crio.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			if address == "" {
				return usageError("--address is required: the cache's host name or IP as the nodes reach it")
			}
			opts := generatorOptions(cmd, cfg, address)
			if opts.PullFromMirror, err = containers.ParsePullFromMirror(pull); err != nil {
				return usageError("--pull-from-mirror: %w", err)
			}
			content, err := containers.Generate(cfg.Upstreams, opts)
			if err != nil {
				return usageError("%w", err)
			}
			warnLoopback(stderr, cfg.Upstreams, address)
			printCANotes(stderr, cfg.Upstreams, opts)
			if out == "-" {
				_, err := stdout.Write(content)
				return err
			}
			res, err := containers.WriteFile(out, content, containers.WriteOptions{Force: force})
			if err != nil {
				return err
			}
			return printResult(stdout, stderr, res, "--force replaces it (keeping a .bak copy)")
		},
	}
	f := cmd.Flags()
	f.StringVar(&address, "address", "", "the cache's host name or IP as nodes reach it (required)")
	f.StringVar(&out, "out", containers.DefaultDropIn, `file to write, or "-" to print it`)
	f.StringVar(&pull, "pull-from-mirror", "", "write pull-from-mirror on every mirror: all, digest-only or tag-only (default: not written, which means all)")
	f.BoolVar(&force, "force", false, "replace a hand-edited file (a .bak copy is kept)")
	addTLSFlag(cmd)
	return cmd
}

// printCANotes says where the CA of each HTTPS port of the cache goes:
// registries.conf has no CA setting, containers/image takes a registry's
// CA from its certs.d directory only.
func printCANotes(stderr io.Writer, ups []config.Upstream, opts containers.Options) {
	eps, err := containers.Endpoints(ups, opts)
	if err != nil {
		return
	}
	seen := map[string]bool{}
	for _, ep := range eps {
		if ep.TLS && !seen[ep.Host] {
			seen[ep.Host] = true
			fmt.Fprintf(stderr, "note: %s serves HTTPS; if its certificate is from a private CA, install the CA as %s\n", ep.Host, containers.CAPath(ep.Host))
		}
	}
}

// printResult reports one written file; a kept hand-edited file is an
// error (exit 1), so scripts notice.
func printResult(stdout, stderr io.Writer, r containers.Result, howToReplace string) error {
	switch r.Action {
	case nodefile.Kept:
		fmt.Fprintf(stderr, "kept %s: it was not written by multiproxy or was edited since; %s\n", r.Path, howToReplace)
		return &exitError{code: 1, err: fmt.Errorf("hand-edited %s kept; rerun with --force to replace it", r.Path)}
	case nodefile.Replaced:
		fmt.Fprintf(stdout, "replaced %s (the old file is saved as %s)\n", r.Path, r.Backup)
	default:
		if r.Backup != "" {
			fmt.Fprintf(stdout, "%s %s (the old file is saved as %s)\n", r.Action, r.Path, r.Backup)
		} else {
			fmt.Fprintf(stdout, "%s %s\n", r.Action, r.Path)
		}
	}
	return nil
}
