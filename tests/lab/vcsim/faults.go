// Fault injection for tests: lab-only behaviour that makes vcsim fail the way a real
// vCenter sometimes does, switched on per VM so other tests are not affected.
//
//   - RemoveSnapshot_Task fails (the task ends in error, as when ESXi cannot consolidate
//     a snapshot) for every snapshot of a VM whose extraConfig holds
//     vmigrate.lab.fail-snapshot-removal=true (the last entry of the key wins, as the
//     simulator appends entries on reconfigure; any other value switches it off).
//
// Routed like QueryChangedDiskAreas in cbt.go: faultHandler points the call's _this at a
// failingSnapshot object registered for that snapshot, and the simulator dispatches to
// it; the snapshot itself is left untouched.
package main

import (
	"bytes"
	"fmt"
	"io/ioutil"
	"net/http"
	"regexp"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	failSnapshotRemovalKey = "vmigrate.lab.fail-snapshot-removal"
	failingSnapshotType    = "LabFailingSnapshot"
)

// failingSnapshot answers RemoveSnapshot_Task with a task that fails.
type failingSnapshot struct {
	Self types.ManagedObjectReference
}

func (f *failingSnapshot) Reference() types.ManagedObjectReference { return f.Self }

func (f *failingSnapshot) RemoveSnapshotTask(req *types.RemoveSnapshot_Task) soap.HasFault {
	snap := types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: f.Self.Value}
	msg := fmt.Sprintf("lab fault injection: removing snapshot %s refused (%s=true)", snap.Value, failSnapshotRemovalKey)
	fault := &types.GenericVmConfigFault{Reason: msg}
	entity := simulator.Map.Get(snap)
	if entity == nil {
		entity = f
	}
	task := simulator.CreateTask(entity, "removeSnapshot", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, fault
	})
	ref := task.Run()
	// Task.Run sets the Go type name as the message; give the client words to show.
	simulator.Map.Update(task, []types.PropertyChange{
		{Name: "info.error", Val: types.LocalizedMethodFault{Fault: fault, LocalizedMessage: msg}},
	})
	return &methods.RemoveSnapshot_TaskBody{Res: &types.RemoveSnapshot_TaskResponse{Returnval: ref}}
}

// failSnapshotRemoval tells whether the snapshot's VM asks for the fault.
func failSnapshotRemoval(snapValue string) bool {
	snap, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: snapValue}).(*simulator.VirtualMachineSnapshot)
	if !ok {
		return false
	}
	vm, ok := simulator.Map.Get(snap.Vm).(*simulator.VirtualMachine)
	if !ok || vm.Config == nil {
		return false
	}
	value := ""
	for _, opt := range vm.Config.ExtraConfig {
		if o := opt.GetOptionValue(); o.Key == failSnapshotRemovalKey {
			value = fmt.Sprint(o.Value)
		}
	}
	return value == "true"
}

var snapshotThis = regexp.MustCompile(`<_this([^>]*)type="VirtualMachineSnapshot"([^>]*)>([^<]+)</_this>`)

// faultHandler wraps the server's handler and reroutes calls that are to fail.
func faultHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/sdk") {
			body, err := ioutil.ReadAll(r.Body)
			_ = r.Body.Close()
			if err != nil {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			if bytes.Contains(body, []byte("RemoveSnapshot_Task")) {
				if m := snapshotThis.FindSubmatch(body); m != nil && failSnapshotRemoval(string(m[3])) {
					ref := types.ManagedObjectReference{Type: failingSnapshotType, Value: string(m[3])}
					if simulator.Map.Get(ref) == nil {
						simulator.Map.Put(&failingSnapshot{Self: ref})
					}
					body = snapshotThis.ReplaceAll(body, []byte(`<_this${1}type="`+failingSnapshotType+`"${2}>${3}</_this>`))
				}
			}
			r.Body = ioutil.NopCloser(bytes.NewReader(body))
			r.ContentLength = int64(len(body))
		}
		next.ServeHTTP(w, r)
	})
}
