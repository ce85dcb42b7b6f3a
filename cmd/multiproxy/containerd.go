package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/containerd"
	"github.com/multiproxy/multiproxy/internal/nodefile"
)

// containerdCmd groups the node-side commands: they derive containerd's
// registry config from the same multiproxy config the server reads.
func containerdCmd(stdout, stderr io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "containerd",
		Short: "Write and check containerd's registry config (hosts.toml, config.toml) for this cache",
	}
	cmd.AddCommand(containerdHostsCmd(stdout, stderr), containerdCheckCmd(stdout, stderr))
	return cmd
}

func usageError(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

func parseContainerdVersion(cmd *cobra.Command) (containerd.Version, error) {
	s, _ := cmd.Flags().GetString("containerd-version")
	if s == "" {
		return "", nil
	}
	v, err := containerd.ParseVersion(s)
	if err != nil {
		return "", usageError("--containerd-version: %w", err)
	}
	return v, nil
}

func containerdHostsCmd(stdout, stderr io.Writer) *cobra.Command {
	var (
		address, out, caFile string
		force                bool
	)
	cmd := &cobra.Command{
		Use:   "hosts --address HOST [--out DIR|-] [--ca-file PATH]",
		Short: "Write DIR/<registry>/hosts.toml for every upstream, pointing containerd at this cache",
		Long: `Write DIR/<registry>/hosts.toml for every configured upstream. Each file sends
pulls to http://HOST:<the upstream's listen port> and keeps the real registry as
server, so containerd pulls directly whenever the cache is down. A listener with
tls configured gets an https:// mirror; --ca-file names where the nodes keep the
CA that signed the cache's certificate (written as the mirror's ca), needed
unless the nodes' system roots trust it.

Files that already have this content are left alone. A file that multiproxy did
not write, or that was edited since, is kept unless --force (which saves a .bak
copy). Other registries' directories are never touched. containerd reads
hosts.toml on every pull: no restart is needed.

--containerd-version decides whether dial_timeout is written: containerd 1.6 and
1.7 do not know it (it arrived in 2.1, and 2.0.x by backport), so their files
leave it out and a cache host that stops answering costs containerd's built-in
30 s dial timeout per request; a cache whose port is closed falls back at once.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			version, err := parseContainerdVersion(cmd)
			if err != nil {
				return err
			}
			if address == "" {
				return usageError("--address is required: the cache's host name or IP as the nodes reach it")
			}
			return writeHostsSet(stdout, stderr, cfg, out, force, containerd.HostsOptions{
				Address: address, Version: version, CAFile: caFile})
		},
	}
	f := cmd.Flags()
	f.StringVar(&address, "address", "", "the cache's host name or IP as nodes reach it (required)")
	f.StringVar(&out, "out", containerd.DefaultCertsDir, `certs.d directory to write into, or "-" to print the files`)
	f.String("containerd-version", string(containerd.DefaultVersion), "containerd release the files are for: 1.6, 1.7 or 2.x")
	f.BoolVar(&force, "force", false, "replace hand-edited files (a .bak copy of each is kept)")
	f.StringVar(&caFile, "ca-file", "", "path on the nodes of the CA that signed the cache's TLS certificate")
	return cmd
}

// writeHostsSet generates the hosts.toml set of cfg's upstreams with opts,
// pointing at the one port when cfg has one, and writes it under out (or
// prints it for "-"). Both containerd hosts and docker hosts end here.
func writeHostsSet(stdout, stderr io.Writer, cfg config.Config, out string, force bool, opts containerd.HostsOptions) error {
	opts.Endpoint = onePortEndpoint(cfg, opts.Address)
	opts.EndpointTLS = cfg.TLS.Enabled()
	files, err := containerd.GenerateHosts(cfg.Upstreams, opts)
	if err != nil {
		return usageError("%w", err)
	}
	warnLoopback(stderr, cfg.Upstreams, opts.Address)
	if out == "-" {
		return containerd.WriteHostsListing(stdout, "", files)
	}
	results, err := containerd.WriteHosts(out, files, containerd.WriteOptions{Force: force})
	printWriteResults(stdout, stderr, results)
	if err != nil {
		return err
	}
	return keptError(results)
}

func warnLoopback(stderr io.Writer, ups []config.Upstream, address string) {
	for _, name := range containerd.LoopbackOnly(ups, address) {
		fmt.Fprintf(stderr, "warning: upstream %s listens on loopback only; nodes cannot reach it at %s\n", name, address)
	}
}

func printWriteResults(stdout, stderr io.Writer, results []containerd.WriteResult) {
	for _, r := range results {
		switch r.Action {
		case nodefile.Kept:
			fmt.Fprintf(stderr, "kept %s: it was not written by multiproxy or was edited since; --force replaces it (keeping a .bak copy)\n", r.Path)
		case nodefile.Replaced:
			fmt.Fprintf(stdout, "replaced %s (the hand-edited file is saved as %s)\n", r.Path, r.Backup)
		default:
			fmt.Fprintf(stdout, "%s %s\n", r.Action, r.Path)
		}
		if r.Shadowed != "" {
			fmt.Fprintf(stderr, "warning: containerd reads %s instead of %s; delete the one that is stale\n", r.Shadowed, r.Path)
		}
	}
}

func keptError(results []containerd.WriteResult) error {
	n := 0
	for _, r := range results {
		if r.Action == nodefile.Kept {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	return &exitError{code: 1, err: fmt.Errorf("%d hand-edited hosts.toml kept; rerun with --force to replace", n)}
}

func containerdCheckCmd(stdout, stderr io.Writer) *cobra.Command {
	var (
		address                   string
		probe, fix, write, forced bool
	)
	cmd := &cobra.Command{
		Use:   "check [PATH]",
		Short: "Check containerd's config.toml (default " + containerd.DefaultConfigFile + ") and the certs.d it points to",
		Long: `Check containerd's config.toml and the hosts.toml files its config_path leads
to, and report each finding with its severity, line and fix. Exits 1 when there
is an error, such as registry.mirrors together with config_path, which makes
containerd refuse to load its CRI plugin.

--probe also asks every hosts.toml mirror for GET /v2/ (2 s timeout).
--fix prints a migrated config.toml (mirrors removed, config_path set, all else
kept as is) and the hosts.toml files it needs, from the multiproxy config and
--address. --write writes them, keeping a timestamped backup of config.toml;
restart containerd afterwards for config.toml changes to apply.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := containerd.DefaultConfigFile
			if len(args) == 1 {
				path = args[0]
			}
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			version, err := parseContainerdVersion(cmd)
			if err != nil {
				return err
			}
			fix = fix || write
			if fix && address == "" && len(cfg.Upstreams) > 0 {
				return usageError("--fix needs --address: the cache's host name or IP as the nodes reach it")
			}
			opts := containerd.CheckOptions{Upstreams: cfg.Upstreams, Version: version, Probe: probe}
			report, err := containerd.Check(cmd.Context(), path, opts)
			if err != nil {
				return err
			}
			if err := report.WriteText(stdout); err != nil {
				return err
			}
			if !fix {
				return errorsFound(report)
			}

			data, err := os.ReadFile(path)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("read containerd config: %w", err)
			}
			res, err := containerd.Fix(data, containerd.FixOptions{
				Upstreams: cfg.Upstreams,
				Hosts:     containerd.HostsOptions{Address: address, Version: version, Endpoint: onePortEndpoint(cfg, address)},
			})
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			warnLoopback(stderr, cfg.Upstreams, address)
			if !write {
				printFix(stdout, path, res)
				return errorsFound(report)
			}
			return writeFix(cmd, stdout, stderr, path, res, opts, forced)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&probe, "probe", false, "ask each hosts.toml mirror for GET /v2/ and report those that do not answer")
	f.BoolVar(&fix, "fix", false, "print a migrated config.toml and the hosts.toml set")
	f.BoolVar(&write, "write", false, "write what --fix prints (implies --fix; config.toml is backed up first)")
	f.BoolVar(&forced, "force", false, "with --write, replace hand-edited hosts.toml files (keeping a .bak copy)")
	f.StringVar(&address, "address", "", "the cache's host name or IP as nodes reach it (for --fix)")
	f.String("containerd-version", "", "containerd release on the node (1.6, 1.7 or 2.x); default: unknown, and for --fix inferred from the config version")
	return cmd
}

