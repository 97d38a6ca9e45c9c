// Lab vCenter: govmomi's simulator (Debian's golang-github-vmware-govmomi-dev, 0.24)
// with the VPX inventory, served on loopback over TLS with the lab CA's certificate and
// one fixed user/password, so pyvmomi talks to it exactly as to a vCenter.
//
// Built by tests/lab/lab (GOPATH mode, no network). Every .go file in this directory is
// part of this program, so simulator extensions can live in their own file and be
// registered from addLabMethods below.
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// info is written to -info once the server accepts connections; the lab script reads it.
type info struct {
	URL        string            `json:"url"`
	PID        int               `json:"pid"`
	Datastores map[string]string `json:"datastores"`
}

// addLabMethods is where methods that vcsim 0.24 lacks are added to simulator objects.
// QueryChangedDiskAreas lives in cbt.go: computed from what really changed in the disk
// file since the snapshot. A VirtualMachine wrapper put back with simulator.Map.Put would
// break the simulator's own Map.Get(ref).(*VirtualMachine) assertions (snapshot removal),
// so cbt.go registers a snapshot hook here and its calls are routed by cbtHandler below.
func addLabMethods(model *simulator.Model) error {
	addChangeTracking()
	return nil
}

// taskEntityFix is a registry handler. vcsim 0.24 sets TaskInfo.entity to the object a
// task runs on even when that is not a ManagedEntity (FileManager, VirtualDiskManager),
// which pyvmomi refuses to deserialize ("expected type vim.ManagedEntity"), so reading
// such a task's state fails. A vCenter leaves entity unset there; so do we.
type taskEntityFix struct{}

func (taskEntityFix) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "LabTaskEntityFix", Value: "lab-task-entity-fix"}
}

func (taskEntityFix) PutObject(o mo.Reference) {
	task, ok := o.(*simulator.Task)
	if !ok || task.Info.Entity == nil {
		return
	}
	if _, isEntity := simulator.Map.Get(*task.Info.Entity).(mo.Entity); !isEntity {
		task.Info.Entity = nil
		task.Info.EntityName = ""
	}
}

func (taskEntityFix) UpdateObject(mo.Reference, []types.PropertyChange) {}
func (taskEntityFix) RemoveObject(types.ManagedObjectReference)         {}

func main() {
	listen := flag.String("listen", "127.0.0.1:8989", "address:port to serve on")
	certFile := flag.String("cert", "", "server certificate (PEM)")
	keyFile := flag.String("key", "", "server private key (PEM)")
	username := flag.String("username", "vmigrate@vsphere.local", "the only accepted user")
	root := flag.String("root", "", "directory holding the datastores' directories")
	infoFile := flag.String("info", "", "write connection facts (JSON) here when ready")
	flag.Parse()

	// The password comes from the environment so it does not show in `ps`.
	password := os.Getenv("VCSIM_PASSWORD")
	if password == "" || *certFile == "" || *keyFile == "" || *root == "" || *infoFile == "" {
		log.Fatal("need VCSIM_PASSWORD in the environment and -cert, -key, -root, -info")
	}

	if err := os.MkdirAll(*root, 0o700); err != nil {
		log.Fatal(err)
	}
	// The simulator keeps its inventory in memory only, so datastore directories of an
	// earlier run describe nothing that still exists: remove them.
	stale, _ := filepath.Glob(filepath.Join(*root, "govcsim-*"))
	for _, dir := range stale {
		_ = os.RemoveAll(dir)
	}
	// The simulator makes each datastore's directory with ioutil.TempDir(""), which
	// honours TMPDIR: this puts them under our root instead of /tmp.
	if err := os.Setenv("TMPDIR", *root); err != nil {
		log.Fatal(err)
	}

	model := simulator.VPX()
	if err := model.Create(); err != nil {
		log.Fatalf("creating the VPX inventory: %s", err)
	}
	simulator.Map.AddHandler(taskEntityFix{})
	if err := addLabMethods(model); err != nil {
		log.Fatalf("adding lab methods: %s", err)
	}

	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		log.Fatalf("loading the server certificate: %s", err)
	}
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	// With Listen.User set, SessionManager.Login accepts only this user/password
	// (with the default user it accepts any non-empty pair).
	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*username, password)}
	server := model.Service.NewServer()
	// Set before any client can know the address (the -info file is written below).
	// faults.go: fault injection for tests, switched on per VM; nfc.go: disk imports.
	server.Config.Handler = faultHandler(cbtHandler(nfcHandler(server.Config.Handler)))

	facts := info{URL: strings.Replace(server.URL.String(), server.URL.User.String()+"@", "", 1), PID: os.Getpid(), Datastores: map[string]string{}}
	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		dir := ds.Info.GetDatastoreInfo().Url
		facts.Datastores[ds.Name] = dir
		// A stable name for people looking around; tests use the real path from -info.
		link := filepath.Join(*root, ds.Name)
		_ = os.Remove(link)
		_ = os.Symlink(dir, link)
	}
	data, err := json.MarshalIndent(facts, "", "  ")
	if err != nil {
		log.Fatal(err)
	}
	tmp := *infoFile + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		log.Fatal(err)
	}
	if err := os.Rename(tmp, *infoFile); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("vcsim serving %s\n", facts.URL)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	server.Close()
	_ = os.Remove(*infoFile)
}
