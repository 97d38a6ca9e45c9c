#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: step
short_description: Run one migration step on the platform an endpoint names
version_added: 0.2.0
description:
  - Runs C(vmigrate.v2v.<platform>_<step>) (for example M(vmigrate.v2v.kvm_export) or
    M(vmigrate.v2v.vsphere_import)) with the endpoint's connection options merged with the
    step's own O(args), so roles and playbooks call every platform the same way. C(convert)
    is platform-neutral and runs M(vmigrate.v2v.convert).
  - An action plugin - the module runs where the task runs; use C(delegate_to) for the
    conversion host. The chosen module's result is returned as it is, plus RV(step_module).
  - Check mode, diff mode and C(no_log) of secrets are the chosen module's.
  - With O(progress_file), the chosen module runs in the background on the host where the
    task runs (Ansible's async wrapper, limit O(timeout)) and writes its progress events
    into that file there; the task waits for it, and every O(progress_interval) seconds
    shows the last event (percent, bytes, rate, ETA), read on that host by one shell
    command per look (which waits there for the job to end, so a short step is not held
    up; M(vmigrate.v2v.progress_info) is the same read as a module). So progress shows also
    when the step is delegated to a remote conversion host, and the task still occupies
    its C(throttle) slot until the step is done. The result is the module's, as without
    it. In check mode (nothing is copied) the module runs in the foreground.
author:
  - vmigrate.v2v contributors (@vmigrate)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  step:
    description: The step to run.
    type: str
    required: true
    choices: [vm_info, export, convert, import, verify, guest_convert, power, cleanup]
  platform:
    description: The endpoint's platform; required for every step but V(convert).
    type: str
    choices: [kvm, vsphere, hyperv]
  connection:
    description:
      - The endpoint's connection options as the platform's modules take them (kvm - uri,
        username, password; vsphere - hostname, port, username, password, validate_certs,
        ca_path, datacenter, ...). Keys whose value is null are left out, so the module's
        defaults and environment variables apply.
    type: dict
    default: {}
  args:
    description: The step module's own options (vm, bundle, name, ...).
    type: dict
    default: {}
  progress_file:
    description:
      - A file on the host where the task runs for the module's progress events (it is
        removed before the step starts and when it ended). Without it the module runs in
        the foreground and writes its events where C(VMIGRATE_PROGRESS_FILE) says.
    type: path
  progress_interval:
    description: Seconds between progress lines while a step with O(progress_file) runs (at least 0.5).
    type: float
    default: 5.0
  timeout:
    description: Seconds a step with O(progress_file) may run before the async wrapper stops it.
    type: int
    default: 86400
attributes:
  action:
    support: full
    description: Runs as an action plugin on the controller, which executes the chosen module.
  async:
    support: full
    description: C(async) runs the chosen module in the background as any module; O(progress_file) does that and waits.
  check_mode:
    support: full
    details: The chosen module's check mode.
  diff_mode:
    support: full
    details: The chosen module's diff.
  platform:
    platforms: posix
"""

EXAMPLES = r"""
- name: Export a VM from whatever platform its plan endpoint is
  vmigrate.v2v.step:
    step: export
    platform: "{{ v2v_source.platform }}"
    connection: "{{ v2v_source.connection }}"
    args:
      vm: "{{ v2v_vm }}"
      bundle: "{{ v2v_work_dir }}/export"
  delegate_to: "{{ v2v_conversion_host }}"

- name: The same, showing its progress while it copies on the conversion host
  vmigrate.v2v.step:
    step: export
    platform: "{{ v2v_source.platform }}"
    connection: "{{ v2v_source.connection }}"
    args:
      vm: "{{ v2v_vm }}"
      bundle: "{{ v2v_work_dir }}/export"
    progress_file: "{{ v2v_work_dir }}/progress.jsonl"
    progress_interval: 10
  delegate_to: "{{ v2v_conversion_host }}"
"""

RETURN = r"""
step_module:
  description: The module that ran.
  returned: always
  type: str
  sample: vmigrate.v2v.kvm_export
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=dict(
            step=dict(
                type="str",
                required=True,
                choices=["vm_info", "export", "convert", "import", "verify", "guest_convert", "power", "cleanup"],
            ),
            platform=dict(type="str", choices=["kvm", "vsphere", "hyperv"]),
            connection=dict(type="dict", default={}, no_log=True),
            args=dict(type="dict", default={}),
            progress_file=dict(type="path"),
            progress_interval=dict(type="float", default=5.0),
            timeout=dict(type="int", default=86400),
        ),
        supports_check_mode=True,
    )
    module.fail_json(msg="vmigrate.v2v.step runs as an action plugin; call it from a playbook task")


if __name__ == "__main__":
    main()
