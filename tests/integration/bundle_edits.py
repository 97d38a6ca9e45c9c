"""Hand edits of a bundle's manifest that every import must refuse before it makes
anything, shared by the KVM and vSphere tests: (edit, the manifest field named, id)."""

MIB = 1024 * 1024


def _edit_sha(m):
    m["disks"][0]["digests_sha256"] = "%064x" % (int(m["disks"][0]["digests_sha256"], 16) ^ 1)


def _edit_capacity(m):
    m["disks"][0]["capacity"] += MIB


def _edit_both_capacities(m):
    m["disks"][0]["capacity"] += MIB
    m["spec"]["disks"][0]["capacity"] += MIB


EDITS = [
    (_edit_sha, "disks[0].digests_sha256"),
    (_edit_capacity, "disks[0].capacity"),
    (_edit_both_capacities, "disks[0].capacity"),
]
IDS = ["digests_sha256", "capacity", "capacity-and-spec"]
