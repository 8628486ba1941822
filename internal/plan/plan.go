// Package plan runs recovery plans: many VMs failed over in order, as
// Azure Site Recovery's and Zerto's plans do, with scripts and manual
// pauses between groups.
//
// A plan is YAML:
//
//	name: web-app
//	groups:
//	  - name: database
//	    vms: [db]                    # VMs or consistency groups
//	    before:
//	      - script: /etc/vrep/plans/stop-app.sh
//	        args: [db]
//	        timeout: 2m              # default 5m
//	        continue_on_error: true  # default false: a failure stops the plan
//	    after:
//	      - manual: Check that the database accepts connections
//	  - name: web
//	    vms: [web1, web2]
//
// A run flattens the plan into steps, in order: for each group its before
// actions, one failover step per VM or consistency group, its after
// actions. The engine runs the steps one at a time and persists the run
// (a state file per plan: statefile framing, magic "VREPPLAN", the JSON
// of Run) before and after each step, so that a restart of the daemon
// knows where each plan was: a step not yet started is started, a
// finished one is never run again, and a step that was under way is
// resolved by what it is (a failover that took effect counts as done; a
// script, whose effect the engine cannot know, stops the plan until the
// operator says --retry or --skip), always with a log line saying so.
//
// The engine reaches failovers through Ops: the daemon implements it.
package plan

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/vrep-io/vrep/internal/names"
)

// Errors, for the API to map to its answers.
var (
	// ErrInvalid is a plan or a request that cannot run as given.
	ErrInvalid = errors.New("plan: invalid")
	// ErrNotFound is an unknown plan.
	ErrNotFound = errors.New("plan: no such plan")
	// ErrConflict is a request the plan's state does not allow now.
	ErrConflict = errors.New("plan: not now")
	// ErrNotAvailable is an operation this build does not offer.
	ErrNotAvailable = errors.New("plan: not available in this build")
)

// Mode is how a run fails its VMs over.
type Mode string

// The modes. Part of the format.
const (
	Test      Mode = "test"      // test failovers; replication goes on; cleanup stops them
	Planned   Mode = "planned"   // planned failover, run where the VMs are primary
	Unplanned Mode = "unplanned" // failover to a point on the replica
)

// DefaultTimeout bounds an action that gives none.
const DefaultTimeout = 5 * time.Minute

// Plan is a recovery plan as its YAML says.
type Plan struct {
	Name   string  `yaml:"name" json:"name"`
	Groups []Group `yaml:"groups" json:"groups"`
}

// Group is a plan's group: VMs (or consistency groups) failed over
// together, after its before actions and before its after actions.
type Group struct {
	Name   string   `yaml:"name" json:"name"`
	VMs    []string `yaml:"vms" json:"vms"`
	Before []Action `yaml:"before,omitempty" json:"before,omitempty"`
	After  []Action `yaml:"after,omitempty" json:"after,omitempty"`
}

// Action is a script (with its arguments and timeout) or a manual step
// (the plan waits for vrep plan continue).
type Action struct {
	Script          string   `yaml:"script,omitempty" json:"script,omitempty"`
	Args            []string `yaml:"args,omitempty" json:"args,omitempty"`
	Timeout         Duration `yaml:"timeout,omitempty" json:"timeout,omitempty"`
	ContinueOnError bool     `yaml:"continue_on_error,omitempty" json:"continue_on_error,omitempty"`
	Manual          string   `yaml:"manual,omitempty" json:"manual,omitempty"`
}

// Duration is a time.Duration written as "30s" in YAML and JSON.
type Duration time.Duration

// UnmarshalYAML reads "30s".
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil || v < 0 {
		return fmt.Errorf("line %d: timeout %q is not a duration like 30s", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes "30s".
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText reads "30s".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = Duration(v)
	return err
}

// Parse reads a plan. Relative script paths are taken from base (the
// plan file's directory). Only the YAML's shape is checked here; Check
// finds every other problem.
func Parse(b []byte, base string) (*Plan, error) {
	var p Plan
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("%w: the plan is not valid YAML of a plan: %v", ErrInvalid, err)
	}
	for gi := range p.Groups {
		for _, acts := range [][]Action{p.Groups[gi].Before, p.Groups[gi].After} {
			for i := range acts {
				if s := acts[i].Script; s != "" && !filepath.IsAbs(s) && base != "" {
					acts[i].Script = filepath.Join(base, s)
				}
			}
		}
	}
	return &p, nil
}

// problems lists what is wrong with the plan itself (names, shapes,
// scripts), in the plan's order.
func (p *Plan) problems() []string {
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	if err := names.Part(p.Name); err != nil {
		add("the plan needs a name of letters, digits, '.', '-' or '_' (name: %q)", p.Name)
	}
	if len(p.Groups) == 0 {
		add("the plan has no groups")
	}
	seen := map[string]bool{}
	for i, g := range p.Groups {
		label := fmt.Sprintf("group %d", i+1)
		if g.Name != "" {
			label = "group " + g.Name
			if seen[g.Name] {
				add("two groups are named %s", g.Name)
			}
			seen[g.Name] = true
		}
		if len(g.VMs) == 0 && len(g.Before)+len(g.After) == 0 {
			add("%s has no VMs and no actions", label)
		}
		for _, a := range append(append([]Action{}, g.Before...), g.After...) {
			switch {
			case a.Script != "" && a.Manual != "":
				add("an action of %s has both a script and a manual step; give one per action", label)
			case a.Script == "" && a.Manual == "":
				add("an action of %s has neither a script nor a manual step", label)
			case a.Script != "":
				fi, err := os.Stat(a.Script)
				switch {
				case err != nil:
					add("script %s of %s is missing", a.Script, label)
				case fi.IsDir() || fi.Mode()&0o111 == 0:
					add("script %s of %s is not an executable file", a.Script, label)
				}
			}
		}
	}
	return out
}

// groupName is a group's name in the run, its position when it has none.
func (g Group) label(i int) string {
	if g.Name != "" {
		return g.Name
	}
	return fmt.Sprint(i + 1)
}

// invalid lists problems as the one error a refused run answers.
func invalid(plan string, problems []string) error {
	var b strings.Builder
	for i, p := range problems {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%d) %s", i+1, p)
	}
	what := "problem"
	if len(problems) > 1 {
		what = "problems"
	}
	return fmt.Errorf("%w: plan %s was not started, it has %d %s: %s", ErrInvalid, plan, len(problems), what, b.String())
}
