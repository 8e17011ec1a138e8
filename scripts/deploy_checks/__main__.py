import os
import sys
import tempfile

# Helm's Go runtime reads the environment the process started with: make sure
# HELM_DRIVER & co. are in it, re-executing once if they are not.
if os.environ.get("HELM_DRIVER") != "memory":
    home = tempfile.mkdtemp(prefix="deploy-checks-helm-")
    env = dict(os.environ, HELM_DRIVER="memory",
               HELM_CACHE_HOME=os.path.join(home, "cache"),
               HELM_CONFIG_HOME=os.path.join(home, "config"),
               HELM_DATA_HOME=os.path.join(home, "data"))
    os.execve(sys.executable, [sys.executable, "-m", "deploy_checks", *sys.argv[1:]], env)

from .main import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
