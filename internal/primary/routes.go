package primary

import "github.com/vrep-io/vrep/internal/daemon"

// routes are the parameters each API route takes: any other, one given
// twice, or a flag or ID of the wrong form is refused with 400 before the
// handler runs (daemon.CheckQuery). A new route belongs here too.
var routes = daemon.Routes{
	"GET /":                       {daemon.P("window"), daemon.P("vm")},
	"GET /metrics":                nil,
	"GET /v1/events":              {daemon.P("since")},
	"GET /v1/jobs":                nil,
	"GET /v1/measure":             {daemon.P("vm"), daemon.P("window")},
	"GET /v1/status":              nil,
	"GET /v1/points":              nil,
	"POST /v1/points":             {daemon.P("target"), daemon.Flag("app")},
	"POST /v1/seed/export":        nil,
	"POST /v1/replication/resume": {daemon.P("vm")},
	"POST /v1/replication":        {daemon.P("vm"), daemon.P("frequency")},
	"POST /v1/resync":             {daemon.P("vm"), daemon.P("disk"), daemon.Flag("now")},
	"POST /v1/verify":             {daemon.P("vm"), daemon.P("disk"), daemon.ID("point")},
}
