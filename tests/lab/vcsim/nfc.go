// Disk imports through an NFC lease (ImportVApp) for the lab's vcsim: what is uploaded
// lands in the datastore as a thin disk, as on ESXi.
//
// govmomi's simulator 0.24 implements ImportVApp and hands out a lease whose device URLs
// accept uploads, but it throws the uploaded bytes away. ESXi takes a streamOptimized
// VMDK (the format ovftool and `govc import.*` send: only allocated grains, each
// deflate-compressed) and writes it into the disk the import spec created, as a thin
// disk: a monolithicFlat descriptor x.vmdk and a data file x-flat.vmdk in which only the
// grains sent are written. This MODELS that:
//   - nfcHandler watches ImportVApp calls: the request's ConfigSpec names the disk files
//     ([ds] dir/x.vmdk) and the response names the lease, so the lease's device URLs
//     (/nfc/<lease>/x.vmdk, the simulator's own form) can be mapped to those files.
//   - A POST or PUT of a streamOptimized VMDK to such a URL is parsed as it arrives:
//     every grain is inflated and written at its offset into x-flat.vmdk (all-zero
//     grains are not written, so the file stays sparse), the file is sized to the
//     disk's capacity, and x.vmdk gets the monolithicFlat descriptor made from the
//     stream's own descriptor. Anything else is refused (HTTP 415), not stored.
//   - What arrived is counted and served as JSON at GET /lab/nfc-stats, so a test can
//     measure the bytes on the wire independently of the client's own counters; so are
//     the bytes of datastore files served by GET /folder (what a verify read back).
//
// Differences from ESXi a reader should know: the lease does not time out, and an
// aborted lease leaves the VM in place (ESXi removes it): clients clean up themselves.
package main

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"io/ioutil"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"regexp"
	"strings"
	"sync"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
)

const (
	sectorSize       = 512
	vmdkMagic        = 0x564d444b // "KDMV" read little-endian
	flagCompressed   = 1 << 16
	flagMarkers      = 1 << 17
	markerEOS        = 0
	maxGrainSectors  = 1 << 16 // 32 MiB: far above any real grain, refuses garbage
	nfcStatsURL      = "/lab/nfc-stats"
	nfcDescriptorMax = 1 << 20
)

// nfcUpload is what one upload to a lease URL did, for GET /lab/nfc-stats.
type nfcUpload struct {
	File          string `json:"file"`           // [ds] dir/x.vmdk
	BytesReceived int64  `json:"bytes_received"` // request body bytes, as on the wire
	BytesWritten  int64  `json:"bytes_written"`  // guest bytes written into x-flat.vmdk
	Grains        int    `json:"grains"`
	Capacity      int64  `json:"capacity"`
	Error         string `json:"error,omitempty"`
}

var nfc = struct {
	sync.Mutex
	leases  map[string]map[string]string // lease moref value -> URL file name -> [ds] path
	uploads []nfcUpload
	reads   map[string]int64 // [ds] path -> body bytes served by GET /folder
}{leases: map[string]map[string]string{}, reads: map[string]int64{}}

// countingWriter counts the body bytes of a response.
type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

var (
	importFileName = regexp.MustCompile(`<fileName>([^<]+\.vmdk)</fileName>`)
	leaseReturn    = regexp.MustCompile(`<returnval type="HttpNfcLease">([^<]+)</returnval>`)
	leaseThis      = regexp.MustCompile(`<(HttpNfcLeaseComplete|HttpNfcLeaseAbort)[^>]*>\s*<_this type="HttpNfcLease">([^<]+)</_this>`)
)

