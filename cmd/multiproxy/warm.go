package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/multiproxy/multiproxy/internal/admin"
	"github.com/multiproxy/multiproxy/internal/imageref"
	"github.com/multiproxy/multiproxy/internal/warm"
	"github.com/multiproxy/multiproxy/internal/warm/progress"
)

func warmCmd(stdout io.Writer) *cobra.Command {
	var lists, manifests, platforms []string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "warm [IMAGE...] [-f LIST]... [--from MANIFESTS]...",
		Short: "Fill the running proxy's cache with images ahead of a rollout",
		Long: `Asks the running server (admin API) to pull images through their upstreams
into the cache, every manifest and blob of them, so that a rollout finds them
there even if the upstream is slow, rate-limited or down by then.

Images come, in any mix, from the arguments, from list files (-f, one
reference a line, # comments) and from Kubernetes manifests (--from: YAML
documents or JSON, as helm template, kustomize build or kubectl get -o json|yaml
print them): every image of containers, initContainers and ephemeralContainers
of pods, workload templates and CronJobs. "-" reads standard input.

Of an index, the platforms given by --platform are warmed; without it, the
server's warm.platforms, else linux/amd64.

On a terminal the images being fetched are shown live, with a total, rate and
ETA; otherwise one line is printed per finished image. A table of every image
ends the output. Exit status: 0 when every image is cached, 1 when any failed
or was skipped, 2 for bad flags, files or manifests. --dry-run prints which
upstream would warm what, and exits 1 if any image would be skipped.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			images, err := gatherImages(cmd.InOrStdin(), args, lists, manifests)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			for _, p := range platforms {
				if err := checkPlatform(p); err != nil {
					return &exitError{code: 2, err: err}
				}
			}
			c, err := adminClient(cmd)
			if err != nil {
				return err
			}
			return runWarm(cmd.Context(), c, stdout, warm.Request{Images: images, Platforms: platforms, DryRun: dryRun})
		},
	}
	cmd.Flags().StringArrayVarP(&lists, "file", "f", nil, "a file of image references, one a line (repeatable; - for stdin)")
	cmd.Flags().StringArrayVar(&manifests, "from", nil, "Kubernetes manifests, YAML or JSON, to take the images of (repeatable; - for stdin)")
	cmd.Flags().StringSliceVar(&platforms, "platform", nil, "os/arch[/variant] to warm of an index (repeatable; default: the server's warm.platforms, else linux/amd64)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print which upstream would warm what; warm nothing")
	cmd.Flags().String("admin", "", "admin API address (default: the config's admin.listen)")
	return cmd
}

// gatherImages reads the references of every source, in the order given:
// arguments, lists, manifests. An image named twice is warmed once.
func gatherImages(stdin io.Reader, args, lists, manifests []string) ([]string, error) {
	var set imageref.Set
	for _, a := range args {
		if err := set.Add(a); err != nil {
			return nil, fmt.Errorf("argument: %w", err)
		}
	}
	stdinUsed := false
	read := func(name string, parse func(string, io.Reader) ([]string, error)) error {
		var r io.Reader
		if name == "-" {
			if stdinUsed {
				return errors.New("standard input (-) can be read only once")
			}
			stdinUsed = true
			r, name = stdin, "standard input"
		} else {
			f, err := os.Open(name)
			if err != nil {
				return err
			}
			defer f.Close()
			r = f
		}
		refs, err := parse(name, r)
		if err != nil {
			return err
		}
		if len(refs) == 0 {
			return fmt.Errorf("%s: no image references in it", name)
		}
		for _, ref := range refs {
			// Already parsed; Add only deduplicates across sources.
			_ = set.Add(ref)
		}
		return nil
	}
	for _, l := range lists {
		if err := read(l, imageref.FromList); err != nil {
			return nil, err
		}
	}
	for _, m := range manifests {
		if err := read(m, imageref.FromManifests); err != nil {
			return nil, err
		}
	}
	if set.Len() == 0 {
		return nil, errors.New("no images to warm: give IMAGE arguments, -f LIST or --from MANIFESTS")
	}
	return set.List(), nil
}

// checkPlatform catches a malformed --platform before the server does,
// so that the mistake is named as the flag's.
func checkPlatform(p string) error {
	parts := strings.Split(p, "/")
	if len(parts) < 2 || len(parts) > 3 || strings.Contains(p, " ") {
		return fmt.Errorf("--platform %q: want os/arch[/variant], e.g. linux/arm64/v8", p)
	}
	for _, part := range parts {
		if part == "" {
			return fmt.Errorf("--platform %q: want os/arch[/variant], e.g. linux/arm64/v8", p)
		}
	}
	return nil
}

func runWarm(ctx context.Context, c admin.Client, stdout io.Writer, req warm.Request) error {
	ctx, cancel := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer cancel()
	opt := progress.Options{DryRun: req.DryRun}
	// A dumb terminal cannot move the cursor up; it gets the plain lines.
	if f, ok := stdout.(*os.File); ok && term.IsTerminal(int(f.Fd())) && os.Getenv("TERM") != "dumb" {
		opt.Live = true
		opt.Color = os.Getenv("NO_COLOR") == ""
		opt.Width = func() int {
			w, _, err := term.GetSize(int(f.Fd()))
			if err != nil {
				return 0
			}
			return w
		}
	}
	d := progress.New(stdout, req.Images, opt)
	stop := func() {}
	if opt.Live && !req.DryRun {
		stop = d.Start()
	}
	events := 0
	err := c.Warm(ctx, req, func(ev warm.Event) {
		events++
		d.Event(ev)
	})
	stop()
	d.Close()
	if err != nil {
		var ae *admin.APIError
		if errors.As(err, &ae) && ae.Status == http.StatusBadRequest {
			return &exitError{code: 2, err: fmt.Errorf("warm: %w", err)}
		}
		if ctx.Err() != nil {
			err = errors.New("interrupted")
		}
		if events > 0 {
			fmt.Fprintln(stdout)
			_ = d.WriteSummary(stdout)
		}
		return &exitError{code: 1, err: fmt.Errorf("warm: %w", err)}
	}
	r := d.Result()
	if req.DryRun {
		if err := d.WritePlan(stdout, req.Platforms); err != nil {
			return err
		}
		if n := r.Images - r.Planned; n > 0 {
			return &exitError{code: 1, err: fmt.Errorf("%d of %d images would not be warmed", n, r.Images)}
		}
		return nil
	}
	fmt.Fprintln(stdout)
	if err := d.WriteSummary(stdout); err != nil {
		return err
	}
	if !r.AllCached() {
		return &exitError{code: 1, err: fmt.Errorf("%d of %d images are not cached", r.Images-r.Cached, r.Images)}
	}
	return nil
}
