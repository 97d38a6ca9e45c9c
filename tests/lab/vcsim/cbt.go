// Changed Block Tracking (CBT) for the lab's vcsim: QueryChangedDiskAreas, which
// govmomi's simulator 0.24 lacks.
//
// This MODELS ESXi CBT; it is not ESXi. What it does:
//   - When a snapshot is taken of a VM whose config.changeTrackingEnabled is true, every
//     virtual disk's flat file is hashed (SHA-256 per 64 KiB block) and the hashes are
//     kept under a new changeId, which is set into that snapshot's
//     config.hardware.device[].backing.changeId, as ESXi does.
//   - QueryChangedDiskAreas(snapshot, deviceKey, startOffset, changeId) compares the
//     disk as recorded for the snapshot's changeId with the disk as recorded for the
//     given changeId and returns the blocks whose bytes differ, merged into extents and
//     paged by startOffset. changeId "*" returns every block that is not all zeros (the
//     allocated areas of a freshly tracked disk). Without a snapshot (allowed by ESXi for
//     a powered-off VM only) the disk as it is now is compared.
//
// Differences from ESXi a reader should know: the simulator makes no delta disk for a
// snapshot, so the "snapshot's base disk" is the live flat file (tests write between
// syncs, not during a read); ESXi tracks writes, this compares contents, so a write of
// identical bytes is not reported; enabling tracking takes effect at the next snapshot
// (ESXi needs a stun/unstun cycle, of which a snapshot is one).
//
// Why it is reached through the HTTP handler: the simulator dispatches a SOAP call by
// reflection on the Go object registered for the call's _this, and its own code
// type-asserts VirtualMachine objects (Map.Get(ref).(*VirtualMachine), e.g. when a
// snapshot is removed), so replacing a VM with a wrapper type breaks snapshots. Instead,
// cbtHandler points the _this of QueryChangedDiskAreas calls at a changeTracker object
// registered for that VM, and the simulator then dispatches to it as to any managed
// object (session check, XML decoding and faults stay the simulator's own).
package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"io/ioutil"
	"net/http"
	"os"
	"path"
	"regexp"
	"strings"
	"sync"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	cbtBlockSize   = 64 << 10 // granularity of the changed areas
	cbtPageSize    = 16 << 20 // bytes of disk described per QueryChangedDiskAreas answer
	cbtTrackerType = "LabChangeTracker"
)

// diskState is a disk's content as recorded under one changeId.
type diskState struct {
	size   int64
	blocks [][sha256.Size]byte // nil entry: the block is all zeros
}

var cbt = struct {
	sync.Mutex
	seq    int
	states map[string]*diskState // changeId -> recorded content
}{states: map[string]*diskState{}}

var zeroBlock = make([]byte, cbtBlockSize)

// changeTracker receives QueryChangedDiskAreas for the VM whose moref value it carries.
type changeTracker struct {
	Self types.ManagedObjectReference
}

func (t *changeTracker) Reference() types.ManagedObjectReference { return t.Self }

// snapshotHook is a Registry handler: it sees every snapshot the simulator creates.
type snapshotHook struct{}

func (snapshotHook) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: cbtTrackerType, Value: "snapshot-hook"}
}

func (snapshotHook) UpdateObject(mo.Reference, []types.PropertyChange) {}
func (snapshotHook) RemoveObject(types.ManagedObjectReference)         {}

// PutObject runs inside CreateSnapshot_Task, after the snapshot's Config was copied
// from the VM and before the task completes.
func (snapshotHook) PutObject(item mo.Reference) {
	snap, ok := item.(*simulator.VirtualMachineSnapshot)
	if !ok {
		return
	}
	vm, ok := simulator.Map.Get(snap.Vm).(*simulator.VirtualMachine)
	if !ok || vm.Config == nil || vm.Config.ChangeTrackingEnabled == nil || !*vm.Config.ChangeTrackingEnabled {
		return
	}
	// The snapshot's Config shares the device objects with the VM: copy the disks
	// before setting their changeId so the VM's own devices stay untouched.
	devices := make([]types.BaseVirtualDevice, len(snap.Config.Hardware.Device))
	for i, dev := range snap.Config.Hardware.Device {
		devices[i] = dev
		disk, ok := dev.(*types.VirtualDisk)
		if !ok {
			continue
		}
		backing, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		if !ok {
			continue
		}
		state, err := recordDisk(flatPath(backing.FileName), diskCapacity(disk))
		if err != nil {
			continue // no changeId: QueryChangedDiskAreas will refuse this disk
		}
		diskCopy := *disk
		backingCopy := *backing
		cbt.Lock()
		cbt.seq++
		backingCopy.ChangeId = fmt.Sprintf("52 6c 61 62 63 62 74 00-%s/%d", vm.Self.Value, cbt.seq)
		cbt.states[backingCopy.ChangeId] = state
		cbt.Unlock()
		diskCopy.Backing = &backingCopy
		devices[i] = &diskCopy
	}
	snap.Config.Hardware.Device = devices
}

