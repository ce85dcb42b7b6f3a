package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/multiproxy/multiproxy/internal/gc"
)

func gcCmd(stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Collect garbage and evict by policy now (all upstreams, or one)",
		Long: `Runs a collection now: evicts what max_size and max_unused say, then frees
every blob no cached manifest references. By default it asks the running server
(admin API), which collects online while pulls go on. With --offline it works
directly on the storage roots of a stopped server. --dry-run prints what would
be freed and frees nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			only, _ := cmd.Flags().GetString("upstream")
			dryRun, _ := cmd.Flags().GetBool("dry-run")
			offline, _ := cmd.Flags().GetBool("offline")
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			names := []string{}
			for _, u := range cfg.Upstreams {
				if only == "" || u.Name == only {
					names = append(names, u.Name)
				}
			}
			if len(names) == 0 {
				return &exitError{code: 2, err: fmt.Errorf("--upstream %q: no such upstream in the config", only)}
			}
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			for _, name := range names {
				var res any
				if offline {
					u, _ := cfg.Upstream(name)
					if u.Storage.S3.Enabled() {
						// Other replicas serve from the bucket; only a
						// collection holding the cluster's lease is safe.
						return &exitError{code: 2, err: fmt.Errorf("--offline: upstream %s is stored in bucket %s, shared with running replicas; collect it through a running replica (without --offline)", u.Name, u.Storage.S3.Bucket)}
					}
					res, err = gc.Offline(cmd.Context(), u.Name, u.Storage.Path,
						gc.Policy{MaxSize: int64(u.MaxSize), MaxUnused: u.MaxUnused, Pins: u.Pins}, dryRun)
				} else {
					c, cerr := adminClient(cmd)
					if cerr != nil {
						return cerr
					}
					var raw json.RawMessage
					err = c.GC(cmd.Context(), name, dryRun, &raw)
					res = raw
				}
				if err != nil {
					return fmt.Errorf("gc %s: %w", name, err)
				}
				if err := enc.Encode(res); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().String("upstream", "", "collect only this upstream")
	cmd.Flags().Bool("dry-run", false, "report what would be freed; change nothing")
	cmd.Flags().Bool("offline", false, "work on the storage directly (the server must be stopped)")
	cmd.Flags().String("admin", "", "admin API address (default: the config's admin.listen)")
	return cmd
}
