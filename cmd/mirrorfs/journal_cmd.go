package main

import "github.com/mirrorfs/mirrorfs/control"

// journalRoutes: being written (mirrorfs journal stats|ls|show).
func journalRoutes(d daemonState) []control.Route { return nil }
