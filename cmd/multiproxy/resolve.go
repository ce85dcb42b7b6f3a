package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/multiproxy/multiproxy/internal/admin"
	"github.com/multiproxy/multiproxy/internal/rewrite"
)

func resolveCmd(stdout io.Writer) *cobra.Command {
	var write, check bool
	cmd := &cobra.Command{
		Use:   "resolve IMAGE | -w FILE... | --check FILE...",
		Short: "Print IMAGE@sha256:... as the running proxy resolves it now (a digest pin), or pin the images of files",
		Long: `Print IMAGE@sha256:... as the running proxy resolves it now (a digest pin).

With -w, the arguments are files: Kubernetes manifests (one or many
documents), Compose files, Helm values and Terraform HCL (.tf, .tfvars,
.hcl). Every image reference in them is resolved through the proxy and
rewritten in place to name:tag@sha256:..., a reference that has a digest
already to its tag's current one. A Helm image mapping (repository, tag)
is pinned in its digest key if it has one, else after its tag
(tag: 1.25@sha256:...). Nothing else in the files changes:
comments, order, quoting and indentation stay as they were. Each change
is printed as FILE:LINE.

With --check, the files are only read: every reference without a digest,
and every one whose digest is no longer what its tag resolves to
(drift), is listed as FILE:LINE, and the exit status is 1 if there is
any. Run in CI, it says when a pin has gone stale.

A reference whose registry no upstream serves is reported, left as it
is, and makes the exit status 1. A reference the files spell so that it
cannot be rewritten in place (a template, an escaped or block string) is
reported as skipped.`,
		Args: func(_ *cobra.Command, args []string) error {
			switch {
			case write && check:
				return &exitError{code: 2, err: errors.New("resolve: -w pins files and --check only reads them: give one of them")}
			case (write || check) && len(args) == 0:
				return &exitError{code: 2, err: errors.New("resolve: -w and --check take the files to pin or check")}
			case !write && !check && len(args) != 1:
				return &exitError{code: 2, err: fmt.Errorf("resolve takes one IMAGE, got %d arguments (files need -w or --check)", len(args))}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := adminClient(cmd)
			if err != nil {
				return err
			}
			if write || check {
				f := &fileResolver{client: c, out: stdout, errw: cmd.ErrOrStderr(), write: write, memo: map[string]resolved{}}
				return f.run(cmd.Context(), args)
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
	cmd.Flags().BoolVarP(&write, "write", "w", false, "the arguments are files: pin every image reference in them in place")
	cmd.Flags().BoolVar(&check, "check", false, "the arguments are files: list every image reference that is unpinned or stale, exit 1 if any")
	return cmd
}

// fileResolver pins (-w) or checks (--check) the image references of files.
type fileResolver struct {
	client    admin.Client
	out, errw io.Writer
	write     bool
	// memo: a tag is resolved once per run, so a file that names an image
	// ten times is pinned to one digest, and the proxy is asked once.
	memo map[string]resolved

	refs, findings, unresolved, failedFiles, changedFiles int
}

type resolved struct {
	res admin.Resolution
	err error
}

func (f *fileResolver) run(ctx context.Context, files []string) error {
	for _, path := range files {
		if err := f.file(ctx, path); err != nil {
			f.failedFiles++
			fmt.Fprintf(f.errw, "%v\n", err)
		}
	}
	var problems []string
	if f.unresolved > 0 {
		problems = append(problems, fmt.Sprintf("%d could not be resolved", f.unresolved))
	}
	if f.failedFiles > 0 {
		problems = append(problems, fmt.Sprintf("%d files could not be read, parsed or written", f.failedFiles))
	}
	if f.write {
		fmt.Fprintf(f.out, "%d image references, %d pinned anew, in %d of %d files\n", f.refs, f.findings, f.changedFiles, len(files))
	} else {
		if f.findings > 0 {
			problems = append([]string{fmt.Sprintf("%d unpinned or stale", f.findings)}, problems...)
		} else if len(problems) == 0 {
			fmt.Fprintf(f.out, "%d image references, all pinned to their tag's current digest\n", f.refs)
		}
	}
	if len(problems) > 0 {
		msg := fmt.Sprintf("of %d image references: %s", f.refs, problems[0])
		for _, p := range problems[1:] {
			msg += "; " + p
		}
		return &exitError{code: 1, err: errors.New(msg)}
	}
	return nil
}

func (f *fileResolver) file(ctx context.Context, path string) error {
	src, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	refs, err := rewrite.Find(path, src)
	if err != nil {
		return err
	}
	var pins []rewrite.Pin
	var changes []string // printed once the file is written
	for _, ref := range refs {
		where := fmt.Sprintf("%s:%d", path, ref.Line)
		if ref.Problem != "" {
			fmt.Fprintf(f.errw, "%s: skipped %s: %s\n", where, ref.Image, ref.Problem)
			continue
		}
		f.refs++
		if !ref.Pinnable() {
			continue // by digest alone: no tag that could have moved
		}
		r := f.resolve(ctx, ref.Tag())
		if r.err != nil {
			f.unresolved++
			fmt.Fprintf(f.out, "%s: %s: cannot resolve, left as it is: %v\n", where, ref.Image, r.err)
			continue
		}
		if r.res.Stale {
			fmt.Fprintf(f.errw, "%s: warning: the upstream of %s could not be reached; its cached digest is used\n", where, ref.Tag())
		}
		if ref.Digest() == r.res.Digest {
			continue
		}
		switch {
		case f.write:
			pins = append(pins, rewrite.Pin{Ref: ref, Digest: r.res.Digest})
			changes = append(changes, fmt.Sprintf("%s: %s -> %s\n", where, ref.Image, ref.Pinned(r.res.Digest)))
			continue
		case ref.Digest() == "":
			fmt.Fprintf(f.out, "%s: %s: no digest (the tag is %s)\n", where, ref.Image, r.res.Digest)
		default:
			fmt.Fprintf(f.out, "%s: %s: drift: pinned %s, the tag is now %s\n", where, ref.Tag(), ref.Digest(), r.res.Digest)
		}
		f.findings++
	}
	if len(pins) == 0 {
		return nil
	}
	out, err := rewrite.Apply(path, src, pins)
	if err != nil {
		return err
	}
	if err := rewrite.WriteFile(path, out); err != nil {
		return err
	}
	for _, c := range changes {
		io.WriteString(f.out, c)
	}
	f.findings += len(pins)
	f.changedFiles++
	return nil
}

func (f *fileResolver) resolve(ctx context.Context, tag string) resolved {
	if r, ok := f.memo[tag]; ok {
		return r
	}
	res, err := f.client.Resolve(ctx, tag)
	r := resolved{res: res, err: err}
	f.memo[tag] = r
	return r
}
