"""Hostile descriptors: XML entity expansion and external entities, oversized and deeply
nested documents, and OVA members that would write outside the destination."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from documents import write_documents

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import libvirt as _libvirt
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import ovf as _ovf
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import read as _read

QUICK = 2.0  # seconds

LAUGHS = "".join(
    '<!ENTITY lol%d "%s">' % (i, "&lol%d;" % (i - 1) * 10 if i else "lol") for i in range(10)
)  # lol9 expands to 10^9 "lol"s


def billion_laughs(root):
    return '<?xml version="1.0"?>\n<!DOCTYPE %s [%s]>\n<%s><name>&lol9;</name></%s>\n' % (root, LAUGHS, root, root)


def timed(call, *args, **kwargs):
    start = time.monotonic()
    try:
        return call(*args, **kwargs)
    finally:
        assert time.monotonic() - start < QUICK


@pytest.fixture
def docs(tmp_path):
    return write_documents(str(tmp_path))


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("TOP-SECRET-MARKER")
    return path


def xml_cases(secret):
    uri = "file://%s" % secret
    return {
        "billion-laughs": billion_laughs("domain"),
        "quadratic": '<!DOCTYPE domain [<!ENTITY a "%s">]><domain><name>%s</name></domain>'
        % ("x" * 50000, "&a;" * 50000),
        "external-entity": '<!DOCTYPE domain [<!ENTITY x SYSTEM "%s">]><domain><name>&x;</name></domain>' % uri,
        "parameter-entity": '<!DOCTYPE domain [<!ENTITY %% p SYSTEM "%s"> %%p;]><domain><name>a</name></domain>' % uri,
        "external-dtd": '<!DOCTYPE domain SYSTEM "%s"><domain><name>&x;</name></domain>' % uri,
        "external-dtd-unused": '<!DOCTYPE domain SYSTEM "%s"><domain><name>vm</name></domain>' % uri,
        "xinclude": '<domain xmlns:xi="http://www.w3.org/2001/XInclude"><name>vm</name>'
        '<description><xi:include href="%s" parse="text"/></description></domain>' % secret,
    }


CASES = (
    "billion-laughs",
    "quadratic",
    "external-entity",
    "parameter-entity",
    "external-dtd",
    "external-dtd-unused",
    "xinclude",
)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("fmt", ("libvirt", "ovf", "ova"))
def test_xml_entities_are_refused_or_harmless(tmp_path, secret, case, fmt, reliability):
    reliability(
        "readers",
        "hostile XML: %s (libvirt XML, OVF, OVF in an OVA)" % case,
        "InputError naming the file, 'declares XML entities' where one is declared"
        + ("; or the document read as it stands" if case in ("external-dtd-unused", "xinclude") else ""),
        "nothing fetched (a local secret file's text in no message or result); read in < 2 s",
    )
    xml = xml_cases(secret)[case]
    if fmt != "libvirt":
        xml = xml.replace("domain", "Envelope")
    if fmt == "ova":
        path = tmp_path / "vm.ova"
        body = xml.encode()
        pack(path, [("vm.ovf", body)])
    else:
        path = tmp_path / ("vm.xml" if fmt == "libvirt" else "vm.ovf")
        path.write_text(xml)
    try:
        result = timed(_read.read_descriptor, str(path))
    except InputError as exc:
        assert str(path) in exc.problem and exc.fix
        assert "TOP-SECRET" not in exc.message
        if "ENTITY" in xml:
            assert "declares XML entities" in exc.problem
        return
    # accepted: only what the document itself says, nothing fetched
    assert case in ("external-dtd-unused", "xinclude") and "TOP-SECRET" not in repr(result)


@pytest.mark.parametrize("case", CASES)
def test_xml_entities_in_domain_xml_from_libvirt(secret, case, reliability):
    reliability(
        "readers",
        "hostile XML: %s in domain XML libvirt hands over (spec, provenance)" % case,
        "InputError 'libvirt domain XML ...', or harmless",
        "nothing fetched (a local secret file's text in no message or result); read in < 2 s",
    )
    """The KVM platform reads domain XML strings (spec_from_libvirt_xml, read_provenance)."""
    xml = xml_cases(secret)[case]
    for call in (_libvirt.spec_from_libvirt_xml, _libvirt.read_provenance):
        try:
            result = timed(call, xml)
        except InputError as exc:
            assert "libvirt domain XML" in exc.problem and "TOP-SECRET" not in exc.message
            continue
        assert "TOP-SECRET" not in repr(result)


def test_expat_limits_entity_expansion_on_its_own():
    """Behind the ENTITY refusal (common._parse_xml), Python's expat refuses the expansion too."""
    with pytest.raises(ET.ParseError):
        timed(ET.fromstring, billion_laughs("domain"))


