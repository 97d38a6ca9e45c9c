# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One failure shape for every module: a problem, and the fix a person can apply."""

from __future__ import annotations


class V2VError(Exception):
    """An error a user can act on.

    ``problem`` says what is wrong (naming the file, VM, disk or option),
    ``fix`` says what to do about it. ``details`` go into the module result.
    """

    kind = "error"

    def __init__(self, problem, fix=None, **details):
        self.problem = problem
        self.fix = fix
        self.details = details
        super().__init__(self.message)

    @property
    def message(self):
        if self.fix:
            return "%s. Fix: %s" % (self.problem.rstrip("."), self.fix)
        return self.problem


class InputError(V2VError):
    """Bad options, descriptors or manifests given by the user."""

    kind = "input"


class VmNotFoundError(InputError):
    """A VM that is not there. Its failure result says ``missing: true``, so a role can
    tell "no such VM" (often the answer it hopes for) from every other error without
    matching the message's words."""

    def __init__(self, problem, fix=None, **details):
        details.setdefault("missing", True)
        super().__init__(problem, fix, **details)


class DiskError(V2VError):
    """A disk image cannot be read, written or converted."""

    kind = "disk"


class PlatformError(V2VError):
    """The hypervisor or its API refused or failed."""

    kind = "platform"


class VerifyError(V2VError):
    """The target differs from what the bundle says it must be."""

    kind = "verify"


class MissingLibraryError(V2VError):
    kind = "missing_library"


def fail_from_exception(module, exc, **result):
    """Fail an AnsibleModule with one shape for V2VError and anything unexpected."""
    if isinstance(exc, V2VError):
        details = dict(result)
        details.update(exc.details)
        module.fail_json(msg=exc.message, error_kind=exc.kind, **details)
    import traceback

    module.fail_json(
        msg="Unexpected %s: %s" % (type(exc).__name__, exc),
        error_kind="unexpected",
        exception=traceback.format_exc(),
        **result,
    )
