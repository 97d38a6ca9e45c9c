"""Sample descriptors and helpers shared by the descriptor tests (test_*.py beside this file)."""

import json
import subprocess

MiB = 1 << 20

# As written by ESXi 7.0 U3 for a hardware version 19 VM (keys in ESXi's order).
ESXI7_VMX = """\
.encoding = "UTF-8"
config.version = "8"
virtualHW.version = "19"
vmci0.present = "TRUE"
floppy0.present = "FALSE"
svga.vramSize = "8388608"
memSize = "2048"
tools.upgrade.policy = "manual"
sched.cpu.units = "mhz"
vm.createDate = "1667312345678901"
scsi0.virtualDev = "pvscsi"
scsi0.present = "TRUE"
sata0.present = "TRUE"
sata0:0.deviceType = "cdrom-image"
sata0:0.fileName = "/vmfs/volumes/6361a7c3-2f5b1c7e-2b4e-001b21a8c0de/iso/debian-11.5.0-amd64-netinst.iso"
sata0:0.present = "TRUE"
scsi0:0.deviceType = "scsi-hardDisk"
scsi0:0.fileName = "web01.vmdk"
sched.scsi0:0.shares = "normal"
sched.scsi0:0.throughputCap = "off"
scsi0:0.present = "TRUE"
scsi0:1.deviceType = "scsi-hardDisk"
scsi0:1.fileName = "web01_1.vmdk"
scsi0:1.present = "TRUE"
scsi0:2.deviceType = "scsi-hardDisk"
scsi0:2.fileName = "web01_2.vmdk"
scsi0:2.present = "TRUE"
ethernet0.virtualDev = "vmxnet3"
ethernet0.networkName = "VM Network"
ethernet0.addressType = "vpx"
ethernet0.generatedAddress = "00:50:56:9a:3b:7c"
ethernet0.uptCompatibility = "TRUE"
ethernet0.present = "TRUE"
ethernet1.virtualDev = "e1000e"
ethernet1.networkName = "Backup"
ethernet1.addressType = "static"
ethernet1.address = "00:50:56:01:02:03"
ethernet1.present = "TRUE"
displayName = "web01"
guestOS = "debian11-64"
toolScripts.afterPowerOn = "TRUE"
toolScripts.afterResume = "TRUE"
toolScripts.beforeSuspend = "TRUE"
toolScripts.beforePowerOff = "TRUE"
tools.syncTime = "FALSE"
uuid.bios = "42 1c 5f 0e 3c 0b 2b 3a-9d 4f 52 8a 1d 9e 2f 11"
vc.uuid = "50 1c 7e 2a 11 22 33 44-55 66 77 88 99 aa bb cc"
sched.cpu.min = "0"
sched.cpu.shares = "normal"
sched.mem.min = "0"
sched.mem.minSize = "0"
sched.mem.shares = "normal"
firmware = "efi"
uefi.secureBoot.enabled = "TRUE"
numvcpus = "4"
cpuid.coresPerSocket = "2"
annotation = "Web front end|0AOwner: ops |22team A|22"
nvram = "web01.nvram"
pciBridge0.present = "TRUE"
svga.present = "TRUE"
pciBridge4.present = "TRUE"
pciBridge4.virtualDev = "pcieRootPort"
pciBridge4.functions = "8"
ethernet0.pciSlotNumber = "160"
ethernet1.pciSlotNumber = "192"
scsi0.pciSlotNumber = "224"
sata0.pciSlotNumber = "33"
monitor.phys_bits_used = "45"
softPowerOff = "FALSE"
"""


# As kept by libvirt 9 for a virt-install'ed q35 + OVMF guest (inactive XML).
LIBVIRT_XML = """\
<domain type='kvm'>
  <name>db01</name>
  <uuid>7d3f1b2a-9c8e-4f6d-a5b4-0c1d2e3f4a5b</uuid>
  <title>Database</title>
  <description>PostgreSQL 15 primary</description>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://debian.org/debian/12"/>
    </libosinfo:libosinfo>
  </metadata>
  <memory unit='KiB'>4194304</memory>
  <currentMemory unit='KiB'>4194304</currentMemory>
  <vcpu placement='static'>4</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <loader readonly='yes' secure='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</loader>
    <nvram template='/usr/share/OVMF/OVMF_VARS_4M.ms.fd'>/var/lib/libvirt/qemu/nvram/db01_VARS.fd</nvram>
  </os>
  <features><acpi/><apic/><smm state='on'/></features>
  <cpu mode='host-passthrough' check='none' migratable='on'>
    <topology sockets='1' dies='1' cores='2' threads='2'/>
  </cpu>
  <clock offset='utc'/>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='@DIR@/db01.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <boot order='1'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='raw'/>
      <source pool='fast' volume='db01-data'/>
      <target dev='sda' bus='scsi'/>
      <address type='drive' controller='0' bus='0' target='0' unit='0'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='@DIR@/db01-wal.img'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='sdb' bus='sata'/>
      <readonly/>
    </disk>
    <controller type='scsi' index='0' model='virtio-scsi'/>
    <controller type='sata' index='0'/>
    <interface type='network'>
      <mac address='52:54:00:6B:3C:58'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:6b:3c:59'/>
      <source bridge='br0'/>
      <model type='e1000e'/>
    </interface>
    <serial type='pty'><target type='isa-serial' port='0'><model name='isa-serial'/></target></serial>
    <console type='pty'><target type='serial' port='0'/></console>
  </devices>
</domain>
"""


def qemu_img(*args):
    subprocess.run(["qemu-img"] + list(args), check=True, capture_output=True)


def virtual_size(path):
    out = subprocess.run(["qemu-img", "info", "--output=json", path], check=True, capture_output=True).stdout
    return json.loads(out)["virtual-size"]


def carried(spec, disk_keys=("bus", "controller", "capacity", "format", "boot_order"), removable=True, title=True):
    """The fields a descriptor format carries, for round-trip comparison."""
    return {
        "name": spec["name"],
        "uuid": spec["uuid"],
        "firmware": spec["firmware"],
        "cpu": spec["cpu"],
        "memory_mib": spec["memory_mib"],
        "disks": [{k: d[k] for k in disk_keys} for d in spec["disks"]],
        "nics": [{k: n[k] for k in ("mac", "network", "model")} for n in spec["nics"]],
        "removable": spec["removable"] if removable else [{"type": r["type"]} for r in spec["removable"]],
        "guest_os": {k: spec["guest_os"][k] for k in ("family", "id")},
        "description": spec["annotations"]["description"],
        "title": spec["annotations"]["title"] if title else None,
    }
