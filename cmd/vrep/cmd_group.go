package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/vrep-io/vrep/internal/replicad"
)

// callVMOrGroup makes a failover call whose target may be a VM or a
// consistency group: the replica answers a group's call with a
// GroupInfo (which has a "group" field), returned here; a VM's answer is
// decoded into vmOut and the GroupInfo is nil.
func (a *apiFlags) callVMOrGroup(method, path string, vmOut any) (*replicad.GroupInfo, error) {
	var raw json.RawMessage
	if err := a.call(method, path, &raw); err != nil {
		return nil, err
	}
	var probe struct {
		Group *string `json:"group"`
	}
	if err := json.Unmarshal(raw, &probe); err != nil {
		return nil, err
	}
	if probe.Group == nil {
		return nil, json.Unmarshal(raw, vmOut)
	}
	var gi replicad.GroupInfo
	return &gi, json.Unmarshal(raw, &gi)
}

// printGroup prints what a failover command did to a consistency group.
func printGroup(out io.Writer, what string, gi *replicad.GroupInfo) {
	if gi.Point != 0 {
		fmt.Fprintf(out, "consistency group %s: %s at shared point %d\n", gi.Group, what, gi.Point)
	} else {
		fmt.Fprintf(out, "consistency group %s: %s\n", gi.Group, what)
	}
	for _, f := range gi.Failovers {
		printFailover(out, f)
	}
	for _, t := range gi.Tests {
		printTest(out, "  test failover of "+t.VM, t)
	}
}

// orGroup is what --json prints: the group's answer if there is one.
func orGroup(gi *replicad.GroupInfo, vm any) any {
	if gi != nil {
		return gi
	}
	return vm
}