// nfcHandler wraps the server's handler (see the top of this file).
func nfcHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet && r.URL.Path == nfcStatsURL:
			nfc.Lock()
			data, _ := json.MarshalIndent(map[string]interface{}{"uploads": nfc.uploads, "folder_reads": nfc.reads}, "", "  ")
			nfc.Unlock()
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(data)
		case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/folder/"):
			// Named before the simulator's handler strips the prefix from r.URL.Path.
			file := fmt.Sprintf("[%s] %s", r.URL.Query().Get("dsName"), strings.TrimPrefix(r.URL.Path, "/folder/"))
			cw := &countingWriter{ResponseWriter: w}
			next.ServeHTTP(cw, r)
			nfc.Lock()
			nfc.reads[file] += cw.n
			nfc.Unlock()
		case (r.Method == http.MethodPut || r.Method == http.MethodPost) && strings.HasPrefix(r.URL.Path, "/nfc/"):
			parts := strings.Split(r.URL.Path, "/")
			lease, name := parts[len(parts)-2], parts[len(parts)-1]
			nfc.Lock()
			file := nfc.leases[lease][name]
			nfc.Unlock()
			if file == "" {
				next.ServeHTTP(w, r) // not a disk of an import we saw: the simulator's own
				return
			}
			serveDiskUpload(w, r, file)
		case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/sdk"):
			body, err := ioutil.ReadAll(r.Body)
			_ = r.Body.Close()
			if err != nil {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			r.Body = ioutil.NopCloser(bytes.NewReader(body))
			if m := leaseThis.FindSubmatch(body); m != nil {
				nfc.Lock()
				delete(nfc.leases, string(m[2]))
				nfc.Unlock()
			}
			if !bytes.Contains(body, []byte("<ImportVApp")) {
				next.ServeHTTP(w, r)
				return
			}
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			if m := leaseReturn.FindSubmatch(rec.Body.Bytes()); m != nil {
				files := map[string]string{}
				for _, f := range importFileName.FindAllSubmatch(body, -1) {
					p := html.UnescapeString(string(f[1]))
					var dp object.DatastorePath
					if dp.FromString(p) {
						files[path.Base(dp.Path)] = p
					}
				}
				nfc.Lock()
				nfc.leases[string(m[1])] = files
				nfc.Unlock()
			}
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			_, _ = w.Write(rec.Body.Bytes())
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// localPath turns "[ds] dir/x.vmdk" into its path on this host.
func localPath(file string) string {
	var p object.DatastorePath
	if !p.FromString(file) {
		return ""
	}
	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		if ds.Name == p.Datastore {
			return path.Join(ds.Info.GetDatastoreInfo().Url, p.Path)
		}
	}
	return ""
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func serveDiskUpload(w http.ResponseWriter, r *http.Request, file string) {
	body := &countingReader{r: r.Body}
	up := nfcUpload{File: file}
	status := http.StatusOK
	desc := localPath(file)
	if desc == "" {
		status, up.Error = http.StatusNotFound, "no datastore for "+file
	} else if err := writeStreamOptimized(bufio.NewReaderSize(body, 1<<20), desc, &up); err != nil {
		status, up.Error = http.StatusUnsupportedMediaType, err.Error()
	}
	_, _ = io.Copy(ioutil.Discard, body) // count what was sent even after a refusal
	_ = r.Body.Close()
	up.BytesReceived = body.n
	nfc.Lock()
	nfc.uploads = append(nfc.uploads, up)
	nfc.Unlock()
	log.Printf("nfc import %s: received %d bytes, wrote %d guest bytes in %d grains (status %d %s)",
		file, up.BytesReceived, up.BytesWritten, up.Grains, status, up.Error)
	w.WriteHeader(status)
	if up.Error != "" {
		_, _ = w.Write([]byte(up.Error + "\n"))
	}
}

// writeStreamOptimized reads a streamOptimized VMDK from in and writes it as the thin
// monolithicFlat pair desc (x.vmdk) + x-flat.vmdk.
func writeStreamOptimized(in io.Reader, desc string, up *nfcUpload) error {
	var pos int64 // bytes of the stream consumed so far
	read := func(buf []byte) error {
		n, err := io.ReadFull(in, buf)
		pos += int64(n)
		return err
	}
	skip := func(n int64) error {
		got, err := io.CopyN(ioutil.Discard, in, n)
		pos += got
		return err
	}
	header := make([]byte, sectorSize)
	if err := read(header); err != nil {
		return fmt.Errorf("no VMDK header: %v", err)
	}
	le := binary.LittleEndian
	flags := le.Uint32(header[8:])
	capacity := int64(le.Uint64(header[12:])) // sectors
	descOffset := int64(le.Uint64(header[28:]))
	descSize := int64(le.Uint64(header[36:]))
	overhead := int64(le.Uint64(header[64:]))
	if le.Uint32(header[0:]) != vmdkMagic || flags&flagCompressed == 0 || flags&flagMarkers == 0 || le.Uint16(header[77:]) != 1 {
		return fmt.Errorf("not a streamOptimized VMDK (need a sparse header with compressed grains and markers)")
	}
	if descOffset < 1 || descSize < 1 || descSize*sectorSize > nfcDescriptorMax || overhead < descOffset+descSize {
		return fmt.Errorf("streamOptimized header: bad descriptor or overhead position")
	}
	if err := skip(descOffset*sectorSize - pos); err != nil {
		return err
	}
	text := make([]byte, descSize*sectorSize)
	if err := read(text); err != nil {
		return fmt.Errorf("reading the embedded descriptor: %v", err)
	}
	if err := skip(overhead*sectorSize - pos); err != nil {
		return err
	}
	flatFile := strings.TrimSuffix(desc, ".vmdk") + "-flat.vmdk"
	descriptor, err := flatDescriptor(string(bytes.TrimRight(text, "\x00")), capacity, path.Base(flatFile))
	if err != nil {
		return err
	}
	flat, err := os.OpenFile(flatFile, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer flat.Close()
	up.Capacity = capacity * sectorSize

	head := make([]byte, 12)
	for {
		// Each grain or marker starts on a sector boundary: lba (8 bytes), size (4).
		if err := skip((sectorSize - pos%sectorSize) % sectorSize); err != nil {
			return err
		}
		if err := read(head); err == io.EOF {
			break // qemu-img ends a stream without grains after its tables, unmarked
		} else if err != nil {
			return fmt.Errorf("stream ends inside a grain header: %v", err)
		}
		value, size := int64(le.Uint64(head)), int64(le.Uint32(head[8:]))
		if size == 0 { // a marker: type (4 bytes), the rest of the sector, then metadata
			kind := make([]byte, 4)
			if err := read(kind); err != nil {
				return err
			}
			if le.Uint32(kind) == markerEOS {
				break
			}
			if err := skip(sectorSize - 16 + value*sectorSize); err != nil {
				return err
			}
			continue
		}
		if size > maxGrainSectors*sectorSize || value < 0 || value >= capacity {
			return fmt.Errorf("grain at sector %d (%d bytes) lies outside the disk", value, size)
		}
		compressed := make([]byte, size)
		if err := read(compressed); err != nil {
			return err
		}
		z, err := zlib.NewReader(bytes.NewReader(compressed))
		if err != nil {
			return fmt.Errorf("grain at sector %d: %v", value, err)
		}
		data, err := ioutil.ReadAll(io.LimitReader(z, maxGrainSectors*sectorSize))
		if err != nil {
			return fmt.Errorf("grain at sector %d: %v", value, err)
		}
		if end := (capacity - value) * sectorSize; int64(len(data)) > end {
			data = data[:end]
		}
		up.Grains++
		if bytes.Count(data, []byte{0}) == len(data) {
			continue // a thin disk keeps zeros unallocated
		}
		if _, err := flat.WriteAt(data, value*sectorSize); err != nil {
			return err
		}
		up.BytesWritten += int64(len(data))
	}
	if err := flat.Truncate(capacity * sectorSize); err != nil {
		return err
	}
	return ioutil.WriteFile(desc, []byte(descriptor), 0o600)
}

var (
	createTypeLine = regexp.MustCompile(`(?m)^createType\s*=.*$`)
	extentLine     = regexp.MustCompile(`(?m)^(RW|RDONLY)\s+\d+\s+SPARSE\s+"[^"]*".*$`)
)

// flatDescriptor turns the stream's descriptor into the one of a monolithicFlat disk,
// keeping its identity and disk database (adapter type, geometry).
func flatDescriptor(text string, sectors int64, flatName string) (string, error) {
	if !createTypeLine.MatchString(text) || len(extentLine.FindAllString(text, -1)) != 1 {
		return "", fmt.Errorf("the embedded descriptor does not describe one sparse extent")
	}
	text = createTypeLine.ReplaceAllString(text, `createType="monolithicFlat"`)
	return extentLine.ReplaceAllString(text, fmt.Sprintf(`RW %d FLAT "%s" 0`, sectors, flatName)), nil
}
