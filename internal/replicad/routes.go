package replicad

import "github.com/vrep-io/vrep/internal/daemon"

// routes are the parameters each API route takes: any other, one given
// twice, or a flag or ID of the wrong form is refused with 400 before the
// handler runs (daemon.CheckQuery). A new route belongs here too.
var routes = daemon.Routes{
	"GET /":                            {daemon.P("window"), daemon.P("vm")},
	"GET /metrics":                     nil,
	"GET /v1/events":                   {daemon.P("since")},
	"GET /v1/jobs":                     nil,
	"GET /v1/status":                   nil,
	"GET /v1/points":                   {daemon.P("vm")},
	"POST /v1/failover/test":           {daemon.P("vm"), daemon.ID("point")},
	"POST /v1/failover/test-stop":      {daemon.P("vm"), daemon.Flag("force")},
	"POST /v1/failover/start":          {daemon.P("vm"), daemon.P("point")},
	"POST /v1/failover/cancel":         {daemon.P("vm"), daemon.Flag("force")},
	"POST /v1/failover/commit":         {daemon.P("vm")},
	"POST /v1/points/split-brain/drop": {daemon.P("vm")},
	"POST /v1/plan/run":                {daemon.P("mode"), daemon.P("point"), daemon.P("base")},
	"GET /v1/plans":                    nil,
	"GET /v1/plan":                     {daemon.P("name")},
	"POST /v1/plan/continue":           {daemon.P("name"), daemon.P("how")},
	"POST /v1/plan/cancel":             {daemon.P("name")},
	"POST /v1/plan/cleanup":            {daemon.P("name"), daemon.Flag("force")},
}