func diskCapacity(disk *types.VirtualDisk) int64 {
	if disk.CapacityInBytes > 0 {
		return disk.CapacityInBytes
	}
	return disk.CapacityInKB * 1024
}

// flatPath turns "[ds] dir/x.vmdk" into the local path of its data: x-flat.vmdk when
// that extent exists (monolithicFlat), else the .vmdk itself.
func flatPath(fileName string) string {
	var p object.DatastorePath
	if !p.FromString(fileName) {
		return ""
	}
	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		if ds.Name != p.Datastore {
			continue
		}
		base := path.Join(ds.Info.GetDatastoreInfo().Url, p.Path)
		flat := strings.TrimSuffix(base, ".vmdk") + "-flat.vmdk"
		if _, err := os.Stat(flat); err == nil {
			return flat
		}
		return base
	}
	return ""
}

// recordDisk hashes the disk's bytes per block; bytes past the end of the file read as
// zeros (the simulator creates empty files for new disks).
func recordDisk(file string, capacity int64) (*diskState, error) {
	return recordRange(file, capacity, 0, capacity, true)
}

// recordRange is recordDisk for the blocks of [start, start+length) only; the other
// blocks are recorded as zeros. Without hashed, a non-zero block gets a fixed marker.
func recordRange(file string, capacity, start, length int64, hashed bool) (*diskState, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	n := (capacity + cbtBlockSize - 1) / cbtBlockSize
	state := &diskState{size: capacity, blocks: make([][sha256.Size]byte, n)}
	zero := [sha256.Size]byte{}
	buf := make([]byte, cbtBlockSize)
	last := (start + length + cbtBlockSize - 1) / cbtBlockSize
	if last > n {
		last = n
	}
	for i := start / cbtBlockSize; i < last; i++ {
		got, err := f.ReadAt(buf, i*cbtBlockSize)
		if err != nil && err != io.EOF {
			return nil, err
		}
		if got == 0 {
			break
		}
		for j := got; j < len(buf); j++ {
			buf[j] = 0
		}
		if bytes.Equal(buf, zeroBlock) {
			state.blocks[i] = zero
		} else if hashed {
			state.blocks[i] = sha256.Sum256(buf)
		} else {
			state.blocks[i] = [sha256.Size]byte{1}
		}
	}
	return state, nil
}

// QueryChangedDiskAreas answers for the VM named by the tracker's moref value.
func (t *changeTracker) QueryChangedDiskAreas(req *types.QueryChangedDiskAreas) soap.HasFault {
	body := &methods.QueryChangedDiskAreasBody{}
	fail := func(msg string, fault types.BaseMethodFault) soap.HasFault {
		body.Fault_ = simulator.Fault(msg, fault)
		return body
	}
	if req.Snapshot == nil {
		return t.queryLive(req, fail)
	}
	snap, ok := simulator.Map.Get(*req.Snapshot).(*simulator.VirtualMachineSnapshot)
	if !ok || snap.Vm.Value != t.Self.Value {
		return fail("snapshot not found for this VM", &types.ManagedObjectNotFound{Obj: *req.Snapshot})
	}
	var current string
	var capacity int64
	for _, dev := range snap.Config.Hardware.Device {
		if disk, ok := dev.(*types.VirtualDisk); ok && disk.Key == req.DeviceKey {
			if b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
				current = b.ChangeId
			}
			capacity = diskCapacity(disk)
		}
	}
	if capacity == 0 {
		return fail(fmt.Sprintf("no virtual disk with key %d in the snapshot", req.DeviceKey), &types.InvalidArgument{InvalidProperty: "deviceKey"})
	}
	cbt.Lock()
	now := cbt.states[current]
	cbt.Unlock()
	return changedAreas(req, now, capacity, fail)
}

