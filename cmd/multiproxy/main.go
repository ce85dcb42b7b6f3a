// Command multiproxy is one pull-through cache for several container
// registries: one process, one config file, one port per upstream.
//
// This file is flags and wiring only; the work is in internal/.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/multiproxy/multiproxy/internal/admin"
	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/coord"
	"github.com/multiproxy/multiproxy/internal/gc"
	"github.com/multiproxy/multiproxy/internal/sdnotify"
	"github.com/multiproxy/multiproxy/internal/serve"
	"github.com/multiproxy/multiproxy/internal/storage"
	"github.com/multiproxy/multiproxy/internal/version"
)

// exitError carries a process exit code: 2 for bad configuration or usage.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func main() {
	err := newRoot(os.Stdout, os.Stderr).Execute()
	if err == nil {
		return
	}
	fmt.Fprintln(os.Stderr, "multiproxy:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		os.Exit(ee.code)
	}
	os.Exit(1)
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "multiproxy",
		Short:         "One pull-through cache for several container registries",
		Version:       version.Version(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	// --version and `multiproxy version` print the same line.
	root.SetVersionTemplate("multiproxy {{.Version}}\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &exitError{code: 2, err: err}
	})
	root.PersistentFlags().StringP("config", "c", os.Getenv("MULTIPROXY_CONFIG"),
		"config file (YAML); empty: the built-in default of five upstreams")
	root.AddCommand(serveCmd(stderr), configCmd(stdout), resolveCmd(stdout), purgeCmd(stdout), gcCmd(stdout),
		containerdCmd(stdout, stderr), containersCmd(stdout, stderr), dockerCmd(stdout, stderr),
		healthcheckCmd(stdout), versionCmd(stdout), pinCmd(stdout))
	root.AddCommand(warmCmd(stdout))
	return root
}

func addOverrideFlags(fs *pflag.FlagSet) {
	fs.String("data-dir", "", "storage root (overrides data_dir)")
	fs.String("admin-listen", "", "admin listener address (overrides admin.listen)")
	fs.String("log-level", "", "debug, info, warn or error (overrides log_level)")
}

func versionCmd(stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print multiproxy's version (as --version does)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			fmt.Fprintf(stdout, "multiproxy %s\n", version.Version())
			return nil
		},
	}
}

func loadConfig(cmd *cobra.Command) (config.Config, error) {
	file, _ := cmd.Flags().GetString("config")
	cfg, err := config.Load(config.LoadOptions{File: file, Flags: cmd.Flags()})
	if err != nil {
		// The flag's default comes from MULTIPROXY_CONFIG; a user who
		// never typed --config needs to be told where the file came from.
		what := "load config"
		if f := cmd.Flags().Lookup("config"); file != "" && f != nil && !f.Changed {
			what = "load config from MULTIPROXY_CONFIG"
		}
		return cfg, &exitError{code: 2, err: fmt.Errorf("%s: %w", what, err)}
	}
	return cfg, nil
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
}

func serveCmd(stderr io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve every configured upstream on its own port",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			log := newLogger(stderr, cfg.LogLevel)
			sig, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			// STOPPING=1 must reach systemd before the drain starts (and
			// the process may exit), so Run sees the cancellation only
			// after it was sent.
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() {
				<-sig.Done()
				if err := sdnotify.Stopping(); err != nil {
					log.Warn("sd_notify", "err", err)
				}
				cancel()
			}()
			notify := func(send func() error) func() {
				return func() {
					if err := send(); err != nil {
						log.Warn("sd_notify", "err", err)
					}
				}
			}
			// SIGHUP re-reads the same file, environment and flags.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			reloads := make(chan struct{})
			go func() {
				for range hup {
					select {
					case reloads <- struct{}{}:
					case <-ctx.Done():
						return
					}
				}
			}()
			err = serve.Run(ctx, cfg, log, serve.Hooks{
				Ready:     notify(sdnotify.Ready),
				Reloading: notify(sdnotify.Reloading),
				Reloads:   reloads,
				Load:      func() (config.Config, error) { return loadConfig(cmd) },
			})
			// A config found wrong only against the store (pins over
			// max_size) is bad configuration all the same.
			var ve *config.ValidationError
			if errors.As(err, &ve) {
				return &exitError{code: 2, err: err}
			}
			return err
		},
	}
	addOverrideFlags(cmd.Flags())
	return cmd
}

