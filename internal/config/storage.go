package config

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// loadStorageSecrets reads the bucket keys, the Redis password and the
// peer token. A file
// shared by several upstreams (inherited from the top level) is reported
// once, under the top-level field.
func (c *Config) loadStorageSecrets() []error {
	var errs []error
	read := func(field, file string, dst *Secret) {
		if file == "" {
			return
		}
		s, err := readSecretFile(field, file)
		if err != nil {
			errs = append(errs, err)
		}
		*dst = s
	}
	read("storage.s3.access_key_file", c.Storage.S3.AccessKeyFile, &c.Storage.S3.AccessKey)
	read("storage.s3.secret_key_file", c.Storage.S3.SecretKeyFile, &c.Storage.S3.SecretKey)
	for i := range c.Upstreams {
		s3 := &c.Upstreams[i].Storage.S3
		if s3.AccessKeyFile == c.Storage.S3.AccessKeyFile && s3.SecretKeyFile == c.Storage.S3.SecretKeyFile {
			s3.AccessKey, s3.SecretKey = c.Storage.S3.AccessKey, c.Storage.S3.SecretKey
			continue
		}
		field := fmt.Sprintf("upstreams[%d].storage.s3.", i)
		read(field+"access_key_file", s3.AccessKeyFile, &s3.AccessKey)
		read(field+"secret_key_file", s3.SecretKeyFile, &s3.SecretKey)
	}
	read("coordination.redis.password_file", c.Coordination.Redis.PasswordFile, &c.Coordination.Redis.Password)
	sentinel := &c.Coordination.Redis.Sentinel
	read("coordination.redis.sentinel.password_file", sentinel.PasswordFile, &sentinel.Password)
	read("coordination.peer_token_file", c.Coordination.PeerTokenFile, &c.Coordination.PeerToken)
	return errs
}

// validateStorage checks the bucket, local tier and coordination sections.
// ports is the listeners' port table of validate, for peer_listen.
func (c Config) validateStorage(ports map[int]string) []error {
	var errs []error
	add := func(e *ValidationError) { errs = append(errs, e) }
	if c.Storage.S3 != (S3{}) {
		errs = append(errs, checkS3("storage.s3", c.Storage.S3)...)
	}
	for i, u := range c.Upstreams {
		field := fmt.Sprintf("upstreams[%d].storage", i)
		inherited := c.Storage.S3.Enabled() && u.Storage.S3.Bucket == c.Storage.S3.Bucket &&
			u.Storage.S3.Endpoint == c.Storage.S3.Endpoint
		if u.Storage.S3 != (S3{}) && !inherited {
			errs = append(errs, checkS3(field+".s3", u.Storage.S3)...)
		}
		if u.Storage.LocalCache.MaxSize < 0 {
			add(fieldErr(field+".local_cache.max_size", "must not be negative"))
		}
		if c.Coordination.Enabled() && !u.Storage.S3.Enabled() {
			add(fieldErr(field+".s3", "required with coordination.redis: replicas can only share content through a bucket (set storage.s3)"))
		}
	}
	if c.Coordination.IsZero() {
		return errs
	}
	r := c.Coordination.Redis
	switch {
	case r.Sentinel.Enabled() && r.Addr != "":
		add(fieldErr("coordination.redis.sentinel", "set either coordination.redis.addr or coordination.redis.sentinel, not both: with Sentinel the master's address comes from the Sentinels"))
	case r.Sentinel.Enabled():
		errs = append(errs, checkSentinel("coordination.redis.sentinel", r.Sentinel)...)
	case r.Addr == "":
		add(fieldErr("coordination.redis.addr", "required when coordination is set (or coordination.redis.sentinel)"))
	default:
		if err := checkHostPort(r.Addr); err != nil {
			add(fieldErr("coordination.redis.addr", "%v", err))
		}
	}
	if r.DB < 0 || r.DB > 15 {
		add(fieldErr("coordination.redis.db", "must be from 0 to 15, got %d", r.DB))
	}
	if c.Coordination.LeaseTTL < 0 || (c.Coordination.LeaseTTL > 0 && c.Coordination.LeaseTTL.Seconds() < 1) {
		add(fieldErr("coordination.lease_ttl", "must be at least 1s, got %s", c.Coordination.LeaseTTL))
	}
	if c.Coordination.PeerListen != "" {
		if port, err := listenPort(c.Coordination.PeerListen); err != nil {
			add(fieldErr("coordination.peer_listen", "%v", err))
		} else if owner, used := ports[port]; used {
			add(fieldErr("coordination.peer_listen", "port %d already used by %s", port, owner))
		}
	}
	if a := c.Coordination.Advertise; a != "" {
		if host, _, err := net.SplitHostPort(a); err != nil || host == "" {
			add(fieldErr("coordination.advertise", "invalid address %q: want host:port other replicas can reach", a))
		} else if _, err := listenPort(a); err != nil {
			add(fieldErr("coordination.advertise", "%v", err))
		}
	}
	return errs
}

// checkHostPort checks an address to dial: a host and a port.
func checkHostPort(addr string) error {
	if _, err := listenPort(addr); err != nil {
		return err
	}
	if host, _, _ := net.SplitHostPort(addr); host == "" {
		return fmt.Errorf("%q has no host", addr)
	}
	return nil
}

// checkSentinel reports what is wrong with a Sentinel section.
func checkSentinel(field string, s Sentinel) []error {
	var errs []error
	if s.Master == "" {
		errs = append(errs, fieldErr(field+".master", "required with %s: the name the Sentinels monitor the master under", field))
	}
	if len(s.Addrs) == 0 {
		errs = append(errs, fieldErr(field+".addrs", "required with %s: at least one Sentinel's host:port", field))
	}
	for i, a := range s.Addrs {
		if err := checkHostPort(a); err != nil {
			errs = append(errs, fieldErr(fmt.Sprintf("%s.addrs[%d]", field, i), "%v", err))
		}
	}
	return errs
}

// checkS3 reports what is wrong with a bucket section.
func checkS3(field string, s S3) []error {
	var errs []error
	add := func(e *ValidationError) { errs = append(errs, e) }
	if s.Bucket == "" {
		add(fieldErr(field+".bucket", "required when %s is set", field))
	} else if strings.ContainsAny(s.Bucket, "/ ") {
		add(fieldErr(field+".bucket", "%q is not a bucket name", s.Bucket))
	}
	if s.Endpoint != "" {
		u, err := url.Parse(s.Endpoint)
		switch {
		case err != nil:
			add(fieldErr(field+".endpoint", "invalid URL"))
		case u.Scheme != "http" && u.Scheme != "https":
			add(fieldErr(field+".endpoint", "want http:// or https://, got %q", u.Scheme))
		case u.Host == "":
			add(fieldErr(field+".endpoint", "has no host"))
		case u.User != nil:
			add(fieldErr(field+".endpoint", "must not contain credentials: use access_key_file and secret_key_file"))
		}
	}
	if (s.AccessKeyFile == "") != (s.SecretKeyFile == "") {
		add(fieldErr(field+".access_key_file", "set both access_key_file and secret_key_file, or neither (the AWS default chain)"))
	}
	return errs
}
