package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/multiproxy/multiproxy/internal/admin"
	"github.com/multiproxy/multiproxy/internal/config"
)

// pinCmd is `multiproxy pin add|rm|ls`, through the running server's admin
// API: pins live in each upstream's store, so they outlive the process.
func pinCmd(stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pin",
		Short: "Keep images from eviction and GC: add, remove or list pins",
		Long: `A pinned image (a tag, as it points now, or a digest) is never evicted by
max_size, max_unused, the disk watermark or GC, with every manifest and blob of
it that is cached. pin add fetches its manifests (an index and each platform's)
at once; the layers are cached by the first pull, and from then on kept.

REF is an image reference whose registry names the upstream
(docker.io/library/nginx:1.25, or nginx:1.25 for Docker Hub), or, with
--upstream, repo:tag or repo@sha256:... within that upstream. Pins from the
config file (upstreams[].pins) are listed too, and removed only there.`,
	}
	add := &cobra.Command{
		Use:   "add REF",
		Short: "Pin REF; refused if pins would then hold more than max_size",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, upstream, err := pinClient(cmd)
			if err != nil {
				return err
			}
			p, err := c.AddPin(cmd.Context(), upstream, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "pinned %s/%s (%s, %s cached)\n", p.Upstream, p.Ref, orDash(p.Digest), config.ByteSize(p.Bytes))
			return nil
		},
	}
	rm := &cobra.Command{
		Use:   "rm REF",
		Short: "Unpin REF; its content stays cached and becomes evictable",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, upstream, err := pinClient(cmd)
			if err != nil {
				return err
			}
			if err := c.RemovePin(cmd.Context(), upstream, args[0]); err != nil {
				return err
			}
			fmt.Fprintln(stdout, "unpinned", args[0])
			return nil
		},
	}
	var asJSON bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List the pins of every upstream (or --upstream's) and what they hold",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, upstream, err := pinClient(cmd)
			if err != nil {
				return err
			}
			ans, err := c.Pins(cmd.Context(), upstream)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(ans)
			}
			return writePins(stdout, ans)
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print the admin API's JSON answer")
	for _, sub := range []*cobra.Command{add, rm, ls} {
		sub.Flags().String("upstream", "", "the upstream REF is within (default: the one REF's registry names)")
		sub.Flags().String("admin", "", "admin API address (default: the config's admin.listen)")
		cmd.AddCommand(sub)
	}
	return cmd
}

func pinClient(cmd *cobra.Command) (admin.Client, string, error) {
	c, err := adminClient(cmd)
	upstream, _ := cmd.Flags().GetString("upstream")
	return c, upstream, err
}

// writePins prints one line per pin and a total per upstream.
func writePins(w io.Writer, ans admin.PinsAnswer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "UPSTREAM\tREF\tSOURCE\tDIGEST\tCACHED")
	for _, up := range ans.Upstreams {
		for _, p := range up.Pins {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", up.Upstream, p.Ref, p.Source, orDash(p.Digest), config.ByteSize(p.Bytes))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, up := range ans.Upstreams {
		limit := "no max_size"
		if up.MaxSize > 0 {
			limit = "max_size " + config.ByteSize(up.MaxSize).String()
		}
		fmt.Fprintf(w, "%s: %d pins hold %s (%s)\n", up.Upstream, len(up.Pins), config.ByteSize(up.PinnedBytes), limit)
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
