package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

func resolveCmd(stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "resolve IMAGE",
		Short: "Print IMAGE@sha256:... as the running proxy resolves it now (a digest pin)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := adminClient(cmd)
			if err != nil {
				return err
			}
			res, err := c.Resolve(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintln(stdout, res.Pinned)
			if res.Stale {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning: the upstream could not be reached; this is the cached digest")
			}
			return nil
		},
	}
	cmd.Flags().String("admin", "", "admin API address (default: the config's admin.listen)")
	return cmd
}
