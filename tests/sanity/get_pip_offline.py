"""Stand-in for get-pip.py, which ansible-test downloads from a host CI cannot reach.

ansible-test runs its cached get-pip script to put pip into each sanity venv. This one
bootstraps pip from the interpreter's own ensurepip wheel, then installs what ansible-test
asked for from the package index. `make sanity` copies it into ansible-test's cache.
"""

import ensurepip
import subprocess
import sys

ensurepip.bootstrap(upgrade=True)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--upgrade", *args]))