def test_utf16_documents_cannot_hide_an_entity_declaration(tmp_path, reliability):
    reliability(
        "readers",
        "hostile XML: billion laughs in a UTF-16 document (libvirt XML, OVF, OVA)",
        "InputError naming the file",
        "nothing expanded; read in < 2 s",
    )
    """The ENTITY check runs on decoded text: a UTF-16 document is refused, not parsed around it."""
    data = billion_laughs("domain").replace('<?xml version="1.0"?>', '<?xml version="1.0" encoding="UTF-16"?>')
    for name in ("vm.xml", "vm.ovf"):
        path = tmp_path / name
        path.write_bytes(data.encode("utf-16"))
        with pytest.raises(InputError, match=str(path)):
            timed(_read.read_descriptor, str(path))
    ova = tmp_path / "vm.ova"
    pack(ova, [("vm.ovf", data.replace("domain", "Envelope").encode("utf-16"))])
    with pytest.raises(InputError, match=str(ova)):
        timed(_read.read_descriptor, str(ova))


def test_oversized_descriptor_is_refused_unread(tmp_path, reliability):
    reliability(
        "readers",
        "a descriptor larger than the limit (MAX_DESCRIPTOR_BYTES)",
        "InputError '<file> is N bytes, too large for a descriptor'",
        "refused unread, in < 2 s",
    )
    path = tmp_path / "vm.xml"
    with open(path, "w") as fh:
        fh.write("<domain><name>vm</name><description>")
        fh.write("x" * (_read.MAX_DESCRIPTOR_BYTES + 1))
        fh.write("</description></domain>")
    with pytest.raises(InputError, match=r"vm\.xml is \d+ bytes, too large for a descriptor"):
        timed(_read.read_descriptor, str(path))


@pytest.mark.parametrize("fmt", ("libvirt", "ovf"))
def test_deeply_nested_xml_ends_quickly(tmp_path, fmt, reliability):
    reliability(
        "readers",
        "100000 nested XML elements (libvirt XML, OVF)",
        "a result, or an InputError naming the file",
        "read in < 2 s",
    )
    root = "domain" if fmt == "libvirt" else "Envelope"
    path = tmp_path / ("vm.xml" if fmt == "libvirt" else "vm.ovf")
    path.write_text("<%s><name>vm</name>%s%s</%s>" % (root, "<a>" * 100000, "</a>" * 100000, root))
    try:
        timed(_read.read_descriptor, str(path))
    except InputError as exc:
        assert str(path) in exc.problem


# ------------------------------------------------------------------ OVA members


def pack(path, items, fmt=tarfile.USTAR_FORMAT, opener=None):
    """An archive of (name, bytes) plain files or TarInfo objects (links, devices)."""
    with tarfile.open(path, "w", format=fmt, fileobj=opener) as tar:
        for item in items:
            if isinstance(item, tarfile.TarInfo):
                tar.addfile(item)
                continue
            name, data = item
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def special(name, kind):
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


