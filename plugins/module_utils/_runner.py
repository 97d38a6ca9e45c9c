# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The module side of every step, so that a module's main() is a few lines.

- Option sets shared by the same step on every platform, each paired with its doc
  fragment (plugins/doc_fragments/<name>.py): the same idea has the same name and
  default whatever the platform.
- run_step: open the platform, run the step, exit with its result, or fail with the
  one failure shape of _errors.fail_from_exception.
"""

from __future__ import annotations

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import fail_from_exception
from ansible_collections.vmigrate.v2v.plugins.module_utils._lock import bundle_lock
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import guest as _guest
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import power as _power
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.bundle import Bundle
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.base import BOOT_TIMEOUT


def export_options(**extra):
    """Doc fragment vmigrate.v2v.export."""
    spec = dict(
        vm=dict(type="str", required=True, aliases=["name"]),
        bundle=dict(type="path", required=True),
        mode=dict(type="str", default="auto", choices=["auto", "cold", "warm", "incremental"]),
        full=dict(type="bool", default=False),
        quiesce=dict(type="bool", default=True, aliases=["freeze"]),
        block_size=dict(type="int"),
    )
    spec.update(extra)
    return spec


def export_step(module, platform_class):
    """The whole main() of an export module after its argument_spec."""
    p = module.params

    def step(platform):
        with bundle_lock(p["bundle"], "export of %s" % p["vm"], module.check_mode):
            result = platform.export(platform.find_vm(p["vm"]), p["bundle"], p["mode"], module.check_mode, p)
        if not module._diff:
            result.pop("diff", None)
        return result

    run_step(module, platform_class, step)


def import_options(**extra):
    """Doc fragment vmigrate.v2v.import_."""
    spec = dict(
        bundle=dict(type="path", required=True),
        name=dict(type="str"),
        replace=dict(type="bool", default=False),
        network_map=dict(type="dict"),
        storage_map=dict(type="dict"),
        start=dict(type="bool", default=False),
        planned=dict(type="dict"),
    )
    spec.update(extra)
    return spec


def import_step(module, platform_class):
    """The whole main() of an import module: load the bundle, import, exit. With
    ``planned`` (check mode only) the bundle is the one a checked convert would write."""
    if module.params.get("planned") and not module.check_mode:
        module.fail_json(
            msg="planned (what a checked convert would write) is only read in check mode. "
            "Fix: leave planned out; a real import reads the bundle"
        )

    def step(platform):
        if module.params.get("planned"):
            result = platform.import_planned(module.params["planned"], module.params)
        else:
            target = module.params.get("name") or ""
            what = "import of %s" % (target or module.params["bundle"])
            # One import per target name; imports of the bundle into other names go on.
            with bundle_lock(module.params["bundle"], what, module.check_mode, key="import-" + target):
                result = platform.import_vm(Bundle.load(module.params["bundle"]), module.params, module.check_mode)
        if not module._diff:
            result.pop("diff", None)
        return result

    run_step(module, platform_class, step)


def guest_convert_step(module, platform_class):
    """The whole main() of a guest conversion module. It changes the target's disks, so
    it holds the import's lock on the bundle and target name."""

    def step(platform):
        bundle = Bundle.load(module.params["bundle"])
        ref = module.params["vm"] or bundle.manifest["spec"]["name"]
        what = "guest conversion of %s" % ref
        with bundle_lock(module.params["bundle"], what, module.check_mode, key="import-" + (module.params["vm"] or "")):
            return _guest.run_conversion(platform, bundle, ref, module.params, module.check_mode)

    run_step(module, platform_class, step)


def verify_options(**extra):
    """Doc fragment vmigrate.v2v.verify."""
    spec = dict(
        bundle=dict(type="path", required=True),
        vm=dict(type="str", aliases=["name"]),
        digests=dict(type="bool", default=True),
        spec=dict(type="bool", default=True),
        boot_check=dict(type="bool", default=False, aliases=["power_on"]),
        boot_timeout=dict(type="int", default=BOOT_TIMEOUT),
    )
    spec.update(extra)
    return spec


def verify_step(module, platform_class):
    """The whole main() of a verify module after its argument_spec. A boot check that
    starts the target itself (not a twin) does not run in check mode."""
    options = dict(module.params)
    if module.check_mode and platform_class.boot_check_starts_target:
        options["boot_check"] = False

    def step(platform):
        bundle = Bundle.load(options["bundle"])
        return platform.verify(bundle, options["vm"] or bundle.manifest["spec"]["name"], options, module.check_mode)

    run_step(module, platform_class, step)


def power_options(**extra):
    """Doc fragment vmigrate.v2v.power."""
    spec = dict(
        vm=dict(type="str", required=True, aliases=["name"]),
        state=dict(type="str", default="running", choices=list(_power.STATES)),
        shutdown_timeout=dict(type="int", default=_power.SHUTDOWN_TIMEOUT),
        on_timeout=dict(type="str", default="fail", choices=list(_power.ON_TIMEOUT)),
        mark_rolled_back=dict(type="bool", default=False),
    )
    spec.update(extra)
    return spec


def power_step(module, platform_class):
    """The whole main() of a power module after its argument_spec."""
    p = module.params
    if p["shutdown_timeout"] < 0:
        module.fail_json(msg="shutdown_timeout is %d. Fix: give 0 or more seconds" % p["shutdown_timeout"])

    def step(platform):
        result = platform.power(platform.find_vm(p["vm"]), p, module.check_mode)
        if not module._diff:
            result.pop("diff", None)
        return result

    run_step(module, platform_class, step)


def cleanup_options(**extra):
    """Doc fragment vmigrate.v2v.cleanup."""
    spec = dict(vm=dict(type="str", required=True, aliases=["name"]), bundle=dict(type="path"))
    spec.update(extra)
    return spec


def cleanup_step(module, platform_class):
    """The whole main() of a cleanup module after its argument_spec."""
    p = module.params

    def step(platform):
        result = platform.cleanup(platform.find_vm(p["vm"]), p["bundle"], module.check_mode)
        if not module._diff:
            result.pop("diff", None)
        return result

    run_step(module, platform_class, step)


def warn_insecure(module, text):
    """Put the TLS warning (if any) into the result, also when the step fails (Ansible
    keeps one of identical warnings)."""
    if text:
        module.warn(text)


def run_step(module, platform_class, step):
    """``step(platform)`` -> result dict, with ``platform_class(module.params)`` open."""
    missing = platform_class.missing_library()
    if missing:
        module.fail_json(msg=missing_required_lib(missing[0]), exception=missing[1])
    warn_insecure(module, platform_class.tls_warning(module.params))
    try:
        with platform_class(module.params) as platform:
            result = step(platform)
    except Exception as exc:  # noqa: BLE001 - one failure shape for every error
        fail_from_exception(module, exc)
    module.exit_json(**result)
