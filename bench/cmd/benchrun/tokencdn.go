package main

// The token + CDN upstream: the reference `registry` binary as docker.io
// behaves, bearer tokens per repository from a separate token service and
// blob GETs answered 307 to a CDN on another host with a presigned URL that
// refuses Authorization. The registry does the real work (distribution's
// token access controller verifying our JWTs, its redirect storage
// middleware); the harness adds the token service, the CDN (serving the
// registry's storage directory) and, in the counting front, the URL
// signature that a real object store's presigning would add.
//
// The token service and the CDN are internal/testinfra's, the same the
// tests use (through internal/testsupport), served on ports of their own.
// Realms and CDN URLs name "localhost", not 127.0.0.1, for the reason given
// there: clients treat another hostname as another party (net/http drops
// Authorization on a redirect that leaves the hostname).
//
// The reference proxy gets a front of its own, refFront, whose challenges
// name a realm on the front's own address (/token, served by the same token
// service). distribution v3.1.2's proxy follows a bearer realm only on the
// remote's host:port or on the remote's registrable domain (realmAllowed in
// registry/proxy/proxyauth.go): auth.docker.io passes for
// registry-1.docker.io, but on loopback no two hosts share a registrable
// domain, and given localhost:PORT it sends no token at all and answers
// every pull 404 "unknown tag". refFront gives it what docker.io gives it: a
// realm its policy accepts. Everything else is the same upstream.

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/multiproxy/multiproxy/internal/testinfra"
)

// tokenCDN is the started token + CDN upstream.
type tokenCDN struct {
	reg      *proc
	regHost  string // 127.0.0.1:port of the registry itself (pushes go there)
	front    *front // counting front that signs CDN redirects; multiproxy and direct use front.url
	refFront *front // the same, with the realm on its own address; the reference uses it
	tokens   *testinfra.TokenIssuer
	cdn      *testinfra.CDN
}

func (t *tokenCDN) quiesce() {
	_ = t.front.quiesce(30 * time.Second)
	_ = t.refFront.quiesce(30 * time.Second)
	cdnQuiesce(t.cdn, 30*time.Second)
}

func (t *tokenCDN) close() {
	t.front.close()
	t.refFront.close()
	_ = t.tokens.Stop()
	_ = t.cdn.Stop()
}

// tokenCDNConfig is a plain registry with `auth: token` and the redirect
// storage middleware pointing at the CDN.
func tokenCDNConfig(root string, port int, tokens *testinfra.TokenIssuer, cdnBase string) string {
	return upstreamConfig(root, port) + fmt.Sprintf(`auth:
  token:
    realm: %s
    service: %s
    issuer: %s
    rootcertbundle: %s
middleware:
  storage:
    - name: redirect
      options:
        baseurl: %s/
`, tokens.URL(), tokens.Service(), tokens.Issuer(), tokens.RootFile(), cdnBase)
}

// startTokenServices starts the token service and the CDN over storage.
func startTokenServices(dir, storage string) (*testinfra.TokenIssuer, *testinfra.CDN, error) {
	tokens, err := testinfra.NewTokenIssuer(testinfra.TokenOptions{Dir: dir})
	if err != nil {
		return nil, nil, err
	}
	if err := tokens.Start(); err != nil {
		return nil, nil, fmt.Errorf("token service: %w", err)
	}
	cdn, err := testinfra.NewCDN(testinfra.CDNOptions{Root: storage})
	if err == nil {
		err = cdn.Start()
	}
	if err != nil {
		_ = tokens.Stop()
		return nil, nil, fmt.Errorf("CDN: %w", err)
	}
	return tokens, cdn, nil
}

func startTokenCDN(dir, regBin string) (*tokenCDN, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	storage := filepath.Join(dir, "storage")
	tokens, cdn, err := startTokenServices(dir, storage)
	if err != nil {
		return nil, err
	}
	stopServices := func() {
		_ = tokens.Stop()
		_ = cdn.Stop()
	}
	port, err := freePort()
	if err != nil {
		stopServices()
		return nil, err
	}
	reg, base, err := startRegistryWant("upstream-tokencdn", dir, regBin,
		tokenCDNConfig(storage, port, tokens, cdn.URL()), port, http.StatusUnauthorized)
	if err != nil {
		stopServices()
		return nil, err
	}
	sign := func(resp *http.Response) {
		if loc := resp.Header.Get("Location"); loc != "" && resp.StatusCode/100 == 3 {
			resp.Header.Set("Location", cdn.Sign(loc))
		}
	}
	fr, err := startFront(base, sign, nil)
	if err != nil {
		reg.stop()
		stopServices()
		return nil, err
	}
	refFr, err := startFront(base, func(resp *http.Response) {
		sign(resp)
		if c := resp.Header.Get("WWW-Authenticate"); c != "" {
			// The front keeps the client's Host: it is the front's address.
			resp.Header.Set("WWW-Authenticate", strings.Replace(c, `realm="`+tokens.URL()+`"`,
				`realm="http://`+resp.Request.Host+`/token"`, 1))
		}
	}, tokens.Handler())
	if err != nil {
		fr.close()
		reg.stop()
		stopServices()
		return nil, err
	}
	return &tokenCDN{reg: reg, regHost: strings.TrimPrefix(base, "http://"), front: fr, refFront: refFr, tokens: tokens, cdn: cdn}, nil
}

