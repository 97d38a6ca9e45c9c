# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection options as AnsibleModule takes them, from the tables the platforms keep."""

from __future__ import annotations


def with_env_fallback(connection_args, extra):
    """``connection_args`` ({name: options}, a fallback written as ("env_fallback", [names]))
    with Ansible's env_fallback put in, plus the module's own ``extra`` options. The tables
    name the fallback as text so that they import nothing from Ansible."""
    from ansible.module_utils.basic import env_fallback

    spec = {}
    for name, opts in connection_args.items():
        opts = dict(opts)
        if "fallback" in opts:
            opts["fallback"] = (env_fallback, opts["fallback"][1])
        spec[name] = opts
    spec.update(extra)
    return spec


def guest_options():
    """guest_conversion and virtio_win, as convert and guest_info take them."""
    from ansible.module_utils.basic import env_fallback

    return dict(
        guest_conversion=dict(
            type="str",
            default="auto",
            choices=["auto", "inspect", "skip"],
            fallback=(env_fallback, ["VMIGRATE_GUEST_CONVERSION"]),
        ),
        virtio_win=dict(type="path", fallback=(env_fallback, ["VIRTIO_WIN"])),
    )
