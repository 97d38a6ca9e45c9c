"""Fuzz the descriptor readers with mutated VMX, OVF, OVA and libvirt XML documents.

Each run starts from documents the writers produce (documents.py) and mutates bytes,
lines, XML attributes and text, VMX values, or OVA members. Every reader must end with
a result or an InputError naming the file (a DiskError for a disk image the descriptor
names that qemu-img cannot read); never a traceback of another type, never slowly.
Derandomized, with a bounded number of examples (conftest.py).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tarfile
import time
import xml.etree.ElementTree as ET

import pytest
from documents import write_documents
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import DiskError, InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import ovf as _ovf
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import read as _read

# Values a hand edit or a foreign tool leaves in a field.
NASTY = [
    "",
    " ",
    "0",
    "-1",
    "-4096",
    "1.5",
    "1e9",
    "0x10",
    "NaN",
    "abc",
    "99999999999999999999999999",
    "9" * 5000,
    "²",
    "٣",
    "byte * 2^99999999",
    "byte * 10^400",
    "byte * 2^",
    "hertz * 10^6",
    "MegaBytes",
    "TRUE",
    "FALSE",
    "efi",
    "bios",
    "scsi",
    "usb",
    "virtio",
    "ide",
    "sata",
    "fdc",
    "cdrom",
    "floppy",
    "lun",
    "volume",
    "network",
    "block",
    "bridge",
    "direct",
    "hostdev",
    "17",
    "15",
    "14",
    "10",
    "6",
    "5",
    "4",
    "3",
    "20",
    "ovf:/disk/nothere",
    "ovf:/disk/vmdisk1",
    "scsi0:0",
    "../../../../etc/passwd",
    "no/such/dir/x.vmdk",
    "|22",
    "|zz",
    "|",
    "\\",
    "&amp;",
    "\u2028",
    "\x85",
    "{{ lookup('pipe', 'id') }}",
    "a" * 300,
]
nasty = st.sampled_from(NASTY)
# the failing example of an OVA case is printed whole; hypothesis warns about its size
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")
SLOW = 5.0  # seconds; a reader must never spend longer on a small document


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("docs")
    paths = write_documents(str(directory))
    return {fmt: open(path, "rb").read() for fmt, path in paths.items()}


def outcome(path, **kwargs):
    """Read ``path``; the spec, or the InputError/DiskError, checked for their shape."""
    start = time.monotonic()
    try:
        spec, missing = _read.read_descriptor(path, **kwargs)
    except InputError as exc:
        assert exc.problem and exc.fix, exc.message
        return exc
    except DiskError as exc:
        # a disk image the descriptor names exists but qemu-img cannot read it
        assert exc.problem and exc.fix, exc.message
        return exc
    finally:
        assert time.monotonic() - start < SLOW, "reading %s took too long" % path
    _spec.validate(spec)  # a result is a spec the translations accept
    assert isinstance(missing, list)
    return spec


def write(tmp_path_factory, name, data):
    path = tmp_path_factory.mktemp("case") / name
    path.write_bytes(data)
    return str(path)


NAMES = {"libvirt": "vm.xml", "vmx": "vm.vmx", "ovf": "vm.ovf", "ova": "vm.ova"}
TEXT_FORMATS = ("libvirt", "vmx", "ovf")
FAMILY = {"libvirt": "libvirt domain XML", "vmx": "VMX", "ovf": "OVF", "ova": "OVA"}


def fuzzed(reliability, fmt):
    """The row every fuzz test of one reader family proves (one row per family)."""
    reliability(
        "readers",
        "fuzz: mutated %s (hypothesis, derandomized: bytes, lines, values%s)"
        % (
            FAMILY[fmt],
            {"vmx": "", "ova": ", descriptor, manifest and member list"}.get(fmt, ", XML attributes, elements"),
        ),
        "never a traceback: a valid spec, or the documented InputError (DiskError for a named image qemu-img "
        "cannot read) with a problem and a fix; each read < 5 s",
        "nothing written"
        + (
            " outside the extraction dir, no .part file left (checked extracting)"
            if fmt == "ova"
            else " (a reader writes nothing)"
        ),
    )


@st.composite
def byte_edits(draw, data):
    """Flip, insert, delete or truncate at a few offsets."""
    data = bytearray(data)
    for _step in range(draw(st.integers(1, 8))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "dup"]))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4) | st.sampled_from([b"<", b">", b"&", b'"', b"\n"]))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[pos:]
        else:
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 64))]
    return bytes(data)


@st.composite
def line_edits(draw, data):
    lines = data.decode("utf-8").split("\n")
    for _step in range(draw(st.integers(1, 5))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "dup", "swap", "value"]))
        if op == "delete":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        else:  # replace a quoted value (VMX, XML attribute) or the text between tags
            value = draw(nasty).replace('"', "")
            lines[i] = re.sub(r'"[^"]*"', '"%s"' % value, lines[i], count=1)
            lines[i] = re.sub(r">[^<]*<", ">%s<" % value.replace("<", "").replace("&", ""), lines[i], count=1)
        if not lines:
            lines = [""]
    return "\n".join(lines).encode("utf-8")


@st.composite
def xml_edits(draw, data):
    """Set an attribute or the text of an element to a nasty value, or drop an element."""
    ET.register_namespace("", _ovf.OVF1_NS)
    for prefix, ns in (
        ("ovf", _ovf.OVF1_NS),
        ("rasd", _ovf.RASD_NS),
        ("vssd", _ovf.VSSD_NS),
        ("vmw", _ovf.VMW_NS),
        ("cim", _ovf.CIM_NS),
        ("xsi", _ovf.XSI_NS),
    ):
        ET.register_namespace(prefix, ns)
    root = ET.fromstring(data)
    for _step in range(draw(st.integers(1, 6))):
        elements = list(root.iter())
        el = draw(st.sampled_from(elements))
        op = draw(st.sampled_from(["attr", "text", "drop", "new-attr"]))
        if op == "attr" and el.attrib:
            el.set(draw(st.sampled_from(sorted(el.attrib))), draw(nasty))
        elif op == "new-attr":
            el.set(
                draw(st.sampled_from(["type", "bus", "unit", "dev", "model", "index", "controller", "order"])),
                draw(nasty),
            )
        elif op == "drop" and el is not root:
            parent = next(p for p in root.iter() if el in list(p))
            parent.remove(el)
        else:
            el.text = draw(nasty)
    return ET.tostring(root, encoding="utf-8")


@pytest.mark.parametrize("fmt", TEXT_FORMATS + ("ova",))
@given(st.data())
@settings(max_examples=200)
def test_byte_mutations(tmp_path_factory, docs, fmt, reliability, data):
    fuzzed(reliability, fmt)
    blob = data.draw(byte_edits(docs[fmt]))
    outcome(write(tmp_path_factory, NAMES[fmt], blob))


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
@given(st.data())
@settings(max_examples=200)
def test_line_mutations(tmp_path_factory, docs, fmt, reliability, data):
    fuzzed(reliability, fmt)
    outcome(write(tmp_path_factory, NAMES[fmt], data.draw(line_edits(docs[fmt]))))


@pytest.mark.parametrize("fmt", ("libvirt", "ovf"))
@given(st.data())
@settings(max_examples=250)
def test_xml_mutations(tmp_path_factory, docs, fmt, reliability, data):
    fuzzed(reliability, fmt)
    outcome(write(tmp_path_factory, NAMES[fmt], data.draw(xml_edits(docs[fmt]))))


def members(blob):
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def pack(items, fmt=tarfile.USTAR_FORMAT):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@given(st.data())
@settings(max_examples=150)
def test_ova_member_mutations(tmp_path_factory, docs, reliability, data):
    """An OVA whose descriptor, manifest or member list was changed; read in place and extracted."""
    fuzzed(reliability, "ova")
    items = members(docs["ova"])
    op = data.draw(st.sampled_from(["ovf", "manifest", "drop", "dup", "rename", "reorder"]))
    i = data.draw(st.integers(0, len(items) - 1))
    if op == "ovf":
        items[0] = (items[0][0], data.draw(xml_edits(items[0][1]) | byte_edits(items[0][1])))
        if data.draw(st.booleans()):  # a manifest made for the edited descriptor: the OVF parser runs
            digest = hashlib.sha256(items[0][1]).hexdigest()
            line = b"SHA256(vm.ovf)= " + digest.encode()
            manifest = re.sub(rb"(?m)^SHA256\(vm\.ovf\)= [0-9a-f]+$", line, items[1][1])
            items[1] = (items[1][0], manifest)
    elif op == "manifest":
        items[1] = (items[1][0], data.draw(line_edits(items[1][1]) | byte_edits(items[1][1])))
    elif op == "drop":
        del items[i]
    elif op == "dup":
        items.append(items[i])
    elif op == "rename":
        name = data.draw(st.sampled_from(["x.ovf", "vm.mf", "a/b.vmdk", "dir/", "./vm.ovf", "vm.OVF", "ü.vmdk"]))
        items[i] = (name, items[i][1])
    else:
        items = data.draw(st.permutations(items))
    path = write(tmp_path_factory, "vm.ova", pack(items))
    outcome(path)
    outcome(path, verify_manifest=False)
    parent = os.path.dirname(path)
    dest = os.path.join(parent, "x")
    try:
        _ovf.read_ova(path, dest)
    except InputError as exc:
        assert path in exc.problem, exc.message
    # nothing outside the destination, and no .part files left behind
    assert sorted(os.listdir(parent)) in (["vm.ova"], ["vm.ova", "x"])
    for _root, _dirs, files in os.walk(dest):
        assert not [f for f in files if f.endswith(".part")]
    shutil.rmtree(dest, ignore_errors=True)