def hostile_members(outside):
    return {
        "dotdot": [("../evil.vmdk", b"x")],
        "deep-dotdot": [("disks/../../evil.vmdk", b"x")],
        "backslash-dotdot": [("..\\..\\evil.vmdk", b"x")],
        "absolute": [(str(outside / "abs-evil.vmdk"), b"x")],
        "symlink-out": [link("disk.vmdk", str(outside / "link-evil"))],
        "symlink-relative": [link("disk.vmdk", "../../link-evil")],
        "symlink-then-write": [link("d", str(outside)), ("d/evil.vmdk", b"x")],
        "hardlink-out": [link("disk.vmdk", "../hard-evil", tarfile.LNKTYPE)],
        "char-device": [special("tty.vmdk", tarfile.CHRTYPE)],
        "fifo": [special("pipe.vmdk", tarfile.FIFOTYPE)],
        "directory": [special("disks", tarfile.DIRTYPE)],
        "file-with-slash": [("dir/", b"x")],
        "file-and-dir": [("a", b"x"), ("a/b.vmdk", b"y")],
    }


OVA_CASES = {
    "dotdot": "'../evil.vmdk'",
    "deep-dotdot": "'disks/../../evil.vmdk'",
    "backslash-dotdot": "'..\\..\\evil.vmdk'",
    "absolute": "an absolute path",
    "symlink-out": "a symlink to an absolute path outside",
    "symlink-relative": "a symlink '../../link-evil'",
    "symlink-then-write": "a symlink to a dir outside, then a file through it",
    "hardlink-out": "a hard link '../hard-evil'",
    "char-device": "a character device",
    "fifo": "a FIFO",
    "directory": "a directory",
    "file-with-slash": "a file named 'dir/'",
    "file-and-dir": "a file that is also a directory ('a', 'a/b.vmdk')",
}


@pytest.mark.parametrize("case", sorted(hostile_members(Path("/nowhere"))))
def test_unsafe_ova_members_are_refused_naming_them(tmp_path, docs, case, reliability):
    reliability(
        "readers",
        "OVA member: %s" % OVA_CASES[case],
        "InputError naming the OVA and the member, with a fix (describe, describe unverified, and extract)",
        "nothing written: not outside, not beside the archive, not in the destination",
    )
    outside = tmp_path / "outside"
    outside.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    items = hostile_members(outside)[case]
    ovf = open(docs["ovf"], "rb").read()
    ova = work / "vm.ova"
    pack(ova, [("vm.ovf", ovf)] + items)
    bad = items[-1].name if isinstance(items[-1], tarfile.TarInfo) else items[-1][0]
    first_bad = items[0].name if isinstance(items[0], tarfile.TarInfo) else items[0][0]
    dest = work / "dest"
    for call in (
        lambda: _read.read_descriptor(str(ova)),
        lambda: _read.read_descriptor(str(ova), verify_manifest=False),
        lambda: _ovf.read_ova(str(ova), str(dest)),
    ):
        with pytest.raises(InputError) as err:
            timed(call)
        assert str(ova) in err.value.problem and err.value.fix
        assert repr(first_bad) in err.value.problem or repr(bad) in err.value.problem, err.value.message
    # nothing written: not outside, not beside the archive, not in the destination
    assert os.listdir(outside) == []
    assert sorted(os.listdir(work)) == ["vm.ova"]
    assert not os.path.exists(tmp_path / "evil.vmdk") and not os.path.exists(tmp_path / "hard-evil")


def test_damaged_compressed_ova_is_an_input_error(tmp_path, docs, reliability):
    reliability(
        "readers",
        "a gzip-compressed OVA cut short",
        "InputError 'OVA <file> is damaged' or '... is not a readable tar archive'",
        "no .part file left",
    )
    """tarfile reads gzip too: a truncated stream fails as a damaged OVA, no .part left."""
    buf = io.BytesIO()
    pack(None, [("vm.ovf", open(docs["ovf"], "rb").read()), ("disk.vmdk", os.urandom(200000))], opener=buf)
    data = gzip.compress(buf.getvalue())
    ova = tmp_path / "vm.ova"
    ova.write_bytes(data[: len(data) * 2 // 3])
    dest = tmp_path / "dest"
    with pytest.raises(InputError, match=r"OVA .*vm\.ova is (damaged|not a readable tar archive)"):
        _ovf.read_ova(str(ova), str(dest))
    leftovers = [f for _r, _d, files in os.walk(tmp_path) for f in files if f.endswith(".part")]
    assert leftovers == []