func configCmd(stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Check or print the effective configuration"}
	var probe bool
	check := &cobra.Command{
		Use:   "check",
		Short: "Validate the configuration; exit 2 naming the field if it is wrong",
		Long: `Validate the configuration; exit 2 naming the field if it is wrong.

--probe also writes, reads back and deletes a small object in every
storage.s3 bucket and a key in coordination.redis, and exits 1 naming the
section that failed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "config ok: %d upstreams\n", len(cfg.Upstreams))
			if probe {
				return probeStores(cmd.Context(), cfg, stdout)
			}
			return nil
		},
	}
	check.Flags().BoolVar(&probe, "probe", false, "also write to each S3 bucket and Redis, to check credentials and reachability")
	print := &cobra.Command{
		Use:   "print",
		Short: "Print the effective configuration, secrets redacted",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			return effective(cfg).WriteYAML(stdout)
		},
	}
	addOverrideFlags(check.Flags())
	addOverrideFlags(print.Flags())
	cmd.AddCommand(check, print)
	return cmd
}

// effective fills in what the server decides at run time rather than
// Load, so that `config print` shows what each upstream really gets: the
// generated weekly GC slot of an upstream without gc.schedule. The server
// (internal/serve) hands gc.NewScheduler the upstreams in config order, and
// it gives the i-th one without a schedule gc.DefaultSchedules(n)[i].
func effective(cfg config.Config) config.Config {
	ups := slices.Clone(cfg.Upstreams)
	slots := gc.DefaultSchedules(len(ups))
	for i := range ups {
		if ups[i].GC.Schedule == "" {
			ups[i].GC.Schedule = slots[i]
		}
	}
	cfg.Upstreams = ups
	return cfg
}

// adminClient finds the running server's admin API: --admin, or the config's admin.listen.
func adminClient(cmd *cobra.Command) (admin.Client, error) {
	addr, _ := cmd.Flags().GetString("admin")
	cfg, err := loadConfig(cmd)
	if err != nil {
		return admin.Client{}, err
	}
	if addr == "" {
		addr = cfg.Admin.Listen
	}
	return admin.Client{Base: admin.BaseURL(addr), Token: cfg.Admin.Token.Reveal()}, nil
}

func purgeCmd(stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "purge IMAGE[:TAG]",
		Short: "Drop a cached tag so the next pull fetches it from the upstream",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := adminClient(cmd)
			if err != nil {
				return err
			}
			if err := c.Purge(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintln(stdout, "purged", strings.TrimSpace(args[0]))
			return nil
		},
	}
	cmd.Flags().String("admin", "", "admin API address (default: the config's admin.listen)")
	return cmd
}

// probeStores checks every bucket and the Redis of a config for real. An
// upstream on the filesystem needs no probe: serve creates its directory.
func probeStores(ctx context.Context, cfg config.Config, stdout io.Writer) error {
	var errs []error
	seen := map[string]bool{}
	for i, u := range cfg.Upstreams {
		if !u.Storage.S3.Enabled() {
			continue
		}
		key := u.Storage.S3.Endpoint + "|" + u.Storage.S3.Bucket + "|" + u.Storage.S3.Root
		if seen[key] {
			continue
		}
		seen[key] = true
		field := fmt.Sprintf("upstreams[%d].storage.s3", i)
		if err := storage.Probe(ctx, u.Storage); err != nil {
			errs = append(errs, fmt.Errorf("%s (bucket %s): %w", field, u.Storage.S3.Bucket, err))
			continue
		}
		fmt.Fprintf(stdout, "%s: bucket %s writable\n", field, u.Storage.S3.Bucket)
	}
	if r := cfg.Coordination.Redis; r.Sentinel.Enabled() {
		master, err := coord.Probe(ctx, coord.Options{Password: r.Password.Reveal(), DB: r.DB,
			SentinelMaster: r.Sentinel.Master, SentinelAddrs: r.Sentinel.Addrs, SentinelPassword: r.Sentinel.Password.Reveal()})
		if err != nil {
			errs = append(errs, fmt.Errorf("coordination.redis.sentinel: %w", err))
		} else {
			fmt.Fprintf(stdout, "coordination.redis.sentinel: master %q at %s answers\n", r.Sentinel.Master, master)
		}
	} else if r.Addr != "" {
		if err := coord.Ping(ctx, r.Addr, r.Password.Reveal(), r.DB); err != nil {
			errs = append(errs, fmt.Errorf("coordination.redis: %w", err))
		} else {
			fmt.Fprintf(stdout, "coordination.redis: %s answers\n", r.Addr)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return &exitError{code: 1, err: fmt.Errorf("probe failed:\n%w", err)}
	}
	return nil
}