// pusher pushes straight to the registry with the token service's account
// that may push.
func (t *tokenCDN) pusher() *pusher {
	ps := newPusher(t.regHost)
	user, pass := t.tokens.Credentials()
	ps.auth = &authn.Basic{Username: user, Password: pass}
	return ps
}

// cdnCounts is what the CDN had answered at one moment.
type cdnCounts struct {
	gets          map[string]int64 // blob digest -> GETs received
	auth, refused int64            // requests carrying Authorization; answered 4xx
}

func countCDN(c *testinfra.CDN) cdnCounts {
	n := cdnCounts{gets: map[string]int64{}}
	for _, r := range c.Requests() {
		if r.Method == http.MethodGet {
			n.gets[r.Digest]++
		}
		if r.Authorization {
			n.auth++
		}
		if r.Status/100 == 4 {
			n.refused++
		}
	}
	return n
}

// cdnQuiesce waits (bounded) until the CDN has answered every request it
// received: a fill that outlives its client still counts.
func cdnQuiesce(c *testinfra.CDN, max time.Duration) {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		if !slices.ContainsFunc(c.Requests(), func(r testinfra.CDNRequest) bool { return r.Status == 0 }) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cdnSide is what one system did at the token + CDN upstream over the
// repetitions of the cold pull.
type cdnSide struct {
	Reps   int      `json:"reps"`
	Failed int      `json:"failed_pulls"`
	Errors []string `json:"errors,omitempty"`
	// MinGets and MaxGets are the CDN GETs of one blob of the image (config
	// and layers) in one pull, over every blob and repetition; Exact counts
	// the repetitions in which every blob was GET from the CDN exactly once.
	MinGets int64 `json:"min_cdn_gets_per_blob"`
	MaxGets int64 `json:"max_cdn_gets_per_blob"`
	Exact   int   `json:"reps_every_blob_once"`
	// Auth is the CDN requests that carried Authorization, Refused those
	// the CDN answered 4xx, Tokens the token requests; all summed over reps.
	Auth    int64 `json:"cdn_requests_with_authorization"`
	Refused int64 `json:"cdn_requests_refused"`
	Tokens  int64 `json:"token_requests"`
}

func (s *cdnSide) fail(err string) {
	s.Failed++
	if !slices.Contains(s.Errors, err) && len(s.Errors) < 3 {
		s.Errors = append(s.Errors, err)
	}
}

// ok: every pull served, every blob fetched once from the CDN, no token
// leaked there.
func (s *cdnSide) ok() bool {
	return s.Reps > 0 && s.Failed == 0 && s.Exact == s.Reps && s.Auth == 0
}

func (s *cdnSide) String() string {
	st := "OK"
	if !s.ok() {
		st = "NOT OK"
	}
	return fmt.Sprintf("%s (%d/%d pulls served, every blob once via CDN in %d/%d, %s GETs/blob, %d with Authorization, %d refused, %d token requests)",
		st, s.Reps-s.Failed, s.Reps, s.Exact, s.Reps, s.getsText(), s.Auth, s.Refused, s.Tokens)
}

func (s *cdnSide) getsText() string {
	switch {
	case s.MinGets < 0:
		return "n/a"
	case s.MinGets == s.MaxGets:
		return strconv.FormatInt(s.MinGets, 10)
	default:
		return fmt.Sprintf("%d-%d", s.MinGets, s.MaxGets)
	}
}

// timeText is the time cell when some pulls failed.
func (s *cdnSide) timeText(med *float64) string {
	switch {
	case s.Failed == 0:
		return ""
	case s.Failed >= s.Reps:
		return "FAIL"
	default:
		return fmt.Sprintf("%s (%d/%d FAIL)", fmtVal(med), s.Failed, s.Reps)
	}
}

// setupTokenCDN starts the token + CDN upstream and pushes one fresh
// 3-layer image per repetition. A failure is a note: the row says why.
func (b *bench) setupTokenCDN() {
	t0 := time.Now()
	tc, err := startTokenCDN(filepath.Join(b.work, "upstream-tokencdn"), b.o.regBin)
	if err != nil {
		b.tcErr = "token + CDN upstream did not start: " + err.Error()
		b.note("%s", b.tcErr)
		return
	}
	b.tc = tc
	logf("token + CDN upstream: registry %s, token service %s, CDN %s, counting fronts %s, %s (reference)",
		tc.regHost, tc.tokens.URL(), tc.cdn.URL(), tc.front.url, tc.refFront.url)
	ps := tc.pusher()
	for i := range b.p.reps {
		img, err := ps.push(fmt.Sprintf("bench/coldcdn-%d", i), "v1", []int64{b.p.layer, b.p.layer, b.p.layer}, nil)
		if err != nil {
			b.tcErr = "push to the token + CDN upstream: " + err.Error()
			b.note("%s", b.tcErr)
			return
		}
		b.coldImgCDN = append(b.coldImgCDN, img)
	}
	logf("pushed %d images to the token + CDN upstream in %.1f s", b.p.reps, time.Since(t0).Seconds())
}

// tokenCDNRun is the cold pull through the token + CDN upstream: a fresh
// multiproxy (one upstream) and a fresh reference proxy on it, and the
// direct pull (its own token, following the redirect). Systems alternate
// as in the other cold pulls. It counts, per pull, the CDN GETs of every
// blob and the CDN requests that carried Authorization. A system that
// fails is a FAIL in the table, never a harness failure.
func (b *bench) tokenCDNRun() {
	metric := fmt.Sprintf("cold pull of 3 x %s image, token + CDN upstream", mib(b.p.layer))
	key := "cold_image_cdn"
	if b.tc == nil || len(b.coldImgCDN) < b.p.reps {
		b.addRow(&row{Key: key, Metric: metric, Unit: "s", BaseName: "direct", isTime: true,
			MPText: "n/a", RefText: "n/a", BaseText: "n/a", Note: "not measured: " + b.tcErr})
		return
	}
	tc := b.tc
	logf("%s: %d reps", metric, b.p.reps)
	dir := filepath.Join(b.work, "tokencdn")
	side := map[string]*cdnSide{}
	for _, n := range []string{"multiproxy", "reference", "direct"} {
		side[n] = &cdnSide{MinGets: -1}
	}
	var systems []*sys
	if mp, err := startMultiproxy(filepath.Join(dir, "mp"), b.o.mpBin, tc.front.url, 1, b.p.timeout, ""); err != nil {
		side["multiproxy"].fail("start: " + err.Error())
	} else {
		defer mp.p.stop()
		systems = append(systems, &sys{name: "multiproxy", base: mp.bases[0], c: newClient(), pids: mp.pids})
	}
	if port, err := freePort(); err != nil {
		side["reference"].fail("start: " + err.Error())
	} else {
		d := filepath.Join(dir, "ref")
		p, base, err := startRegistry("ref-tokencdn", d, b.o.regBin, referenceConfig(filepath.Join(d, "storage"), port, tc.refFront.url), port)
		if err != nil {
			side["reference"].fail("start: " + err.Error())
		} else {
			defer p.stop()
			systems = append(systems, &sys{name: "reference", base: base, c: newClient(), pids: func() []int { return []int{p.pid()} }})
		}
	}
	systems = append(systems, &sys{name: "direct", base: tc.front.url, c: newBearerClient(strings.TrimPrefix(tc.front.url, "http://"))})
	for _, s := range side {
		if s.Failed > 0 { // did not start: every rep fails
			s.Reps, s.Failed = b.p.reps, b.p.reps
		}
	}

	// A proxy that hangs on a redirect must not hang the harness.
	limit := 20*time.Second + time.Duration(3*b.p.layer/10e6)*time.Second
	tm, cpu := series{}, series{}
	for rep := range b.p.reps {
		img := b.coldImgCDN[rep]
		blobs := append([]string{img.config}, img.layers...)
		for _, s := range order(systems, rep) {
			sd := side[s.name]
			sd.Reps++
			tc.quiesce()
			flushDirty()
			before, tok0 := countCDN(tc.cdn), tc.tokens.Count()
			var c0 float64
			if s.pids != nil {
				c0, _ = cpuSeconds(s.pids())
			}
			ctx, cancel := context.WithTimeout(context.Background(), limit)
			d, _, err := pullImage(ctx, s.c, s.base, img.repo, img.tag)
			cancel()
			if err != nil {
				sd.fail(err.Error())
			} else {
				tm.put(s.name, rep, d.Seconds())
				if s.pids != nil {
					if c1, err := cpuSeconds(s.pids()); err == nil {
						cpu.put(s.name, rep, c1-c0)
					}
				}
			}
			// Fills finishing after the client gave up still count.
			tc.quiesce()
			after := countCDN(tc.cdn)
			exact := true
			for _, dg := range blobs {
				n := after.gets[dg] - before.gets[dg]
				if sd.MinGets < 0 || n < sd.MinGets {
					sd.MinGets = n
				}
				sd.MaxGets = max(sd.MaxGets, n)
				exact = exact && n == 1
			}
			if exact {
				sd.Exact++
			}
			sd.Auth += after.auth - before.auth
			sd.Refused += after.refused - before.refused
			sd.Tokens += int64(tc.tokens.Count() - tok0)
		}
	}
	b.tcSides = side

	mpS, refS, dirS := side["multiproxy"], side["reference"], side["direct"]
	var notes []string
	for _, n := range []string{"multiproxy", "reference", "direct"} {
		s := side[n]
		if len(s.Errors) > 0 {
			notes = append(notes, fmt.Sprintf("%s failed %d/%d: %s", n, s.Failed, s.Reps, strings.Join(s.Errors, "; ")))
		}
	}
	note := "the reference registry with auth: token (ES256 JWTs from a token service on another host) and the redirect " +
		"storage middleware: blob GETs answered 307 to a presigned-URL CDN on another host that refuses Authorization, like docker.io; " +
		"direct = a client with its own anonymous token, following the redirect; every digest verified; " +
		"the reference sees the token realm on its remote's own address, as its realm policy needs (see bench/README.md)"
	if len(notes) > 0 {
		note += "; " + strings.Join(notes, "; ")
	}
	r := b.addRow(&row{Key: key, Metric: metric, Unit: "s", BaseName: "direct", series: tm, isTime: true, Note: note})
	r.MPText, r.RefText, r.BaseText = mpS.timeText(r.MP), refS.timeText(r.Ref), dirS.timeText(r.Base)
	b.addRow(&row{Key: key + "_cpu", Metric: "  proxy CPU (utime+stime) for that pull", Unit: "CPU-s", series: cpu, isTime: true})

	f := func(v int64) *float64 { x := float64(v); return &x }
	gets := b.addRow(&row{Key: key + "_gets", Metric: "  CDN GETs per blob in that pull (want 1 each)", Unit: "GETs", BaseName: "direct",
		MP: f(mpS.MaxGets), Ref: f(refS.MaxGets), Base: f(dirS.MaxGets),
		MPText: mpS.getsText(), RefText: refS.getsText(), BaseText: dirS.getsText(),
		Note: fmt.Sprintf("min-max over the config and 3 layers of every rep; every blob exactly once in: multiproxy %d/%d, reference %d/%d, direct %d/%d reps; "+
			"CDN requests refused (4xx): multiproxy %d, reference %d, direct %d; token requests per pull: multiproxy %.1f, reference %.1f, direct %.1f",
			mpS.Exact, mpS.Reps, refS.Exact, refS.Reps, dirS.Exact, dirS.Reps, mpS.Refused, refS.Refused, dirS.Refused,
			perRep(mpS.Tokens, mpS.Reps), perRep(refS.Tokens, refS.Reps), perRep(dirS.Tokens, dirS.Reps))})
	auth := b.addRow(&row{Key: key + "_auth", Metric: "  CDN requests carrying Authorization (want 0)", Unit: "reqs", BaseName: "direct",
		MP: f(mpS.Auth), Ref: f(refS.Auth), Base: f(dirS.Auth), Note: "summed over reps"})
	for _, x := range []*row{gets, auth} {
		x.Ratio, x.MPvsBase, x.RefvsBase = nil, nil, nil // counts to check, not to compare
	}
}

func perRep(n int64, reps int) float64 {
	if reps == 0 {
		return 0
	}
	return float64(n) / float64(reps)
}

// tokenCDNGoal: issue "Upstreams as they really are".
func (b *bench) tokenCDNGoal() goal {
	g := goal{Goal: "token + CDN upstream: cold pull served, every blob through the CDN exactly once, no Authorization at the CDN", Status: "n/a"}
	mp := b.tcSides["multiproxy"]
	if mp == nil {
		g.Detail = "not measured: " + b.tcErr
		return g
	}
	g.Status = map[bool]string{true: "PASS", false: "FAIL"}[mp.ok()]
	g.Detail = "multiproxy " + mp.String()
	if r := b.row("cold_image_cdn"); r != nil && r.MPvsBase != nil {
		g.Detail += fmt.Sprintf(", %.2fx direct", *r.MPvsBase)
		if r.Ratio != nil {
			g.Detail += fmt.Sprintf(", %.2fx the reference's time", *r.Ratio)
		}
	}
	g.Detail += "; reference " + b.tcSides["reference"].String() + "; direct " + b.tcSides["direct"].String()
	return g
}
