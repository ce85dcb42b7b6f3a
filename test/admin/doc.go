// Package admin holds the end-to-end tests of the admin surface: a real
// multiproxy started in-process in front of real registries (testsupport),
// scraped, probed and looked at the way an operator would. Metrics must add
// up to the workload exactly, /readyz must follow upstream outages, refused
// admin actions must never run, the status page must render in a real
// browser, and the Grafana dashboard must only query metrics that exist.
//
// It has no code of its own.
package admin
