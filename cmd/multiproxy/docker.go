package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/multiproxy/multiproxy/internal/containerd"
	"github.com/multiproxy/multiproxy/internal/containers"
	"github.com/multiproxy/multiproxy/internal/nodefile"
)

// dockerReader names dockerd in the hosts.toml files written for it.
const dockerReader = "dockerd with the containerd image store (Docker Engine 28+)"

// dockerCmd groups the node-side commands for dockerd: daemon.json for
// its classic image store, hosts.toml for its containerd image store.
func dockerCmd(stdout, stderr io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "docker",
		Short: "Write Docker's registry config (daemon.json, /etc/docker/certs.d hosts.toml) for this cache",
		Long: `dockerd reads its registry mirrors from one of two places, depending on its image store:

  classic store (graph drivers; the default up to Docker Engine 28, and kept by
  upgraded installs): daemon.json's registry-mirrors, which applies to Docker Hub
  images only (moby#18818). multiproxy docker daemon-json writes it.

  containerd image store (docker info shows driver-type io.containerd.snapshotter.v1;
  the default of fresh Docker Engine 29 installs): Docker Engine 28 and later read
  /etc/docker/certs.d/<registry>/hosts.toml for every registry, as containerd does.
  multiproxy docker hosts writes them.`,
	}
	cmd.AddCommand(dockerDaemonJSONCmd(stdout, stderr), dockerHostsCmd(stdout, stderr))
	return cmd
}

func dockerDaemonJSONCmd(stdout, stderr io.Writer) *cobra.Command {
	var (
		address, out string
		force        bool
	)
	cmd := &cobra.Command{
		Use:   "daemon-json --address HOST [--out FILE|-]",
		Short: "Print daemon.json's registry-mirrors (Docker Hub only) and insecure-registries, or merge them into FILE",
		Long: `Print the registry keys of Docker's daemon.json for this cache:

  registry-mirrors     the Docker Hub upstream's port, http://HOST:PORT (https:// when
                       it serves TLS). dockerd uses mirrors for Docker Hub images
                       only (moby#18818); other registries are pulled directly
                       unless dockerd uses the containerd image store with the
                       files of multiproxy docker hosts.
  insecure-registries  every port of the cache that serves plain HTTP, so that
                       images can also be pulled as HOST:PORT/repo.

With --out FILE (e.g. ` + containers.DockerDaemonJSON + `) the keys are merged into
FILE: other keys are kept, registry-mirrors is replaced and insecure-registries
extended, and the old file is saved as a .bak copy. A file whose registry-mirrors
names other mirrors is kept unless --force. dockerd re-reads both keys on
systemctl reload docker (SIGHUP).

In one-port mode (listen_all) the Docker Hub upstream needs a listen port of
its own: dockerd's classic store names no registry in its mirror requests.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			if address == "" {
				return usageError("--address is required: the cache's host name or IP as the nodes reach it")
			}
			d, notes, err := containers.Docker(cfg.Upstreams, generatorOptions(cmd, cfg, address))
			if err != nil {
				return usageError("%w", err)
			}
			warnLoopback(stderr, cfg.Upstreams, address)
			for _, n := range notes {
				fmt.Fprintf(stderr, "note: %s\n", n)
			}
			if out == "-" {
				_, err := stdout.Write(d.JSON())
				return err
			}
			res, dropped, err := containers.WriteDaemonJSON(out, d, containers.WriteOptions{Force: force})
			if err != nil {
				return err
			}
			if res.Action == nodefile.Kept {
				fmt.Fprintf(stderr, "kept %s: its registry-mirrors names %s, which would be replaced; --force replaces them (keeping a .bak copy)\n",
					res.Path, strings.Join(dropped, ", "))
				return &exitError{code: 1, err: errors.New("daemon.json kept; rerun with --force to replace its registry-mirrors")}
			}
			if err := printResult(stdout, stderr, res, ""); err != nil {
				return err
			}
			if len(dropped) > 0 {
				fmt.Fprintf(stdout, "registry-mirrors no longer names %s\n", strings.Join(dropped, ", "))
			}
			if res.Action != nodefile.Unchanged {
				fmt.Fprintln(stdout, "apply with: systemctl reload docker (dockerd re-reads registry-mirrors and insecure-registries on SIGHUP)")
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&address, "address", "", "the cache's host name or IP as nodes reach it (required)")
	f.StringVar(&out, "out", "-", `daemon.json to merge the keys into (e.g. `+containers.DockerDaemonJSON+`), or "-" to print them`)
	f.BoolVar(&force, "force", false, "replace registry mirrors FILE already names (a .bak copy is kept)")
	addTLSFlag(cmd)
	return cmd
}

func dockerHostsCmd(stdout, stderr io.Writer) *cobra.Command {
	var (
		address, out, caFile string
		force                bool
	)
	cmd := &cobra.Command{
		Use:   "hosts --address HOST [--out DIR|-] [--ca-file PATH]",
		Short: "Write DIR/<registry>/hosts.toml (default " + containers.DockerCertsDir + ") for dockerd's containerd image store",
		Long: `Write DIR/<registry>/hosts.toml (default ` + containers.DockerCertsDir + `) for every configured
upstream, as multiproxy containerd hosts does for containerd 2.x: dockerd 28 and
later, with the containerd image store, read these files for every registry, not
only Docker Hub, and fall back to the real registry (server) when the cache is
unreachable. dockerd's classic image store ignores them; see docker daemon-json.
dial_timeout is honoured from Docker Engine 28.3 (containerd 2.1 inside) and
ignored before. Writing is idempotent and keeps hand-edited files unless --force
(which saves a .bak copy). dockerd reads the files on every pull.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			if address == "" {
				return usageError("--address is required: the cache's host name or IP as the nodes reach it")
			}
			return writeHostsSet(stdout, stderr, cfg, out, force, containerd.HostsOptions{
				Address: address, Version: containerd.V2, CAFile: caFile, Reader: dockerReader})
		},
	}
	f := cmd.Flags()
	f.StringVar(&address, "address", "", "the cache's host name or IP as nodes reach it (required)")
	f.StringVar(&out, "out", containers.DockerCertsDir, `certs.d directory to write into, or "-" to print the files`)
	f.BoolVar(&force, "force", false, "replace hand-edited files (a .bak copy of each is kept)")
	f.StringVar(&caFile, "ca-file", "", "path on the nodes of the CA that signed the cache's TLS certificate (for a port with tls)")
	return cmd
}