func errorsFound(r *containerd.Report) error {
	if n := r.Count(containerd.Error); n > 0 {
		return &exitError{code: 1, err: fmt.Errorf("%d error(s) in the containerd config", n)}
	}
	return nil
}

func printFix(w io.Writer, path string, res *containerd.FixResult) {
	fmt.Fprintln(w)
	for _, n := range res.Notes {
		fmt.Fprintf(w, "# note: %s\n", n)
	}
	if res.Changed {
		_ = containerd.WriteFileHeader(w, path+" (migrated)")
		_, _ = w.Write(res.Config)
	} else {
		fmt.Fprintf(w, "# %s needs no change\n", path)
	}
	fmt.Fprintln(w)
	_ = containerd.WriteHostsListing(w, res.CertsDir, res.Hosts)
}

// writeFix writes the hosts files before config.toml, so that a
// config_path never names a directory that is not there yet, then checks
// the result again.
func writeFix(cmd *cobra.Command, stdout, stderr io.Writer, path string, res *containerd.FixResult,
	opts containerd.CheckOptions, force bool,
) error {
	for _, n := range res.Notes {
		fmt.Fprintf(stdout, "note: %s\n", n)
	}
	results, err := containerd.WriteHosts(res.CertsDir, res.Hosts, containerd.WriteOptions{Force: force})
	printWriteResults(stdout, stderr, results)
	if err != nil {
		return err
	}
	if res.Changed {
		backup, err := containerd.WriteConfig(path, res.Config, time.Now())
		if err != nil {
			return err
		}
		if backup != "" {
			fmt.Fprintf(stdout, "wrote %s (the old file is saved as %s)\n", path, backup)
		} else {
			fmt.Fprintf(stdout, "wrote %s\n", path)
		}
		fmt.Fprintln(stdout, "restart containerd for config.toml changes to apply (systemctl restart containerd)")
	}
	after, err := containerd.Check(cmd.Context(), path, opts)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, "\nafter the fix:")
	if err := after.WriteText(stdout); err != nil {
		return err
	}
	if err := errorsFound(after); err != nil {
		return err
	}
	return keptError(results)
}

// onePortEndpoint is the single mirror every hosts.toml names in one-port
// mode (listen_all), or "" in the default per-port mode. containerd's ?ns=
// tells the one port which upstream a request is for.
func onePortEndpoint(cfg config.Config, address string) string {
	if cfg.ListenAll == "" || address == "" {
		return ""
	}
	_, port, err := net.SplitHostPort(cfg.ListenAll)
	if err != nil {
		return ""
	}
	return net.JoinHostPort(address, port)
}
