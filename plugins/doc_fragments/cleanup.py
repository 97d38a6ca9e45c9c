# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options of the cleanup step, the same on every platform (module_utils/_runner.cleanup_options)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  vm:
    description: The source VM - its name, UUID or the platform's own id.
    type: str
    required: true
    aliases: [name]
  bundle:
    description:
      - The export bundle of the VM (the directory export wrote). What it records as made on the source
        (C(created) in its manifest) is removed and then no longer recorded there.
      - Without it, or when it does not exist, only what is named as ours is found.
    type: path
"""