// queryLive answers a call without a snapshot. As on ESXi this is allowed only for a
// powered-off VM with tracking on, and compares against the disk as it is now (nfc.go's
// imports set tracking on at creation, so "*" gives the allocated areas of the disk).
func (t *changeTracker) queryLive(req *types.QueryChangedDiskAreas, fail func(string, types.BaseMethodFault) soap.HasFault) soap.HasFault {
	vm, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: t.Self.Value}).(*simulator.VirtualMachine)
	if !ok {
		return fail("VM not found", &types.ManagedObjectNotFound{Obj: t.Self})
	}
	if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
		return fail("QueryChangedDiskAreas without a snapshot needs a powered-off VM", &types.InvalidArgument{InvalidProperty: "snapshot"})
	}
	if vm.Config.ChangeTrackingEnabled == nil || !*vm.Config.ChangeTrackingEnabled {
		return fail("change tracking is not enabled for this VM", &types.FileFault{File: "changeTracking"})
	}
	for _, dev := range vm.Config.Hardware.Device {
		disk, ok := dev.(*types.VirtualDisk)
		if !ok || disk.Key != req.DeviceKey {
			continue
		}
		backing, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		if !ok {
			break
		}
		// Only the blocks of the page asked for are hashed: the disk is read once over
		// all the pages, not once per page.
		// For "*" only zero or not matters: blocks are not hashed then.
		now, err := recordRange(flatPath(backing.FileName), diskCapacity(disk), req.StartOffset, cbtPageSize, req.ChangeId != "*")
		if err != nil {
			return fail("reading the disk: "+err.Error(), &types.FileFault{File: backing.FileName})
		}
		return changedAreas(req, now, diskCapacity(disk), fail)
	}
	return fail(fmt.Sprintf("no virtual disk with key %d", req.DeviceKey), &types.InvalidArgument{InvalidProperty: "deviceKey"})
}

// changedAreas compares the disk as recorded in now with the one of req.ChangeId.
func changedAreas(req *types.QueryChangedDiskAreas, now *diskState, capacity int64, fail func(string, types.BaseMethodFault) soap.HasFault) soap.HasFault {
	body := &methods.QueryChangedDiskAreasBody{}
	if req.StartOffset < 0 || req.StartOffset >= capacity {
		return fail("startOffset is outside the disk", &types.InvalidArgument{InvalidProperty: "startOffset"})
	}
	cbt.Lock()
	before, known := cbt.states[req.ChangeId]
	cbt.Unlock()
	if now == nil {
		return fail("change tracking was not active for this disk when the snapshot was taken", &types.FileFault{File: "changeTracking"})
	}
	if req.ChangeId != "*" && !known {
		return fail("unknown changeId "+req.ChangeId, &types.InvalidArgument{InvalidProperty: "changeId"})
	}

	// Only whole blocks are compared, so the page starts on a block boundary.
	first := req.StartOffset / cbtBlockSize
	length := int64(cbtPageSize)
	if req.StartOffset+length > capacity {
		length = capacity - req.StartOffset
	}
	last := (req.StartOffset + length + cbtBlockSize - 1) / cbtBlockSize
	info := types.DiskChangeInfo{StartOffset: req.StartOffset, Length: length}
	zero := [sha256.Size]byte{}
	for i := first; i < last && i < int64(len(now.blocks)); i++ {
		var changed bool
		if req.ChangeId == "*" || i >= int64(len(before.blocks)) {
			changed = now.blocks[i] != zero
		} else {
			changed = now.blocks[i] != before.blocks[i]
		}
		if !changed {
			continue
		}
		start := i * cbtBlockSize
		size := int64(cbtBlockSize)
		if start+size > capacity {
			size = capacity - start
		}
		n := len(info.ChangedArea)
		if n > 0 && info.ChangedArea[n-1].Start+info.ChangedArea[n-1].Length == start {
			info.ChangedArea[n-1].Length += size
		} else {
			info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: start, Length: size})
		}
	}
	body.Res = &types.QueryChangedDiskAreasResponse{Returnval: info}
	return body
}

var vmThis = regexp.MustCompile(`<_this([^>]*)type="VirtualMachine"([^>]*)>([^<]+)</_this>`)

// cbtHandler wraps the server's handler: a QueryChangedDiskAreas call's _this is
// pointed at the changeTracker registered for that VM (see the top of this file).
func cbtHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/sdk") {
			body, err := ioutil.ReadAll(r.Body)
			_ = r.Body.Close()
			if err != nil {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			if bytes.Contains(body, []byte("QueryChangedDiskAreas")) {
				if m := vmThis.FindSubmatch(body); m != nil {
					ref := types.ManagedObjectReference{Type: cbtTrackerType, Value: string(m[3])}
					vm := types.ManagedObjectReference{Type: "VirtualMachine", Value: string(m[3])}
					if simulator.Map.Get(vm) != nil && simulator.Map.Get(ref) == nil {
						simulator.Map.Put(&changeTracker{Self: ref})
					}
					body = vmThis.ReplaceAll(body, []byte(`<_this${1}type="`+cbtTrackerType+`"${2}>${3}</_this>`))
				}
			}
			r.Body = ioutil.NopCloser(bytes.NewReader(body))
			r.ContentLength = int64(len(body))
		}
		next.ServeHTTP(w, r)
	})
}

// addChangeTracking registers the snapshot hook; called from addLabMethods.
func addChangeTracking() {
	simulator.Map.AddHandler(snapshotHook{})
}
