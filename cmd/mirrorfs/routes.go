package main

import (
	"log/slog"

	"github.com/mirrorfs/mirrorfs/config"
	"github.com/mirrorfs/mirrorfs/control"
	"github.com/mirrorfs/mirrorfs/journal"
	"github.com/mirrorfs/mirrorfs/replicate"
)

// daemonState is what the control routes of a running daemon may use.
type daemonState struct {
	cfg      *config.Config
	j        *journal.Journal
	shippers []*replicate.Shipper // in cfg.Workers order
	store    string               // the store directory (in place: /proc/self/fd/N)
	log      *slog.Logger
}

// daemonRoutes are the control socket's endpoints beyond GET /status.
func daemonRoutes(d daemonState) []control.Route {
	var rs []control.Route
	rs = append(rs, journalRoutes(d)...)
	rs = append(rs, resyncRoutes(d)...)
	return rs
}
